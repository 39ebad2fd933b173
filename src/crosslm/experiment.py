"""One experiment on this machine: check the inputs, build the sides a method has, run its rounds.

``load_experiment_data`` checks the inputs; ``build_loop`` makes the server, the
clients and the in-process federation a method needs; ``crosslm.rounds.RoundLoop``
drives any federation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from crosslm.baselines import FedAvgLoop, few_shot_task, union_of_silos
from crosslm.client import Client
from crosslm.config import ExperimentConfig, check_method
from crosslm.models.classifier import build_classifier
from crosslm.models.llm import ServerLLM
from crosslm.models.loading import model_kind, plan_model, resolve_model
from crosslm.privacy import accounting
from crosslm.privacy.audit import CANARY_FILE, Canaries, make_canaries, plant
from crosslm.rounds import Progress, RoundLoop
from crosslm.rundir import Mode, RunDir, write_atomic
from crosslm.runtime.base import Federation
from crosslm.runtime.in_process import InProcessFederation
from crosslm.server import Server
from crosslm.tasks.data import load_split, resolve_data_dir
from crosslm.tasks.partition import ClientData, partition
from crosslm.tasks.spec import Example, TaskSpec, load_task
from crosslm.third_party import THIRD_PARTY_LOG, ThirdPartyOutput


@dataclass(frozen=True)
class ExperimentData:
    task: TaskSpec
    silos: list[ClientData]
    test: list[Example]
    data_dir: Path | None
    privacy: dict[str, accounting.DPPlan] = field(default_factory=dict)  # by client name, under DP
    canaries: Canaries | None = None  # planted in client-0's training data (audit.canaries)


def load_experiment_data(config: ExperimentConfig, resolve_models: bool = True) -> ExperimentData:
    """Read and check the task, the data, the privacy budget and (unless told not to) the models
    before anything is written."""
    task = load_task(config.task)
    data_dir = resolve_data_dir(config.data_dir)
    pool, test = load_split(task, "train", data_dir), load_split(task, "test", data_dir)
    c = config.clients
    silos = partition(pool, task.num_labels, c.num_clients, c.examples_per_client,
                      c.validation_per_client, c.partition, c.dirichlet_alpha, config.seed)
    canaries = None
    if config.audit.canaries:
        canaries = make_canaries(pool, silos, task.num_labels, config.audit.canaries, config.seed)
        silos = [plant(silos[0], canaries), *silos[1:]]
    for name in [config.server.llm, *c.slm] if resolve_models else []:
        resolve_model(name)
    if resolve_models:
        check_models_fit(config)
    data = ExperimentData(task, silos, test, data_dir, canaries=canaries)
    if config.privacy is not None:  # a budget the planned rounds would exceed stops the run here
        plans = {name: accounting.plan(config, len(silo.train), name)
                 for name, (_, silo) in client_silos(config, data).items()}
        data = replace(data, privacy=plans)
    return data


def check_models_fit(config: ExperimentConfig) -> None:
    """Refuse a model too large for its device before the run directory is written.

    Each model is checked on its own against this machine's free memory; models that
    share a device are not added up.
    """
    if config.method in SERVER_METHODS:
        s = config.server
        plan_model(s.llm, causal=True, device=s.device, dtype=s.dtype, shardable=True, section="server")
    if config.method in CLIENT_METHODS:
        for slm in dict.fromkeys(config.clients.slm):
            causal = model_kind(slm) == "causal"
            plan_model(slm, causal=causal, device=config.clients.device, dtype="auto" if causal else None,
                       shardable=False, section="clients")


SERVER_METHODS = {"crosslm", "synthetic-no-feedback", "llm-zero-shot", "llm-few-shot"}
CLIENT_METHODS = {"crosslm", "synthetic-no-feedback", "local-only", "centralized", "fedavg"}


def client_silos(config: ExperimentConfig, data: ExperimentData) -> dict[str, tuple[str, ClientData]]:
    """(SLM, data) by client name: one per silo, or for centralized one per SLM on the union of silos."""
    slms = config.clients.slm
    if config.method == "centralized":
        union = union_of_silos(data.silos)
        return {f"centralized-{k}": (slm, union) for k, slm in enumerate(dict.fromkeys(slms))}
    return {f"client-{k}": (slms[k % len(slms)], silo) for k, silo in enumerate(data.silos)}


def build_federation(config: ExperimentConfig, data: ExperimentData, run_dir: Path,
                     progress: Progress) -> Federation:
    """One in-process client per silo (state under ``run_dir/clients``) and the federation to them."""
    slm_test = data.test[:config.evaluation.slm_test_size]
    clients = {name: Client(name, slm, data.task, silo, slm_test, run_dir / "clients" / name,
                            config.clients, config.seed + k, privacy=data.privacy.get(name))
               for k, (name, (slm, silo)) in enumerate(client_silos(config, data).items())}
    return InProcessFederation(clients, on_deliver=lambda cid, kind: progress(f"  {cid}: {kind}"))


def build_server(config: ExperimentConfig, task: TaskSpec) -> Server:
    if config.method == "llm-few-shot":
        task = few_shot_task(task, config.evaluation.few_shot_per_label, config.seed)
    s = config.server
    llm = ServerLLM(s.llm, task, s.lora_rank, config.seed, s.dtype, device=s.device,
                    lora_target_modules=s.lora_target_modules,
                    gradient_checkpointing=s.gradient_checkpointing,
                    prompt_format=config.generation.prompt_format)
    return Server(config, task, llm)


def build_loop(config: ExperimentConfig, data: ExperimentData, run: RunDir, progress: Progress) -> RoundLoop:
    """The round loop of ``config.method``, with the sides that method has."""
    server = build_server(config, data.task) if config.method in SERVER_METHODS else None
    federation = (build_federation(config, data, run.path, progress)
                  if config.method in CLIENT_METHODS else None)
    if config.method == "fedavg":  # one global SLM, initialised once, as every client's start
        c = config.clients
        model = build_classifier(c.slm[0], data.task, c.lora_rank, config.seed, device=c.device,
                                 lora_target_modules=c.lora_target_modules)
        slm_test = data.test[:config.evaluation.slm_test_size]
        return FedAvgLoop(config, federation, run, model, slm_test, progress)
    llm_test = data.test[:config.evaluation.llm_test_size]
    return RoundLoop(config, server, federation, run, llm_test, data.data_dir, progress)


def run_experiment(config: ExperimentConfig, mode: Mode = "new",
                   progress: Progress = lambda message: None, verbose: bool = False) -> tuple[dict, Path]:
    """Run ``config`` on this machine (in-process or Flower's simulation); (summary, run directory).

    Other libraries' progress bars, log lines and warnings go to ``third_party.log`` in the run
    directory, unless ``verbose``.
    """
    with ThirdPartyOutput(verbose) as third_party:
        check_method(config)
        progress("checking data and models")
        data = load_experiment_data(config)
        run = RunDir(config.output_dir, config, mode)
        third_party.to_file(run.path / THIRD_PARTY_LOG)
        if data.canaries is not None:  # the auditor's record of which canaries were planted
            (run.path / CANARY_FILE).parent.mkdir(exist_ok=True)
            write_atomic(run.path / CANARY_FILE, data.canaries.to_json())
        progress("loading models")
        if config.engine == "flower-sim":
            from crosslm.runtime.flower_app import run_simulation_engine

            return run_simulation_engine(config, data, run, progress), run.path
        return build_loop(config, data, run, progress).run_all(), run.path
