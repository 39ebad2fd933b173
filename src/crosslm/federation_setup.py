"""What every engine builds a run from: the checked inputs, the silo rule, the clients and the server.

``crosslm.experiment`` (in-process), ``crosslm.runtime.flower_app`` (Flower's simulation and
deployment) and ``crosslm.runtime.flower_submit`` (``export-silos``) all import from here, and this
module imports none of them, so the engines never import each other to share a builder.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from crosslm.baselines import few_shot_task, union_of_silos
from crosslm.client import Client
from crosslm.config import ExperimentConfig
from crosslm.methods import method_spec
from crosslm.models.llm import ServerLLM
from crosslm.models.loading import model_kind, plan_model, resolve_model
from crosslm.privacy import accounting
from crosslm.privacy.audit import Canaries, make_canaries, plant
from crosslm.rounds import Progress
from crosslm.runtime.in_process import InProcessFederation
from crosslm.server import Server
from crosslm.tasks.data import load_split, resolve_data_dir
from crosslm.tasks.partition import ClientData, partition
from crosslm.tasks.spec import Example, TaskSpec, load_task


@dataclass(frozen=True)
class ExperimentData:
    task: TaskSpec
    silos: list[ClientData]
    test: list[Example]
    data_dir: Path | None
    privacy: dict[str, accounting.DPPlan] = field(default_factory=dict)  # by client name, under DP
    canaries: Canaries | None = None  # planted in client-0's training data (audit.canaries)


@dataclass(frozen=True)
class SiloAssignment:
    """Who client ``k`` is: its name, the SLM it trains and the seed of its random generators."""

    name: str
    model: str
    seed: int


def silo_assignment(config: ExperimentConfig, k: int) -> SiloAssignment:
    """The one rule for client ``k``: SLMs are dealt round-robin over the silos (for centralized, one
    client per distinct SLM, on the union of the silos) and each client's seed is ``seed + k``."""
    slms = config.clients.slm
    if method_spec(config.method).pooled:
        return SiloAssignment(f"centralized-{k}", list(dict.fromkeys(slms))[k], config.seed + k)
    return SiloAssignment(f"client-{k}", slms[k % len(slms)], config.seed + k)


def load_experiment_data(config: ExperimentConfig, resolve_models: bool = True) -> ExperimentData:
    """Read and check the task, the data, the privacy budget and (unless told not to) the models
    before anything is written."""
    task = load_task(config.task)
    data_dir = resolve_data_dir(config.data_dir)
    pool, test = load_split(task, "train", data_dir), load_split(task, "test", data_dir)
    c = config.clients
    silos = partition(pool, task.num_labels, c.num_clients, train_per_client=c.examples_per_client,
                      validation_per_client=c.validation_per_client, scheme=c.partition,
                      alpha=c.dirichlet_alpha, seed=config.seed)
    canaries = None
    if config.audit.canaries:
        canaries = make_canaries(pool, silos, task.num_labels, count=config.audit.canaries, seed=config.seed)
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
    method = method_spec(config.method)
    if method.server:
        s = config.server
        plan_model(s.llm, causal=True, device=s.device, dtype=s.dtype, shardable=True, section="server")
    if method.clients:
        for slm in dict.fromkeys(config.clients.slm):
            causal = model_kind(slm) == "causal"
            plan_model(slm, causal=causal, device=config.clients.device, dtype="auto" if causal else None,
                       shardable=False, section="clients")


def client_silos(config: ExperimentConfig, data: ExperimentData) -> dict[str, tuple[str, ClientData]]:
    """(SLM, data) by client name: one per silo, or for centralized one per SLM on the union of silos."""
    if method_spec(config.method).pooled:
        union = union_of_silos(data.silos)
        assigned = [silo_assignment(config, k) for k in range(len(dict.fromkeys(config.clients.slm)))]
        return {a.name: (a.model, union) for a in assigned}
    return {a.name: (a.model, silo)
            for a, silo in ((silo_assignment(config, k), silo) for k, silo in enumerate(data.silos))}


def build_client(config: ExperimentConfig, data: ExperimentData, k: int, state_root: Path) -> Client:
    """Client ``k`` of ``client_silos`` with its state under ``state_root/<name>``."""
    assigned = silo_assignment(config, k)
    _, silo = client_silos(config, data)[assigned.name]
    return Client(assigned.name, assigned.model, data.task, silo,
                  test=data.test[:config.evaluation.slm_test_size], state_dir=state_root / assigned.name,
                  config=config.clients, seed=assigned.seed, privacy=data.privacy.get(assigned.name))


def build_federation(config: ExperimentConfig, data: ExperimentData, run_dir: Path,
                     progress: Progress) -> InProcessFederation:
    """One in-process client per silo (state under ``run_dir/clients``) and the federation to them."""
    clients = {}
    for k in range(len(client_silos(config, data))):
        client = build_client(config, data, k, run_dir / "clients")
        clients[client.name] = client
    return InProcessFederation(clients, on_deliver=lambda cid, kind: progress(f"  {cid}: {kind}"))


def build_server(config: ExperimentConfig, task: TaskSpec) -> Server:
    if method_spec(config.method).few_shot_prompt:
        task = few_shot_task(task, config.evaluation.few_shot_per_label, config.seed)
    s = config.server
    llm = ServerLLM(s.llm, task, lora_rank=s.lora_rank, seed=config.seed, dtype=s.dtype, device=s.device,
                    lora_target_modules=s.lora_target_modules,
                    gradient_checkpointing=s.gradient_checkpointing,
                    prompt_format=config.generation.prompt_format)
    return Server(config, task, llm)
