"""Benchmark: what DP-SGD costs per epoch of a MiniLM-L6 client, against plain training.

One epoch over the first ``--examples`` SST-2 training texts at batch 16, with
``train_classifier`` and with ``train_classifier_dp`` (noise multiplier 1), median of
``--repeats`` tries each. Compare commits by running it under
``PYTHONPATH=<checkout>/src``. From the repo root:

    .venv/bin/python benchmarks/dp_step.py [--examples 64] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from crosslm.models.classifier import build_classifier
from crosslm.models.training import TrainItem, train_classifier
from crosslm.privacy.accounting import DPPlan
from crosslm.privacy.dp_training import train_classifier_dp
from crosslm.tasks.spec import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(os.environ.get("CROSSLM_DATA_DIR", "../shared/data")) / "sst2" / "train.jsonl"
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()[:args.examples]]
    items = [TrainItem(r["text"], r["label"]) for r in rows]
    task = load_task("sst2")
    kinds = {
        "plain": lambda c: train_classifier(c, items, lr=2e-4, epochs=1, batch_size=16, seed=0),
        "dp": lambda c: train_classifier_dp(c, items, [], plan=DPPlan(1.0, 1.0, 1e-5, "rdp", 0.0), lr=2e-4,
                                            epochs=1, batch_size=16, seed=0),
    }
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(args.repeats):
        for kind, train in kinds.items():  # alternated, so drifting load hits both alike
            classifier = build_classifier("minilm-l6", task, 8, seed=0)
            start = time.perf_counter()
            train(classifier)
            seconds[kind].append(time.perf_counter() - start)
    medians = {kind: statistics.median(s) for kind, s in seconds.items()}
    figures = {"examples": args.examples, "threads": args.threads, "seconds": seconds,
               "median_seconds": medians, "dp_over_plain": medians["dp"] / medians["plain"]}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
