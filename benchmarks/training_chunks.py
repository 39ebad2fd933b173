"""Benchmark: training's forward passes in length-sorted chunks of a batch (``models/training.py``).

A batch is padded to its longest text. ``backward_in_chunks`` runs each batch as chunks of at
most ``CHUNK_ROWS`` texts sorted by length, accumulating the batch's gradient, so each chunk is
padded only to its own longest text. Fewer rows per pass pad less but use smaller matrix
products; this measures where that pays, on the real models and SST-2 training texts, for
each chunk size in turn (the whole batch = no chunking), twice, alternating. From the repo root:

    .venv/bin/python benchmarks/training_chunks.py [--out benchmarks/results/training-chunks.json]

Rows: the SLM's one epoch (C1: MiniLM-L6 on 224 texts, SmolLM2-135M on 64, batch 16) and
S5 (Gemma 3 270M's classifier adapter with its KL term, 32 texts, one epoch, batch 8; the
base model's distributions are computed in the first pass and reused, as in S5's second epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from crosslm.models import training
from crosslm.models.classifier import build_classifier
from crosslm.models.llm import ServerLLM
from crosslm.models.training import TrainItem, length_chunks, train_classifier
from crosslm.tasks.data import load_split
from crosslm.tasks.spec import load_task

REPEATS = 2


def padding_ratio(tokenizer, items: list[TrainItem], batch_size: int, rows: int) -> float:
    """Tokens computed over real tokens, for the epoch's batches in order."""
    lengths = {item.text: len(tokenizer(item.text).input_ids) for item in items}
    real = sum(lengths.values())
    padded = 0
    for start in range(0, len(items), batch_size):
        for chunk in length_chunks(items[start:start + batch_size], rows):
            padded += len(chunk) * max(lengths[item.text] for item in chunk)
    return padded / real


def time_rows(name: str, run, rows_options: list[int]) -> dict[str, float]:
    """Seconds per chunk size (median of ``REPEATS``, alternating sizes between repeats)."""
    seconds: dict[int, list[float]] = {rows: [] for rows in rows_options}
    run()  # warm-up: allocator, lazy imports, S5's base distributions
    for _ in range(REPEATS):
        for rows in rows_options:
            training.CHUNK_ROWS = rows
            start = time.perf_counter()
            run()
            seconds[rows].append(time.perf_counter() - start)
            print(name, rows, round(seconds[rows][-1], 2), flush=True)
    return {str(rows): round(statistics.median(times), 2) for rows, times in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/training-chunks.json"))
    args = parser.parse_args()
    task = load_task("sst2")
    train = load_split(task, "train", Path(os.environ["CROSSLM_DATA_DIR"]))
    items = [TrainItem(ex.text, ex.label) for ex in train[:224]]
    rows: dict[str, dict] = {}
    for model_name, count in (("minilm-l6", 224), ("smollm2-135m", 64)):
        slm = build_classifier(model_name, task, 8, 0)
        options = [16, 8, 4, 2]
        epoch = lambda slm=slm, count=count: train_classifier(  # noqa: E731
            slm, items[:count], lr=5e-5, epochs=1, batch_size=16, seed=0)
        rows[f"{model_name} epoch, {count} texts, batch 16"] = {
            "seconds": time_rows(model_name, epoch, options),
            "padding": {str(r): round(padding_ratio(slm.tokenizer, items[:count], 16, r), 2)
                        for r in options}}
    llm = ServerLLM("gemma3-270m", task, 8, 0)
    forward = llm.kl_regularised_forward(positions=8, weight=1.0)
    s5 = lambda: train_classifier(llm.classifier, items[:32], lr=1e-4, epochs=1,  # noqa: E731
                                  batch_size=8, seed=0, distill_weight=1.0, forward=forward)
    rows["gemma3-270m S5, 32 texts, batch 8"] = {
        "seconds": time_rows("s5", s5, [8, 4, 2]),
        "padding": {str(r): round(padding_ratio(llm.tokenizer, items[:32], 8, r), 2) for r in (8, 4, 2)}}
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                         f"{torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}",
              "command": "benchmarks/training_chunks.py", "repeats": REPEATS,
              "note": "seconds by texts per forward pass (the batch size: no chunking); padding: tokens "
                      "computed over real tokens (text only, without the prompt template)",
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
