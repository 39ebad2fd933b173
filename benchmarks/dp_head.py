"""Benchmark: what a DP client SLM learns in round 0, the recipe ``privacy.local_training`` sets.

A MiniLM-L6 client trains on ``--examples`` SST-2 training texts with
``train_classifier_dp`` (what DP-SGD trains: ``TextClassifier.dp_parameters``, the head)
at ``privacy.local_training``'s budget, with the noise planned for each target ε over
round 0 alone; accuracy is measured on 500 other training texts (rows 5000-5499), not on
the test split. ``none``: the same budget without noise or clipping. From the repo root:

    .venv/bin/python benchmarks/dp_head.py [--examples 128] [--epsilons none 8 3 1]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from crosslm.config import DP_LOCAL_TRAINING
from crosslm.models.classifier import build_classifier
from crosslm.models.training import TrainItem
from crosslm.privacy.accounting import DPPlan, Phase, plan_noise, sample_rate, steps_per_epoch
from crosslm.privacy.dp_training import train_classifier_dp
from crosslm.tasks.spec import load_task

HELD_OUT = slice(5000, 5500)
DELTA = 1e-5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--epsilons", nargs="+", default=["none", "8", "3", "1"])
    args = parser.parse_args()
    data = Path(os.environ.get("CROSSLM_DATA_DIR", "../shared/data")) / "sst2" / "train.jsonl"
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    private = [TrainItem(r["text"], r["label"]) for r in rows[:args.examples]]
    held_out = rows[HELD_OUT]
    budget = DP_LOCAL_TRAINING
    q = sample_rate(budget.batch_size, len(private))
    phases = [Phase(q, budget.epochs * steps_per_epoch(budget.batch_size, len(private)))]
    results = []
    for epsilon in args.epsilons:
        sigma, clip = (0.0, 1e6) if epsilon == "none" else (plan_noise(phases, float(epsilon), DELTA), 1.0)
        classifier = build_classifier("minilm-l6", load_task("sst2"), 8, seed=0)
        train_classifier_dp(classifier, private, [], plan=DPPlan(sigma, clip, DELTA, "rdp", 0.0),
                            lr=budget.lr, epochs=budget.epochs, batch_size=budget.batch_size, seed=0)
        predicted = classifier.predict_proba([r["text"] for r in held_out]).argmax(-1)
        accuracy = (predicted == torch.tensor([r["label"] for r in held_out])).float().mean().item()
        results.append({"epsilon": epsilon, "noise_multiplier": sigma, "held_out_accuracy": accuracy})
        print(json.dumps(results[-1]), flush=True)
    summary = {"examples": args.examples, "budget": budget.model_dump(), "results": results}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
