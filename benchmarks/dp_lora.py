"""Benchmark: the learning rate of a DP SmolLM2-135M client (its LoRA), chosen on held-out texts.

Replays what a causal-LM client does in the heterogeneous privacy run at ε = 8 (round 0 with
DP-SGD at ``privacy.local_training``'s budget, then one later round: its DP-SGD steps and the
noise-free pass on public samples at ``privacy.public_training``'s budget), with the noise the
run plans for round 0 and three rounds, at each learning rate. The private records are 128
SST-2 training texts; the public samples are 128 other, label-balanced training texts (a
stand-in for the accepted synthetic samples); accuracy is measured on 200 further training
texts (rows 5000-5199), never on the test split. From the repo root:

    .venv/bin/python benchmarks/dp_lora.py [--rates 1e-3 2e-4 1e-2] [--out benchmarks/results/dp-lora.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from crosslm.config import DP_LOCAL_TRAINING, DP_PUBLIC_TRAINING, DP_ROUND_TRAINING, TrainConfig
from crosslm.models.classifier import build_classifier
from crosslm.models.training import TrainItem, accuracy
from crosslm.privacy.accounting import DPPlan, Phase, plan_noise, training_phase
from crosslm.privacy.dp_training import train_classifier_dp, train_on_public
from crosslm.tasks.data import load_split
from crosslm.tasks.spec import load_task

EPSILON, DELTA, ROUNDS, PRIVATE, PUBLIC_PER_LABEL = 8.0, 1e-5, 3, 128, 64
HELD_OUT = slice(5000, 5200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", nargs="+", type=float, default=[1e-3, 2e-4, 1e-2])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dp-lora.json"))
    args = parser.parse_args()
    task = load_task("sst2")
    train = load_split(task, "train", Path(os.environ["CROSSLM_DATA_DIR"]))
    private = [TrainItem(ex.text, ex.label) for ex in train[:PRIVATE]]
    pool = train[1000:5000]
    public = [TrainItem(ex.text, ex.label) for label in (0, 1)
              for ex in [e for e in pool if e.label == label][:PUBLIC_PER_LABEL]]
    held_out = train[HELD_OUT]
    later = training_phase(DP_ROUND_TRAINING, PRIVATE)
    sigma = plan_noise([training_phase(DP_LOCAL_TRAINING, PRIVATE),
                        Phase(later.sample_rate, later.steps * ROUNDS)], EPSILON, DELTA)
    plan = DPPlan(sigma, 1.0, DELTA, "rdp", EPSILON)
    rows = []
    for lr in args.rates:
        started = time.perf_counter()
        classifier = build_classifier(args.model, task, 8, seed=0)
        row = {"lr": lr, "before": accuracy(classifier, held_out)}
        for name, budget, public_items in (("round_0", DP_LOCAL_TRAINING, []),
                                           ("round_1_dp", DP_ROUND_TRAINING, public)):
            train_classifier_dp(classifier, private, public_items, plan=plan, lr=lr, epochs=budget.epochs,
                                batch_size=budget.batch_size, seed=0, distill_weight=0.0)
            row[name] = accuracy(classifier, held_out)
        metrics = train_on_public(classifier, public, seed=0, budget=TrainConfig(
            lr=lr, epochs=DP_PUBLIC_TRAINING.epochs, batch_size=DP_PUBLIC_TRAINING.batch_size))
        row |= {"round_1_public": accuracy(classifier, held_out),
                "public_train_loss": round(metrics["public_train_loss"], 3),
                "seconds": round(time.perf_counter() - started, 1)}
        rows.append({k: round(v, 3) if isinstance(v, float) and k != "lr" else v for k, v in row.items()})
        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": f"{os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}, "
                         f"torch {torch.__version__}",
              "command": "benchmarks/dp_lora.py --rates " + " ".join(str(r) for r in args.rates),
              "model": args.model, "epsilon": EPSILON, "noise_multiplier": round(sigma, 4), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
