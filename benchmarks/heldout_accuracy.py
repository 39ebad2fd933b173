"""Benchmark: the feedback bench's client SLMs scored on real training texts that no silo holds.

Issue #29 forbids choosing settings on the test split. The clients' own validation
splits are as label-skewed as their training data (Dirichlet silos), so they reward
a model that leans to its silo's majority label: `local-only` scores higher on them
than any method with label-balanced synthetic data, and lower on the test split.
This scores each finished cell's last-round client models on a label-balanced sample
of the task's *training* split outside every silo of that seed (up to ``--per-label``
texts per label, one fixed draw per task and seed, so the methods of a seed are
compared on the same texts). It needs the cells' run directories (this machine's
``runs/feedback``; the committed records hold no model weights) and writes
``benchmarks/results/feedback-heldout.json``, which ``feedback_summary.py`` reads.
From the repo root:

    .venv/bin/python benchmarks/heldout_accuracy.py [--only GLOB] [--per-label 100]
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import sys
from pathlib import Path

from crosslm.bench.results import machine_name
from crosslm.bench.runner import cell_key, cell_status, selected
from crosslm.bench.spec import Cell, expand, load_spec
from crosslm.federation_setup import load_experiment_data, silo_assignment
from crosslm.methods import method_spec
from crosslm.models.classifier import build_classifier
from crosslm.models.training import accuracy
from crosslm.rundir import write_atomic
from crosslm.tasks.data import load_split
from crosslm.tasks.spec import Example, load_task

BENCHMARKS = Path(__file__).parent
OUT = BENCHMARKS / "results" / "feedback-heldout.json"
DRAW_SEED = 29  # the held-out draw; fixed so that every run of this script scores the same texts


def heldout_texts(cell: Cell, per_label: int) -> list[Example]:
    """A label-balanced sample of the training split outside every silo of the cell's seed."""
    data = load_experiment_data(cell.config, resolve_models=False)
    in_silos = {ex.text for silo in data.silos for ex in silo.train + silo.validation}
    pool = [ex for ex in load_split(data.task, "train", data.data_dir) if ex.text not in in_silos]
    rng = random.Random(f"{DRAW_SEED}-{cell.task}-{cell.seed}")
    sample = []
    for label in range(data.task.num_labels):
        of_label = [ex for ex in pool if ex.label == label]
        sample += rng.sample(of_label, min(per_label, len(of_label)))
    return sample


def score_cell(cell: Cell, texts: list[Example]) -> dict:
    """Accuracy of each client's model after the last round on ``texts``."""
    config, task = cell.config, load_task(cell.config.task)
    last = config.rounds if method_spec(config.method).server else 0
    clients = {}
    for k in range(config.clients.num_clients):
        assigned = silo_assignment(config, k)
        state = cell.path / "clients" / assigned.name / f"model-r{last}.safetensors"
        classifier = build_classifier(assigned.model, task, config.clients.lora_rank, assigned.seed,
                                      device=config.clients.device,
                                      lora_target_modules=config.clients.lora_target_modules)
        classifier.load(state)
        clients[assigned.name] = accuracy(classifier, texts)
    return {"heldout_acc_mean": statistics.mean(clients.values()), "clients": clients,
            "examples": len(texts), "round": last}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", default=str(BENCHMARKS / "feedback.yaml"))
    parser.add_argument("--results", default=str(BENCHMARKS / "results" / "feedback"))
    parser.add_argument("--only", action="append", default=[], help="cells matching this glob (repeatable)")
    parser.add_argument("--per-label", type=int, default=100)
    args = parser.parse_args()
    cells = expand(load_spec(args.spec))
    cells = [c for c, chosen in zip(cells, selected(cells, args.only), strict=True)
             if chosen and method_spec(c.config.method).clients and (c.path / "clients").is_dir()
             and cell_status(c, Path(args.results)).state == "done"]
    results = json.loads(OUT.read_text(encoding="utf-8")) if OUT.is_file() else {}
    drawn: dict[tuple[str, int], list[Example]] = {}
    for cell in cells:
        texts = drawn.setdefault((cell.task, cell.seed), heldout_texts(cell, args.per_label))
        results[cell_key(cell)] = score_cell(cell, texts) | {"machine": machine_name(),
                                                             "command": shlex.join(["python", *sys.argv])}
        print(cell_key(cell), f"{100 * results[cell_key(cell)]['heldout_acc_mean']:.1f}", flush=True)
    write_atomic(OUT, json.dumps(dict(sorted(results.items())), indent=2) + "\n")


if __name__ == "__main__":
    main()
