"""Benchmark: one AdamW step per implementation, and a client's round 0 with each.

PyTorch's AdamW on a CPU updates tensor by tensor unless asked for ``foreach`` or ``fused``;
``crosslm.models.training.make_optimizer`` asks for ``fused``. This times one step of each on
what the round trains (a MiniLM-L6 client: all 22.7M parameters, embeddings included; Gemma 3
270M's generator and classifier LoRA adapters), and round 0's local training of the default
run's first client (SST-2, 128 private examples, 20 epochs at most, early stopping) with the
per-tensor and the fused step. From the repo root:

    .venv/bin/python benchmarks/optimizer_step.py [--out benchmarks/results/optimizer-step.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from crosslm.bench.results import machine_name
from crosslm.models import training
from crosslm.models.classifier import build_classifier
from crosslm.models.llm import ServerLLM
from crosslm.models.training import TrainItem, logit_adjusted, train_classifier
from crosslm.tasks.data import load_split
from crosslm.tasks.partition import partition
from crosslm.tasks.spec import load_task

IMPLEMENTATIONS = {"per-tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
STEPS = 20


def step_ms(parameters: list[torch.nn.Parameter], options: dict) -> float:
    """Median milliseconds of an AdamW step over ``STEPS``, on fixed random gradients."""
    for p in parameters:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, **options)
    optimizer.step()  # the state's first allocation
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 1)


def round_zero_seconds(task, fused: bool) -> dict:
    """The default run's first client's round 0, with the fused or the per-tensor AdamW step."""
    train = load_split(task, "train", Path(os.environ["CROSSLM_DATA_DIR"]))
    client = partition(train, task.num_labels, num_clients=4, train_per_client=128,
                       validation_per_client=32)[0]
    items = logit_adjusted([TrainItem(ex.text, ex.label) for ex in client.train], task.num_labels)
    slm = build_classifier("minilm-l6", task, lora_rank=8, seed=0)
    training.FUSED_ADAMW_DEVICES = ("cpu", "cuda") if fused else ()
    start = time.perf_counter()
    metrics = train_classifier(slm, items, lr=2e-4, epochs=20, batch_size=16, seed=0,
                               validation=client.validation, patience=3)
    return {"seconds": round(time.perf_counter() - start, 1), "epochs_run": metrics["epochs_run"],
            "val_balanced_accuracy": round(metrics["val_balanced_accuracy"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/optimizer-step.json"))
    args = parser.parse_args()
    task = load_task("sst2")
    llm = ServerLLM("gemma3-270m", task, 8, 0)
    slm = build_classifier("minilm-l6", task, 8, 0)
    trained = {"minilm-l6 client (all parameters)": slm.trainable_parameters(),
               "gemma3-270m generator LoRA (S3)": llm.generator.parameters(),
               "gemma3-270m classifier LoRA and head (S5)": llm.classifier.trainable_parameters()}
    steps = {name: {"parameters": sum(p.numel() for p in params),
                    **{impl: step_ms(params, options) for impl, options in IMPLEMENTATIONS.items()}}
             for name, params in trained.items()}
    print(json.dumps(steps, indent=2), flush=True)
    round_zero = {"per-tensor": round_zero_seconds(task, fused=False),
                  "fused": round_zero_seconds(task, fused=True)}
    result = {"machine": f"{machine_name()}, {torch.backends.cpu.get_cpu_capability()}",
              "command": "benchmarks/optimizer_step.py", "threads": torch.get_num_threads(),
              "note": "step: median ms of one AdamW step over 20; round 0: one client's local training "
                      "(MiniLM-L6, SST-2 client 0 of the default partition), seconds",
              "step_ms": steps, "round_zero_client_0": round_zero}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(round_zero, indent=2))


if __name__ == "__main__":
    main()
