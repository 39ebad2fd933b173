"""One experiment on this machine: check the inputs, build the sides a method has, run its rounds.

``crosslm.federation_setup`` checks the inputs and builds the server and the clients;
``build_loop`` puts together the sides a method needs with the in-process federation;
``crosslm.rounds.RoundLoop`` drives any federation. ``--engine flower-sim`` hands the
same checked inputs to ``crosslm.runtime.flower_app``.
"""

from __future__ import annotations

from pathlib import Path

from crosslm.baselines import CentralizedLLMLoop, FedAvgLoop, union_of_silos
from crosslm.config import ExperimentConfig, check_method
from crosslm.federation_setup import (
    ExperimentData,
    build_federation,
    build_server,
    load_experiment_data,
)
from crosslm.methods import method_spec
from crosslm.models.classifier import build_classifier
from crosslm.privacy.audit import CANARY_FILE
from crosslm.rounds import Progress, RoundLoop
from crosslm.rundir import Mode, RunDir, write_atomic
from crosslm.third_party import THIRD_PARTY_LOG, ThirdPartyOutput


def build_loop(config: ExperimentConfig, data: ExperimentData, run: RunDir, progress: Progress) -> RoundLoop:
    """The round loop of ``config.method``, with the sides that method has."""
    method = method_spec(config.method)
    server = build_server(config, data.task) if method.server else None
    federation = build_federation(config, data, run.path, progress) if method.clients else None
    if method.rounds == "average":  # FedAvg: one global SLM, initialised once, as every client's start
        c = config.clients
        model = build_classifier(c.slm[0], data.task, c.lora_rank, config.seed, device=c.device,
                                 lora_target_modules=c.lora_target_modules)
        slm_test = data.test[:config.evaluation.slm_test_size]
        return FedAvgLoop(config, federation, run, model=model, test=slm_test, progress=progress)
    llm_test = data.test[:config.evaluation.llm_test_size]
    if method.rounds == "llm-on-silos":
        return CentralizedLLMLoop(config, server, run, pooled=union_of_silos(data.silos).train,
                                  llm_test=llm_test, data_dir=data.data_dir, progress=progress)
    return RoundLoop(config, server, federation, run, llm_test=llm_test, data_dir=data.data_dir,
                     progress=progress)


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
        if config.engine == "flower-sim":  # imported here only so that in-process runs never load Flower
            from crosslm.runtime.flower_app import run_simulation_engine

            return run_simulation_engine(config, data, run, progress), run.path
        return build_loop(config, data, run, progress).run_all(), run.path
