"""Benchmark: round 0 of a label-skewed silo's SLM, by how its training corrects the skew.

Issue #29 asks that no client model collapse onto one label in ``local-only``. Each silo of
the feedback bench (four MiniLM-L6 clients x 128 examples, 32 for validation, Dirichlet
alpha = 1; seeds 0-2) trains its round 0 as a client does (``clients.local_training``,
patience, balanced-accuracy early stopping on its validation split), once per remedy:

- ``weighted``: each example's loss weighted by its silo's inverse label frequency (the
  remedy before this benchmark);
- ``logit-adjusted-1``, ``logit-adjusted-3``: the loss on the logits plus tau x the log of the
  silo's label prior (``crosslm.models.training.logit_adjusted``), tau = 1 or 3.

Each model is scored on 400 real training texts that are in no silo (never the test split):
accuracy, balanced accuracy and the share of predictions on its most predicted label
(collapsed: at least 0.95). From the repo root:

    .venv/bin/python benchmarks/label_skew.py --tasks sst2 [--out benchmarks/results/label-skew.json]

Rows are appended per task to ``--out`` (a task already there is replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from crosslm.config import ClientsConfig
from crosslm.models.classifier import build_classifier
from crosslm.models.training import (
    TrainItem,
    balanced_accuracy,
    logit_adjusted,
    prediction_figures,
    train_classifier,
)
from crosslm.tasks.data import load_split
from crosslm.tasks.partition import partition
from crosslm.tasks.spec import load_task

CLIENTS, EXAMPLES, VALIDATION, HELD_OUT = 4, 128, 32, 400
REMEDIES = ("weighted", "logit-adjusted-1", "logit-adjusted-3")


def inverse_frequency_weighted(items: list[TrainItem]) -> list[TrainItem]:
    """Each label's examples carry the same total weight; the mean weight stays 1."""
    counts = Counter(item.label for item in items)
    return [replace(item, weight=len(items) / (len(counts) * counts[item.label])) for item in items]


def with_remedy(items: list[TrainItem], remedy: str, num_labels: int) -> list[TrainItem]:
    if remedy == "weighted":
        return inverse_frequency_weighted(items)
    return logit_adjusted(items, num_labels, tau=float(remedy.rsplit("-", 1)[1]))


def task_rows(task_name: str, seeds: list[int]) -> list[dict]:
    task = load_task(task_name)
    pool = load_split(task, "train", Path(os.environ["CROSSLM_DATA_DIR"]))
    budget, patience = ClientsConfig().local_training, ClientsConfig().patience
    rows = []
    for seed in seeds:
        silos = partition(pool, task.num_labels, CLIENTS, EXAMPLES, VALIDATION, seed=seed)
        in_silos = {ex.text for silo in silos for ex in silo.train + silo.validation}
        held_out = [ex for ex in pool[-3000:] if ex.text not in in_silos][:HELD_OUT]
        for k, silo in enumerate(silos):
            items = [TrainItem(ex.text, ex.label) for ex in silo.train]
            for remedy in REMEDIES:
                started = time.perf_counter()
                classifier = build_classifier("minilm-l6", task, 8, seed + k)
                metrics = train_classifier(
                    classifier, with_remedy(items, remedy, task.num_labels), lr=budget.lr,
                    epochs=budget.epochs, batch_size=budget.batch_size, seed=seed + k,
                    validation=silo.validation, patience=patience)
                acc, majority_share = prediction_figures(classifier, held_out)
                balanced = balanced_accuracy(classifier, held_out)
                rows.append({
                    "task": task_name, "seed": seed, "client": k, "remedy": remedy,
                    "label_counts": dict(sorted(Counter(ex.label for ex in silo.train).items())),
                    "accuracy": round(acc, 4), "balanced_accuracy": round(balanced, 4),
                    "majority_share": round(majority_share, 4), "best_epoch": metrics["best_epoch"],
                    "epochs_run": metrics["epochs_run"], "seconds": round(time.perf_counter() - started, 1)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per task and remedy: means over the silos, and how many collapsed."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        for remedy in REMEDIES:
            group = [r for r in rows if r["task"] == task and r["remedy"] == remedy]
            out.append({"task": task, "remedy": remedy, "models": len(group),
                        **{f"{key}_mean": round(statistics.mean(r[key] for r in group), 4)
                           for key in ("accuracy", "balanced_accuracy")},
                        "collapsed": sum(r["majority_share"] >= 0.95 for r in group)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "trec", "ag_news"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/label-skew.json"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("LABEL_SKEW_THREADS", torch.get_num_threads())))
    old = json.loads(args.out.read_text(encoding="utf-8"))["rows"] if args.out.is_file() else []
    rows = [r for r in old if r["task"] not in args.tasks]
    for task in args.tasks:
        rows += task_rows(task, args.seeds)
        result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                             f"torch {torch.__version__}",
                  "command": "benchmarks/label_skew.py --tasks <task>; each task's rows from its own run",
                  "summary": summary(rows), "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
