"""crosslm's Flower ServerApp and ClientApp, and the simulation engine that runs them on one machine.

Deployment: the SuperLink loads ``server_app`` and every SuperNode ``client_app``
from this module (``crosslm run --engine flower`` writes the app config naming
them). The experiment config travels in the run config; what is private to a
silo (its data file, its state directory, its model) comes from that
SuperNode's node config and never leaves it.

Simulation (``--engine flower-sim``): the same apps on Flower's Simulation
Engine; virtual node ``k`` gets silo ``k`` of ``load_experiment_data``, exactly as
in-process, so both engines give the same results for a seed.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from logging import INFO
from pathlib import Path
from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from crosslm.config import ExperimentConfig
from crosslm.errors import CrossLMError
from crosslm.protocol import decode, encode
from crosslm.rundir import RunDir, write_atomic
from crosslm.runtime import silo_link
from crosslm.runtime.flower import RECORD, FlowerFederation, wire_log
from crosslm.runtime.flower_submit import QUIET_ENV
from crosslm.tasks.data import load_split, read_examples, resolve_data_dir
from crosslm.tasks.partition import ClientData
from crosslm.tasks.spec import Example, TaskSpec, load_task

# The crosslm modules imported inside functions below (client, federation_setup, rounds, privacy
# accounting, model loading) load torch, transformers or Opacus: the ClientApp answers `query.hello`
# and the SuperLink starts without them. None of them imports this module.
if TYPE_CHECKING:
    from crosslm.client import Client
    from crosslm.federation_setup import ExperimentData

Progress = Callable[[str], None]
CONFIG_KEY, MODE_KEY = "crosslm-config", "crosslm-mode"  # run config keys


@dataclass(frozen=True)
class SimulationSetup:
    """What a virtual node needs: the experiment (its silo comes from the partition) and where state goes."""

    config: ExperimentConfig
    state_root: Path


# -- client side ----------------------------------------------------------------------------

_clients: dict[tuple[str, str], Client] = {}  # by (run key, silo): a Ray actor serves many nodes
_silos_of: dict[str, ExperimentData] = {}  # by experiment config JSON, in simulation


def silo_name(node_config: dict, setup: SimulationSetup | None) -> str:
    if setup is not None:
        return f"client-{int(node_config['partition-id'])}"
    name = node_config.get("silo-name")
    if not isinstance(name, str) or not name:
        raise CrossLMError("this SuperNode has no 'silo-name' in its --node-config")
    return name


def split_private(examples: list[Example], config: ExperimentConfig, silo: str
                  ) -> tuple[list[Example], list[Example]]:
    """(train, validation) of a silo's own file: the same split every time for a seed and silo."""
    if len(examples) < 2:
        raise CrossLMError(f"silo {silo}: needs at least 2 examples, has {len(examples)}")
    order = random.Random(f"{config.seed}-{silo}").sample(examples, len(examples))
    size = min(config.clients.validation_per_client, max(1, len(examples) // 5))
    return order[size:], order[:size]


def _node_test(node_config: dict, task: TaskSpec, config: ExperimentConfig) -> list[Example]:
    if node_config.get("test-path"):
        examples = read_examples(str(node_config["test-path"]), task)
    else:
        data_dir = resolve_data_dir(node_config.get("data-dir") or None)
        if data_dir is None:
            raise CrossLMError("this SuperNode needs 'test-path' in its --node-config (or 'data-dir' / "
                               "$CROSSLM_DATA_DIR holding the task's test split) to evaluate its SLM")
        examples = load_split(task, "test", data_dir)
    return examples[:config.evaluation.slm_test_size]


def _node_client(config: ExperimentConfig, node_config: dict, silo: str, run_key: str) -> Client:
    """A silo's Client from its node config: private data, node-local state, its own model."""
    from crosslm.client import Client
    from crosslm.privacy import accounting

    for key in ("data-path", "state-dir"):
        if not node_config.get(key):
            raise CrossLMError(f"silo {silo}: its SuperNode has no '{key}' in --node-config")
    task = load_task(config.task)
    examples = read_examples(str(node_config["data-path"]), task)
    if node_config.get("validation-path"):  # a split the silo fixed itself
        train, validation = examples, read_examples(str(node_config["validation-path"]), task)
    else:
        train, validation = split_private(examples, config, silo)
    state = Path(str(node_config["state-dir"])).expanduser() / run_key
    slm = str(node_config.get("slm") or config.clients.slm[0])
    seed = int(node_config.get("seed", config.seed))
    # the silo's own hardware decides where its SLM runs
    device = str(node_config.get("device") or config.clients.device)
    clients = config.clients.model_copy(update={"device": device})
    privacy = None if config.privacy is None else accounting.plan(config, len(train), silo)
    return Client(silo, slm, task, ClientData(train, validation), test=_node_test(node_config, task, config),
                  state_dir=state, config=clients, seed=seed, privacy=privacy)


def _simulated_client(setup: SimulationSetup, silo: str) -> Client:
    """Virtual node ``k``: silo ``k`` of the same partition as in-process, with the same seed and paths."""
    from crosslm.federation_setup import build_client, load_experiment_data

    config = setup.config
    key = config.model_dump_json()
    if key not in _silos_of:
        _silos_of[key] = load_experiment_data(config)
    return build_client(config, _silos_of[key], int(silo.removeprefix("client-")), setup.state_root)


def _client(run_config: dict, node_config: dict, setup: SimulationSetup | None, run_key: str,
            silo: str) -> Client:
    if (run_key, silo) not in _clients:
        if setup is not None:
            _clients[run_key, silo] = _simulated_client(setup, silo)
        else:
            config = config_from_run_config(run_config)
            _clients[run_key, silo] = _node_client(config, node_config, silo, run_key)
    return _clients[run_key, silo]


def _reply(message: Message, values: dict) -> Message:
    wire_log("up-sent", message.metadata.dst_node_id, message.metadata.message_type, values)
    return Message(RecordDict({RECORD: ConfigRecord(values)}), reply_to=message)


def answer(values: dict, node_config: dict, run_config: dict, setup: SimulationSetup | None = None) -> dict:
    """A message's reply values: decode, let the silo's Client handle it, encode. Errors go back as
    text, never as private data. Run in the ClientApp, or in the silo's worker (``silo_link``)."""
    silo = ""
    try:
        silo = silo_name(node_config, setup)
        client = _client(run_config, node_config, setup, str(values["run-key"]), silo)
        return {"silo": silo, "payload": encode(client.handle(decode(bytes(values["payload"]))))}
    except Exception as err:  # noqa: BLE001 - the server leaves this client out of the round
        return {"silo": silo, "error": f"{type(err).__name__}: {err}"}


def _handle(message: Message, context: Context, setup: SimulationSetup | None) -> Message:
    """Answer here, or hand the message to the silo's worker if its node config names one."""
    request = {"values": dict(message.content.config_records[RECORD]),
               "node_config": dict(context.node_config), "run_config": dict(context.run_config)}
    worker = request["node_config"].get("silo-worker") if setup is None else None
    if worker:
        return _reply(message, silo_link.forward(Path(str(worker)).expanduser(), request))
    return _reply(message, answer(**request, setup=setup))


def make_client_app(setup: SimulationSetup | None = None) -> ClientApp:
    """The ClientApp: ``query.hello`` (which silo am I), ``train`` (C1, E), ``query.score`` (C2)."""
    app = ClientApp()

    @app.query("hello")
    def hello(message: Message, context: Context) -> Message:
        try:
            return _reply(message, {"silo": silo_name(dict(context.node_config), setup)})
        except Exception as err:  # noqa: BLE001
            return _reply(message, {"error": f"{type(err).__name__}: {err}"})

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return _handle(message, context, setup)

    @app.query("score")
    def score(message: Message, context: Context) -> Message:
        return _handle(message, context, setup)

    return app


client_app = make_client_app()


# -- server side ----------------------------------------------------------------------------

def config_from_run_config(run_config: dict) -> ExperimentConfig:
    raw = run_config.get(CONFIG_KEY)
    if not isinstance(raw, str):
        raise CrossLMError(f"the Flower run config has no '{CONFIG_KEY}': start runs with "
                           "`crosslm run --engine flower`")
    return ExperimentConfig.model_validate(json.loads(raw))


def run_key(run: RunDir) -> str:
    """Names this run's state at the silos; kept on resume, new for a new or overwritten run."""
    path = run.path / "federation.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["run_key"]
    key = f"{run.path.name}-{uuid.uuid4().hex[:8]}"
    write_atomic(path, json.dumps({"run_key": key}))
    return key


def serve(grid: Grid, config: ExperimentConfig, run: RunDir, task: TaskSpec, test: list[Example],
          data_dir: Path | None, progress: Progress) -> dict:
    """The unchanged round loop, with a FlowerFederation over ``grid``."""
    from crosslm.federation_setup import build_server
    from crosslm.rounds import RoundLoop

    federation = FlowerFederation(grid, run_key(run), reply_timeout=config.clients.reply_timeout,
                                  progress=progress, min_clients=config.clients.min_replies)
    llm_test = test[:config.evaluation.llm_test_size]
    return RoundLoop(config, build_server(config, task), federation, run, llm_test=llm_test,
                     data_dir=data_dir, progress=progress).run_all()


server_app = ServerApp()


@server_app.main()
def _deployed_main(grid: Grid, context: Context) -> None:
    """Deployment: the server needs the task's test split and the LLM, not the silos' data."""
    from crosslm.models.loading import resolve_model

    config = config_from_run_config(context.run_config)
    task = load_task(config.task)
    data_dir = resolve_data_dir(config.data_dir)
    test = load_split(task, "test", data_dir)
    resolve_model(config.server.llm)
    run = RunDir(config.output_dir, config, str(context.run_config.get(MODE_KEY, "new")))
    summary = serve(grid, config, run, task=task, test=test, data_dir=data_dir,
                    progress=lambda message: log(INFO, message))
    log(INFO, "crosslm summary: %s", json.dumps(summary))


# -- simulation engine ----------------------------------------------------------------------

@contextmanager
def _keep_env(name: str):
    """Flower's Ray backend rewrites an environment variable of this process; put it back after."""
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def run_simulation_engine(config: ExperimentConfig, data: ExperimentData, run: RunDir,
                          progress: Progress) -> dict:
    """Run the experiment on Flower's Simulation Engine: one virtual SuperNode per silo."""
    from flwr.simulation import run_simulation

    for key, value in QUIET_ENV.items():  # no telemetry, no update check, unless asked for
        os.environ.setdefault(key, value)
    result: dict = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result["summary"] = serve(grid, config, run, task=data.task, test=data.test, data_dir=data.data_dir,
                                  progress=progress)

    cpus = max(1, min(os.cpu_count() or 1, config.clients.num_clients))
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False}}
    with _keep_env("PYTHONPATH"):
        run_simulation(app, make_client_app(SimulationSetup(config, run.path / "clients")),
                       num_supernodes=config.clients.num_clients, backend_config=backend)
    if "summary" not in result:
        raise CrossLMError("the Flower simulation ended before the experiment finished; see its log above")
    return result["summary"]
