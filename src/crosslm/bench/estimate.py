"""Estimated wall time of a bench cell, for ``crosslm bench --dry-run``: an estimate, not a promise.

When cells of the same method and task have finished (preferably in the same setting), the estimate
is the median of their measured wall times. Otherwise it comes from a size model whose constants are
derived from one run of the default experiment, ``benchmarks/results/sst2-default.json`` at commit
7ad49dc (4 MiniLM clients x 128 examples, 3 rounds of 2 labels x 48 generated samples, 872 test
sentences for the SLMs and the LLM, WikiText-2 2,048 tokens and 200 ARC-Easy questions before and
after; 2-core AMD EPYC). The file gives the total (903.9 s), the rounds (146.0 + 127.0 + 133.3 =
406.3 s) and the evaluation (398.9 s); the split of the evaluation between the SLMs (101.4 s, the
clients' ``eval_seconds``), the LLM's task accuracy (154.1 s) and its general ability (143.4 s) is
the sum of those phases' ``seconds`` in the same run's metrics.jsonl (``runs/bench-sst2-default``,
written by ``python benchmarks/sst2_default.py``). The model assumes MiniLM-sized SLMs, Gemma 3 270M
and SST-2-length texts; larger SLMs (SmolLM2-135M) and longer texts (AG News) take longer.
"""

from __future__ import annotations

import statistics
from functools import lru_cache

from crosslm.config import ExperimentConfig
from crosslm.methods import method_spec
from crosslm.tasks.data import load_split, resolve_data_dir
from crosslm.tasks.spec import load_task

# round 0 (local training to convergence) and model loading: the rest of the total
LOCAL_S_PER_EXAMPLE = (903.9 - 406.3 - 398.9) / (4 * 128)
ROUND_S_PER_SAMPLE = 406.3 / (3 * 2 * 48)  # S1-S5, C1, C2 per generated sample
SLM_EVAL_S_PER_ITEM = 101.4 / (4 * 4 * 872)  # 4 evaluations of 4 clients
LLM_EVAL_S_PER_ITEM = 154.1 / (2 * 872)  # zero-shot (with calibration) and final
S5_S_PER_SAMPLE = (60.1 + 51.3 + 45.3) / (76 + 82 + 80)  # S5 of that run
GENERAL_EVAL_S = 143.4 / 2  # one evaluation of 2,048 WikiText-2 tokens and 200 ARC-Easy questions
NOMINAL_TEST_SIZE = 1000  # test split size when no local data folder says otherwise


@lru_cache
def _task_sizes(task: str, data_dir: str | None) -> tuple[int, int]:
    """(labels, test examples) of a task; reads the local test split when there is one."""
    spec = load_task(task)
    folder = resolve_data_dir(data_dir)
    return spec.num_labels, len(load_split(spec, "test", folder)) if folder else NOMINAL_TEST_SIZE


def model_seconds(config: ExperimentConfig) -> float:
    """Seconds for one cell from its sizes; which parts run depends on the method."""
    c, ev, method = config.clients, config.evaluation, method_spec(config.method)
    labels, test_size = _task_sizes(config.task, config.data_dir)
    slm_test, llm_test = (min(size or test_size, test_size) for size in (ev.slm_test_size, ev.llm_test_size))
    rounds = config.rounds if method.rounds != "none" else 0
    # SLMs evaluated: none, the global model (fedavg), one per SLM name on the union, one per client
    distinct = len(set(c.slm))
    slms = (0 if not method.clients else 1 if method.rounds == "average" else
            distinct if method.pooled else c.num_clients)
    local = LOCAL_S_PER_EXAMPLE * c.num_clients * c.examples_per_client if slms else 0.0
    local *= distinct if method.pooled else 1
    seconds = local + (rounds + 1) * slms * slm_test * SLM_EVAL_S_PER_ITEM
    if method.rounds == "generate":
        seconds += rounds * ROUND_S_PER_SAMPLE * config.generation.samples_per_label * labels
    if method.rounds == "average":  # a round trains one epoch: round 0's cost over its epoch budget
        seconds += rounds * local / c.local_training.epochs
    if method.rounds == "llm-on-silos":  # one S5 on every silo's examples, evaluated before and after
        seconds += S5_S_PER_SAMPLE * c.num_clients * c.examples_per_client
        task_evals = general_evals = 2
    elif method.llm_only:
        task_evals = general_evals = 1
    elif method.server and method.rounds == "generate":
        task_evals = rounds + 1 if ev.llm_task_every_round else min(2, rounds + 1)
        general_evals = min(2, rounds + 1)
    else:
        task_evals = general_evals = 0
    general = GENERAL_EVAL_S * (ev.wikitext_tokens / 2048 + ev.arc_easy_questions / 200) / 2
    general_evals *= ev.general_ability
    return seconds + task_evals * llm_test * LLM_EVAL_S_PER_ITEM + general_evals * general


def estimate(config: ExperimentConfig, same_setting: list[float],
             same_task: list[float]) -> tuple[float, str]:
    """(seconds, basis): the median of measured cells like this one, else the size model."""
    for measured, where in ((same_setting, ""), (same_task, ", any setting")):
        if measured:
            return statistics.median(measured), f"median of {len(measured)}{where}"
    return model_seconds(config), "model"
