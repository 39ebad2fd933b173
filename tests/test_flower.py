"""The Flower engines on tiny models.

- Simulation gives what in-process gives for a seed.
- A real loopback deployment (one SuperLink, three SuperNodes, each with its own
  private file and state folder) runs the rounds; a SuperNode killed mid-run sits
  its round out and takes part again after a restart.
- Canaries planted in every silo's private data appear in no message crossing
  either engine, in either direction, in any round.

Every process is started by this file, on 127.0.0.1 with free ports, and killed by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

pytest.importorskip("flwr", reason="flwr is not installed: pip install 'flwr[simulation]==1.41.0'")

from crosslm.cli import app  # noqa: E402
from crosslm.config import load_config  # noqa: E402
from crosslm.errors import CrossLMError  # noqa: E402
from crosslm.protocol import FitRes, decode, encode  # noqa: E402
from crosslm.rounds import RoundLoop  # noqa: E402
from crosslm.rundir import RunDir  # noqa: E402
from crosslm.runtime.base import Federation  # noqa: E402
from crosslm.runtime.flower_submit import QUIET_ENV, write_flower_home  # noqa: E402

BIN = Path(sys.executable).parent
# What is compared between engines: everything a phase reports except how long it took.
# differ from run to run, or say only where a figure came from (an evaluation cache hit)
TIMING = {"seconds", "eval_seconds", "bytes", "cached"}


# -- helpers ----------------------------------------------------------------------------------

def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _canary_file(source: Path, target: Path, lines: int, start: int, canaries: list[str]) -> None:
    """``lines`` examples of ``source``, each with a unique canary word planted in its text."""
    rows = _jsonl(source)[start:start + lines]
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w") as handle:
        for row in rows:
            canary = f"zqcanary{uuid.uuid4().hex[:12]}"
            canaries.append(canary)
            handle.write(json.dumps({"text": f"{row['text']} {canary}", "label": row["label"]}) + "\n")


def _config(path: Path, llm: Path, slms: list[Path], output_dir: Path, rounds: int,
            data_dir: Path | None = None, **clients) -> Path:
    config = {
        "task": "sst2", "rounds": rounds, "output_dir": str(output_dir),
        "data_dir": str(data_dir) if data_dir else None,
        "clients": {"num_clients": 2, "examples_per_client": 24, "validation_per_client": 8,
                    "slm": [str(s) for s in slms], "lora_rank": 2,
                    "local_training": {"lr": 1e-3, "epochs": 2}, "round_training": {"epochs": 1},
                    **clients},
        "server": {"llm": str(llm), "lora_rank": 2, "classifier_training": {"epochs": 1}},
        "generation": {"samples_per_label": 6, "max_new_tokens": 12, "min_words": 1},
        "selection": {"threshold": 0.0, "top_fraction": 1.0},
        "feedback": {"threshold": 0.0},
        "evaluation": {"slm_test_size": 32, "llm_test_size": 32, "general_ability": False},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _wire(folder: Path) -> list[dict]:
    return [record for file in sorted(folder.glob("*.jsonl")) for record in _jsonl(file)]


def _assert_private_text_never_crossed(wire: list[dict], canaries: list[str], rounds: int,
                                       others: list[Path]) -> None:
    """No canary in any message content (or in the server's files), and the log saw every exchange."""
    blob = "\n".join(json.dumps(r) for r in wire)
    files = [f for path in others for f in ([path] if path.is_file() else path.rglob("*"))
             if f.is_file() and f.suffix in {".jsonl", ".json", ".yaml", ".log"}]
    blob += "\n".join(f.read_text(errors="replace") for f in files)
    leaked = [c for c in canaries if c in blob]
    assert not leaked, f"{len(leaked)} private canaries crossed the runtime, e.g. {leaked[0]}"
    seen = {(r["direction"], json.loads(r["content"]["payload"])["round"], r["type"])
            for r in wire if "payload" in r["content"]}
    for round_ in range(rounds + 1):
        kinds = ["train"] + (["query.score"] if round_ else [])
        for direction in ("down", "up-sent", "up"):
            for kind in kinds:
                assert (direction, round_, kind) in seen, (direction, round_, kind)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(condition: Callable[[], bool], timeout: float, what: str,
          alive: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"process ended (code {alive.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Processes:
    """Processes this test started; each in its own session, so a kill takes its children too."""

    logs: Path
    env: dict[str, str]
    started: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, args: list[str], cwd: Path) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("a")
        proc = subprocess.Popen(args, cwd=cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.started[name] = proc
        return proc

    def kill(self, name: str) -> None:
        proc = self.started.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test created for this PID
        proc.wait(timeout=30)

    def kill_all(self) -> None:
        for name in list(self.started):
            self.kill(name)


# -- failure handling without processes ------------------------------------------------------

class _HalfFederation(Federation):
    """Two clients; one always fails."""

    def client_ids(self) -> list[str]:
        return ["a", "b"]

    def _exchange(self, payloads, timeout):
        ins = decode(payloads["a"])
        return {"a": encode(FitRes(ins.round, 1, 0.5, 0.5)), "b": "ValueError: broken"}


def test_too_few_replies_fail_the_round_and_failures_are_logged(tmp_path):
    config = load_config(None, [f"output_dir={tmp_path / 'run'}", "clients.min_replies=2"])
    run = RunDir(config.output_dir, config)
    loop = RoundLoop(config, server=None, federation=_HalfFederation(), run=run, llm_test=[],
                     data_dir=None)
    with pytest.raises(CrossLMError, match="only 1 of 2 clients replied to fit; clients.min_replies is 2"):
        loop.round_zero()
    failures = [m for m in run.metrics() if m["phase"] == "failure"]
    assert failures == [{"round": 0, "phase": "failure", "client": "b", "message": "fit",
                         "error": "ValueError: broken"}]


# -- the federation and the ClientApp, without processes ---------------------------------------

@pytest.fixture
def task_identity(monkeypatch):
    """What a Flower runtime sets in its processes before any Message is made."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _silo(name: str, answer: bool = True):
    """A fake node: says which silo it is, and answers a FitIns like a client would."""
    from flwr.app import ConfigRecord, Message, RecordDict

    def handle(message):
        if not answer:
            return None
        values = dict(message.content.config_records["crosslm"])
        reply = {"silo": name}
        if "payload" in values:
            reply["payload"] = encode(FitRes(decode(bytes(values["payload"])).round, 3, 0.5, 0.5))
        return Message(RecordDict({"crosslm": ConfigRecord(reply)}), reply_to=message)
    return handle


class _FakeGrid:
    def __init__(self, nodes: dict) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as a Grid's push does
        replies = [self.nodes[m.metadata.dst_node_id](m) for m in messages]
        return [r for r in replies if r is not None]


def _unavailable(message):
    """What the SuperLink (node 1) replies for a node that stopped sending heartbeats."""
    from flwr.app import Error, Message

    reply = Message(Error(5, "Node Unavailable"), reply_to=message)
    reply.metadata.__dict__["_src_node_id"] = 1
    return reply


def test_flower_federation_follows_silos_not_node_ids(task_identity):
    from crosslm.protocol import FitIns
    from crosslm.runtime.flower import FlowerFederation

    grid = _FakeGrid({11: _silo("a"), 12: _silo("b"), 13: lambda m: None})
    events: list[str] = []
    federation = FlowerFederation(grid, "run-x", reply_timeout=5, progress=events.append)
    assert federation.client_ids() == ["a", "b"]  # node 13 never said who it is
    assert any("node 13 did not identify" in e for e in events)
    replies, failures = federation.send({"a": FitIns(0), "b": FitIns(0)})
    assert set(replies) == {"a", "b"} and not failures

    grid.nodes[12] = _silo("b", answer=False)  # b's SuperNode died; Flower still lists it
    replies, failures = federation.send({"a": FitIns(1), "b": FitIns(1)})
    assert set(replies) == {"a"} and failures == {"b": "no reply before the timeout"}

    grid.nodes[12] = _unavailable  # ... and the SuperLink noticed
    replies, failures = federation.send({"a": FitIns(2), "b": FitIns(2)})
    assert set(replies) == {"a"} and "Node Unavailable" in failures["b"]

    grid.nodes[14] = _silo("b")  # b restarted: a new node id, the same silo
    assert federation.client_ids() == ["a", "b"]
    replies, failures = federation.send({"a": FitIns(3), "b": FitIns(3)})
    assert set(replies) == {"a", "b"} and not failures
    assert [t.bytes > 0 for t in federation.transfers if t.round == 3].count(True) == 4


def test_client_app_names_what_a_node_config_lacks(task_identity, tmp_path):
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from crosslm.protocol import FitIns
    from crosslm.runtime.flower_app import client_app

    config = load_config(None, [f"output_dir={tmp_path}"])
    context = Context(run_id=1, node_id=7, node_config={"silo-name": "north"}, state=RecordDict(),
                      run_config={"crosslm-config": config.model_dump_json()})
    fit = Message(RecordDict({"crosslm": ConfigRecord({"run-key": "r", "payload": encode(FitIns(0))})}),
                  dst_node_id=7, message_type="train")
    reply = dict(client_app(fit, context).content.config_records["crosslm"])
    assert reply["silo"] == "north" and "no 'data-path' in --node-config" in reply["error"]
    hello = Message(RecordDict({"crosslm": ConfigRecord({"run-key": "r"})}), dst_node_id=7,
                    message_type="query.hello")
    anonymous = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    reply = dict(client_app(hello, anonymous).content.config_records["crosslm"])
    assert "no 'silo-name'" in reply["error"]


def test_a_client_app_hands_its_messages_to_the_silo_worker_its_node_config_names(task_identity, tmp_path):
    """Without the worker running, the reply is an error naming it (the server leaves the silo out);
    with a real `crosslm silo-worker` process, the worker answers (here: the node config lacks its data)."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from crosslm.protocol import FitIns
    from crosslm.runtime.flower_app import client_app

    worker = tmp_path / "worker"
    config = load_config(None, [f"output_dir={tmp_path}"])
    context = Context(run_id=1, node_id=7, node_config={"silo-name": "north", "silo-worker": str(worker)},
                      state=RecordDict(), run_config={"crosslm-config": config.model_dump_json()})

    def fit() -> dict:
        values = {"run-key": "r", "payload": encode(FitIns(0))}
        message = Message(RecordDict({"crosslm": ConfigRecord(values)}), dst_node_id=7, message_type="train")
        return dict(client_app(message, context).content.config_records["crosslm"])

    reply = fit()
    assert reply["silo"] == "north" and f"silo worker at {worker} not reachable" in reply["error"]
    procs = Processes(tmp_path, {**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        procs.start("worker", [str(BIN / "crosslm"), "silo-worker", str(worker)], tmp_path)
        _wait(lambda: (worker / "worker.sock").exists(), 60, "the worker's socket", procs.started["worker"])
        assert (worker / "worker.key").stat().st_mode & 0o077 == 0  # only the silo's user reads the key
        reply = fit()
        assert reply["silo"] == "north" and "no 'data-path' in --node-config" in reply["error"]
        # the worker logs a message's outcome after replying: killed at once, it may not have yet
        _wait(lambda: "north: error:" in (tmp_path / "worker.log").read_text(), 30,
              "the worker's log line", procs.started["worker"])
    finally:
        procs.kill_all()
    assert "north: error: CrossLMError: silo north: its SuperNode has no 'data-path'" in (
        tmp_path / "worker.log").read_text()


def test_export_silos_writes_the_in_process_partition(tmp_path, shared_data, monkeypatch):
    from crosslm.federation_setup import load_experiment_data

    monkeypatch.setenv("CROSSLM_DATA_DIR", str(shared_data))
    sets = ["clients.num_clients=2", "clients.examples_per_client=12", "clients.validation_per_client=4",
            "evaluation.slm_test_size=5", "seed=3"]
    result = CliRunner().invoke(app, ["export-silos", "--out", str(tmp_path / "silos"),
                                      *[a for o in sets for a in ("--set", o)]])
    assert result.exit_code == 0, result.output
    commands = result.stdout.strip().splitlines()
    assert len(commands) == 2 and all(c.startswith("flower-supernode --insecure") for c in commands)
    assert 'silo-name="client-1"' in commands[1] and "seed=4" in commands[1]
    silo = load_experiment_data(load_config(None, sets)).silos[1]
    written = _jsonl(tmp_path / "silos/client-1/data.jsonl")
    assert [(r["text"], r["label"]) for r in written] == [(e.text, e.label) for e in silo.train]
    assert len(_jsonl(tmp_path / "silos/client-1/validation.jsonl")) == 4
    assert len(_jsonl(tmp_path / "silos/client-1/test.jsonl")) == 5
    result = CliRunner().invoke(app, ["export-silos", "--out", str(tmp_path / "silos"), "--workers",
                                      *[a for o in sets for a in ("--set", o)]])
    worker = tmp_path / "silos/client-1/worker"
    assert result.exit_code == 0 and f"crosslm silo-worker {worker} &" in result.stdout
    assert f'silo-worker="{worker}"' in result.stdout.splitlines()[-1]


# -- simulation -------------------------------------------------------------------------------

@dataclass
class Runs:
    root: Path
    in_process: Path
    simulation: Path
    wire: Path
    canaries: list[str]
    rounds: int = 1


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory, shared_data, tiny_causal_dir) -> Runs:
    """The same tiny experiment, on canary-planted data, in-process and on Flower's Simulation Engine.

    The SLMs are causal LMs without dropout, so no result depends on which process
    drew from torch's global random generator; the LLM's LoRA init does, so both
    runs start from the same torch seed.
    """
    import torch

    root = tmp_path_factory.mktemp("engines")
    canaries: list[str] = []
    data = root / "data" / "sst2"
    _canary_file(shared_data / "sst2" / "train.jsonl", data / "train.jsonl", 300, 0, canaries)
    (data / "dev.jsonl").write_text((shared_data / "sst2" / "dev.jsonl").read_text())
    (data / "labels.json").write_text((shared_data / "sst2" / "labels.json").read_text())
    runs = Runs(root, root / "in-process", root / "flower-sim", root / "wire", canaries)
    config = _config(root / "config.yaml", tiny_causal_dir, [tiny_causal_dir], runs.in_process,
                     runs.rounds, data_dir=root / "data")
    # realism feedback: the replies carry vote counts of the private examples besides the scores
    raw = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump(raw | {"feedback": raw["feedback"] | {"strategy": "realism-sft"}}))
    runner = CliRunner()
    torch.manual_seed(1234)
    result = runner.invoke(app, ["run", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {**QUIET_ENV, "CROSSLM_WIRE_LOG": str(runs.wire)}.items():
            patch.setenv(key, value)
        torch.manual_seed(1234)
        result = runner.invoke(app, ["run", str(config), "--engine", "flower-sim",
                                     "--output-dir", str(runs.simulation)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return runs


def _comparable(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics
            if m["phase"] != "communication"]


def _close(a, b, path: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            if not key.endswith("seconds"):
                _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-3, abs=1e-4), path
    else:
        assert a == b, path


def test_simulation_matches_in_process(engine_runs):
    local = _jsonl(engine_runs.in_process / "metrics.jsonl")
    sim = _jsonl(engine_runs.simulation / "metrics.jsonl")
    assert [m["phase"] for m in local] == [m["phase"] for m in sim]
    _close(_comparable(local), _comparable(sim))
    for round_ in range(1, engine_runs.rounds + 1):
        samples = [_jsonl(run / f"rounds/{round_:03d}/samples.jsonl")
                   for run in (engine_runs.in_process, engine_runs.simulation)]
        accepted = [[(s["text"], s["label"]) for s in rows if s["accepted"]] for rows in samples]
        assert accepted[0] and accepted[0] == accepted[1]
        votes = [[s["votes"] for s in rows] for rows in samples]
        assert sum(votes[0]) == 2 * 24 and votes[0] == votes[1]
    traffic = [[m["bytes"] for m in _jsonl(run / "metrics.jsonl") if m["phase"] == "communication"]
               for run in (engine_runs.in_process, engine_runs.simulation)]
    # The same encoding is counted whichever runtime carries it: what the server sends is identical,
    # replies differ at most by the digits of floats that differ in the last place.
    for local_round, sim_round in zip(*traffic, strict=True):
        assert local_round.keys() == sim_round.keys()
        for cid, sent in local_round.items():
            assert sent["down"] == sim_round[cid]["down"]
            assert sent["up"] == pytest.approx(sim_round[cid]["up"], abs=16)
    for k in (0, 1):
        state = engine_runs.simulation / f"clients/client-{k}"
        assert (state / f"model-r{engine_runs.rounds}.safetensors").is_file()


def test_no_private_text_crosses_the_simulation(engine_runs):
    _assert_private_text_never_crossed(_wire(engine_runs.wire), engine_runs.canaries, engine_runs.rounds,
                                       [engine_runs.simulation / "metrics.jsonl",
                                        engine_runs.simulation / "rounds"])


# -- deployment -------------------------------------------------------------------------------

@dataclass
class Deployment:
    root: Path
    run: Path
    state: dict[str, Path]
    wire: Path
    canaries: list[str]
    logs: Path
    returncode: int
    rounds: int = 3


def _node_config(silo: str, root: Path, slm: Path, worker: Path | None = None) -> str:
    values = {"silo-name": silo, "data-path": root / silo / "train.jsonl",
              "test-path": root / silo / "test.jsonl", "state-dir": root / silo / "state", "slm": slm,
              **({"silo-worker": worker} if worker else {})}
    return " ".join(f'{key}="{value}"' for key, value in values.items())


def _supernode(silo: str, root: Path, port: int, node_port: int, slm: Path, worker: Path | None = None
               ) -> list[str]:
    return [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
            "--port", str(node_port), "--node-config", _node_config(silo, root, slm, worker)]


def _registered_nodes(env: dict[str, str]) -> int:
    done = subprocess.run([str(BIN / "flwr"), "supernode", "list", "crosslm", "--format", "json"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    text = done.stdout
    try:
        nodes = json.loads(text[text.find("{"):]).get("nodes", [])
    except json.JSONDecodeError:
        return 0
    return sum(1 for n in nodes if "online" in str(n.get("status", "")).lower())


def _completed(run: Path) -> int:
    progress = run / "progress.json"
    return json.loads(progress.read_text())["completed_round"] if progress.is_file() else -1


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, shared_data, tiny_causal_dir) -> Deployment:
    """SuperLink + 3 SuperNodes on loopback; 3 rounds; silo-2 killed after round 1, back after round 2.
    silo-0's ClientApps hand their messages to its `crosslm silo-worker`."""
    root = tmp_path_factory.mktemp("deploy")
    logs = root / "logs"
    logs.mkdir()
    port, canaries, silos = _free_port(), [], ["silo-0", "silo-1", "silo-2"]
    for k, silo in enumerate(silos):
        _canary_file(shared_data / "sst2" / "train.jsonl", root / silo / "train.jsonl", 30, 100 * k, canaries)
        _canary_file(shared_data / "sst2" / "dev.jsonl", root / silo / "test.jsonl", 24, 30 * k, canaries)
    env = {**os.environ, **QUIET_ENV, "CROSSLM_WIRE_LOG": str(root / "wire"), "OMP_NUM_THREADS": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the SuperLink starts flower-superexec
           "CROSSLM_DATA_DIR": str(shared_data), "FLWR_HOME": str(root / "flwr-home")}
    write_flower_home(root / "flwr-home", f"127.0.0.1:{port}", None)
    procs = Processes(logs, env)
    node_ports = {silo: _free_port() for silo in silos}
    run = root / "run"
    config = _config(root / "config.yaml", tiny_causal_dir, [tiny_causal_dir], run, 3,
                     reply_timeout=60, min_replies=2)
    try:
        procs.start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--port", str(port),
                                  "--disable-runtime-dependency-installation"], root)
        _wait(lambda: _port_open(port), 60, "the SuperLink", procs.started["superlink"])
        worker = root / "silo-0" / "worker"
        procs.start("silo-0-worker", [str(BIN / "crosslm"), "silo-worker", str(worker)], root)
        for silo in silos:
            procs.start(silo, _supernode(silo, root, port, node_ports[silo], tiny_causal_dir,
                                         worker if silo == "silo-0" else None), root)
        _wait(lambda: _registered_nodes(env) >= 3, 90, "3 SuperNodes")
        crosslm = procs.start("crosslm", [str(BIN / "crosslm"), "run", str(config), "--engine", "flower",
                                          "--superlink", f"127.0.0.1:{port}"], root)
        _wait(lambda: _completed(run) >= 1, 180, "round 1", crosslm)
        procs.kill("silo-2")
        _wait(lambda: _completed(run) >= 2, 180, "round 2 without silo-2", crosslm)
        procs.start("silo-2", _supernode("silo-2", root, port, _free_port(), tiny_causal_dir), root)
        returncode = crosslm.wait(timeout=240)
    finally:
        procs.kill_all()
    return Deployment(root, run, {s: root / s / "state" for s in silos}, root / "wire", canaries,
                      logs, returncode)


def _fits(metrics: list[dict]) -> dict[int, set[str]]:
    return {m["round"]: set(m["clients"]) for m in metrics if m["phase"] == "C1-fit"}


def test_deployment_runs_every_round_with_state_at_the_nodes(deployment):
    crosslm_log = (deployment.logs / "crosslm.log").read_text()
    assert deployment.returncode == 0, crosslm_log[-3000:]
    assert "CrossLM after 3 rounds" in crosslm_log
    metrics = _jsonl(deployment.run / "metrics.jsonl")
    assert _fits(metrics)[0] == _fits(metrics)[1] == {"silo-0", "silo-1", "silo-2"}
    assert json.loads((deployment.run / "summary.json").read_text())["rounds"] == 3
    assert not (deployment.run / "clients").exists()  # client state lives at the silos only
    run_key = json.loads((deployment.run / "federation.json").read_text())["run_key"]
    for silo in ("silo-0", "silo-1"):
        state = deployment.state[silo] / run_key
        assert [r["round"] for r in _jsonl(state / "metrics.jsonl")] == [0, 1, 2, 3]
        assert (state / "model-r3.safetensors").is_file() and (state / "accepted-r3.jsonl").is_file()


def test_a_silo_worker_answered_every_message_of_its_silo(deployment):
    """silo-0's round 0 and three rounds of scoring and training: 7 messages, all answered there."""
    lines = (deployment.logs / "silo-0-worker.log").read_text().splitlines()
    answered = [line for line in lines if line.startswith("silo-0: answered")]
    assert len(answered) == 7 and not [line for line in lines if "error" in line], lines


def test_a_killed_supernode_sits_its_round_out_and_rejoins(deployment):
    metrics = _jsonl(deployment.run / "metrics.jsonl")
    fits = _fits(metrics)
    assert fits[2] == {"silo-0", "silo-1"}
    assert fits[3] == {"silo-0", "silo-1", "silo-2"}
    failures = {(m["round"], m["client"], m["message"]) for m in metrics if m["phase"] == "failure"}
    # Killed during round 2: its score times out (or the SuperLink reports it unavailable); by C1 the
    # SuperLink may already have dropped it from the node list. Round 3 may start scoring before the
    # restarted SuperNode has registered: then silo-2 sits that phase out and is back for C1.
    assert (2, "silo-2", "score") in failures
    assert failures <= {(2, "silo-2", "score"), (2, "silo-2", "fit"), (3, "silo-2", "score")}
    run_key = json.loads((deployment.run / "federation.json").read_text())["run_key"]
    rounds = [r["round"] for r in _jsonl(deployment.state["silo-2"] / run_key / "metrics.jsonl")]
    assert rounds == [0, 1, 3]


def test_no_private_text_crosses_the_deployment(deployment):
    _assert_private_text_never_crossed(_wire(deployment.wire), deployment.canaries, deployment.rounds,
                                       [deployment.run, deployment.logs / "superlink.log",
                                        deployment.logs / "crosslm.log"])


# -- deployment across machines: TLS and SuperNode authentication, as docs/flower.md says ----------

def _sh(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout}{done.stderr}"
    return done.stdout


def _certificates(certs: Path) -> None:
    """The CA and the SuperLink's certificate, with the openssl commands of docs/flower.md."""
    certs.mkdir()
    _sh(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-days", "2", "-nodes",
         "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=crosslm-ca"], certs)
    _sh(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
         "-subj", "/CN=localhost"], certs)
    (certs / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _sh(["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "2", "-sha256", "-extfile", "san.ext", "-out", "server.pem"], certs)


@pytest.mark.skipif(not all(shutil.which(tool) for tool in ("openssl", "ssh-keygen")),
                    reason="openssl and ssh-keygen (Debian: openssl, openssh-client) make the keys")
def test_tls_deployment_admits_only_registered_supernodes(tmp_path, shared_data, tiny_causal_dir):
    root, canaries = tmp_path, []
    logs = root / "logs"
    logs.mkdir()
    _certificates(root / "certs")
    silos = ["north", "south"]
    for k, silo in enumerate(silos + ["rogue"]):
        _sh(["ssh-keygen", "-t", "ecdsa", "-b", "384", "-N", "", "-f", f"{silo}-key"], root)
        _canary_file(shared_data / "sst2" / "train.jsonl", root / silo / "train.jsonl", 30, 100 * k, canaries)
        _canary_file(shared_data / "sst2" / "dev.jsonl", root / silo / "test.jsonl", 16, 30 * k, canaries)
    port = _free_port()
    env = {**os.environ, **QUIET_ENV, "OMP_NUM_THREADS": "1", "FLWR_HOME": str(root / "flwr-home"),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    write_flower_home(root / "flwr-home", f"127.0.0.1:{port}", root / "certs" / "ca.crt")
    procs = Processes(logs, env)
    run = root / "run"
    config = _config(root / "config.yaml", tiny_causal_dir, [tiny_causal_dir], run, 1,
                     data_dir=shared_data, reply_timeout=120, min_replies=2)
    certs = root / "certs"
    try:
        procs.start("superlink", [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.crt"),
                                  "--ssl-certfile", str(certs / "server.pem"), "--ssl-keyfile",
                                  str(certs / "server.key"), "--enable-supernode-auth",
                                  "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
                                  "--port", str(port)], root)
        _wait(lambda: _port_open(port), 60, "the SuperLink", procs.started["superlink"])
        for silo in silos:
            _sh([str(BIN / "flwr"), "supernode", "register", f"{silo}-key.pub", "crosslm"], root, env)
        for silo in silos + ["rogue"]:
            procs.start(silo, [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{port}",
                               "--root-certificates", str(certs / "ca.crt"), "--auth-supernode-private-key",
                               f"{silo}-key", "--port", str(_free_port()), "--node-config",
                               _node_config(silo, root, tiny_causal_dir)], root)
        _wait(lambda: _registered_nodes(env) >= 2, 90, "the 2 registered SuperNodes")
        crosslm = procs.start("crosslm", [str(BIN / "crosslm"), "run", str(config), "--engine", "flower",
                                          "--superlink", f"127.0.0.1:{port}", "--root-certificates",
                                          str(certs / "ca.crt")], root)
        returncode = crosslm.wait(timeout=300)
    finally:
        procs.kill_all()
    assert returncode == 0, (logs / "crosslm.log").read_text()[-3000:]
    metrics = _jsonl(run / "metrics.jsonl")
    assert _fits(metrics) == {0: {"north", "south"}, 1: {"north", "south"}}  # never the rogue node
    assert not (root / "rogue" / "state").exists()
