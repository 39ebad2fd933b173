"""Probe: does a SmolLM2-135M LoRA learn at the DP defaults' learning rate (AdamW 1e-2)?

The DP defaults (``privacy.local_training``, ``privacy.public_training``) were chosen for an
encoder's linear head. This trains a SmolLM2 LoRA without DP on 64 label-balanced SST-2
training texts (3 epochs, batch 32; shuffle seeds 0 and 1) at 1e-2, 1e-3 and 2e-4 (the
non-private client rate) and scores 32 other training texts; no test text is read. From the repo root:

    .venv/bin/python benchmarks/lora_lr.py [--out benchmarks/results/lora-lr.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from crosslm.models.classifier import build_classifier
from crosslm.models.training import TrainItem, accuracy, train_classifier
from crosslm.tasks.data import load_split
from crosslm.tasks.spec import load_task

RATES = (1e-2, 1e-3, 2e-4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lora-lr.json"))
    args = parser.parse_args()
    task = load_task("sst2")
    train = load_split(task, "train", Path(os.environ["CROSSLM_DATA_DIR"]))[1000:]
    by_label = [[ex for ex in train if ex.label == label][:48] for label in (0, 1)]
    items = [TrainItem(ex.text, ex.label) for group in by_label for ex in group[:32]]
    held_out = [ex for group in by_label for ex in group[32:]]
    rows = []
    for lr in RATES:
        for seed in (0, 1):
            classifier = build_classifier("smollm2-135m", task, 8, 0)
            metrics = train_classifier(classifier, items, lr=lr, epochs=3, batch_size=32, seed=seed)
            rows.append({"lr": lr, "seed": seed, "train_loss": round(metrics["train_loss"], 3),
                         "held_out_accuracy": round(accuracy(classifier, held_out), 3)})
            print(rows[-1], flush=True)
    result = {"machine": f"{os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}, "
                         f"torch {torch.__version__}", "command": "benchmarks/lora_lr.py", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
