"""Benchmark: each phase of a round on the real models, on fixed small inputs, timed in this process.

Run it under two checkouts to compare them on one machine (the sst2_default run takes
15 minutes; this takes about 3). From the repo root, for this checkout:

    .venv/bin/python benchmarks/phases_ab.py --label new --out runs/phases-new.json

and for another one, e.g. a worktree of an older commit at ../old:

    PYTHONPATH=../old/src .venv/bin/python benchmarks/phases_ab.py --label old --out runs/phases-old.json

``--dtype float32`` or ``bfloat16`` sets the models' numeric type (the LLM's weights, the
encoder's autocast) instead of ``auto``, to compare the two on one CPU.

Only APIs that both sides of the issue-28 comparison have are used.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import crosslm
from crosslm.config import ExperimentConfig
from crosslm.evaluate import load_arc_easy, load_wikitext, multiple_choice_accuracy, perplexity, task_accuracy
from crosslm.models.classifier import build_classifier
from crosslm.models.llm import ServerLLM
from crosslm.models.training import TrainItem, accuracy, train_classifier
from crosslm.server import Server
from crosslm.synthetic import ScoredSample
from crosslm.tasks.data import load_split
from crosslm.tasks.spec import load_task


def timed(results: dict, name: str, run) -> object:
    start = time.perf_counter()
    value = run()
    results[name] = {"seconds": round(time.perf_counter() - start, 2)}
    if isinstance(value, float | int):
        results[name]["value"] = value
    print(name, results[name], flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    args = parser.parse_args()
    data = Path(os.environ["CROSSLM_DATA_DIR"])
    task = load_task("sst2")
    test, train = load_split(task, "test", data), load_split(task, "train", data)
    results: dict = {}
    slm = build_classifier("minilm-l6", task, 8, 0, dtype=args.dtype)
    timed(results, "slm_test_accuracy_872", lambda: accuracy(slm, test))
    items = [TrainItem(ex.text, ex.label) for ex in train[:224]]
    timed(results, "slm_train_224x1", lambda: train_classifier(slm, items, lr=5e-5, epochs=1, batch_size=16,
                                                               seed=0))
    llm = ServerLLM("gemma3-270m", task, 8, 0, dtype=args.dtype)
    timed(results, "llm_task_accuracy_256",
          lambda: task_accuracy(llm.classifier, test[:256], True)["accuracy_calibrated"])
    model = llm.language_model()
    timed(results, "wikitext2_ppl_2048", lambda: perplexity(model, llm.tokenizer, load_wikitext(data), 2048))
    arc = load_arc_easy(data)[:50]
    timed(results, "arc_easy_acc_50", lambda: multiple_choice_accuracy(model, llm.tokenizer, arc))
    config = ExperimentConfig.model_validate({"generation": {"samples_per_label": 16}})
    server = Server(config, task, llm)
    candidates = timed(results, "s1_generate_32", lambda: server.generate(1))[0]
    scored = [ScoredSample(ex.text, ex.label, 0.9, [0.9, 0.1] if ex.label == 0 else [0.1, 0.9], 0.0)
              for ex in train[300:332]]
    timed(results, "s3_filtered_sft_32", lambda: server.improve_generator(scored, 1))
    timed(results, "s5_enhance_32x2", lambda: server.enhance(scored, 1))
    results["candidates"] = len(candidates)
    result = {"label": args.label, "dtype": args.dtype, "crosslm_file": crosslm.__file__,
              "torch": torch.__version__, "phases": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
