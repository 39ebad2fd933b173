"""The record of each finished cell, kept beside the aggregated results so it can be committed.

A cell's run directory (adapters, checkpoints, texts) stays on the machine that ran it. What the
results are made of is copied, when the results are aggregated, to
``RESULTS/cells/TASK/SETTING/METHOD/seed-N/``: ``config.yaml``, ``metrics.jsonl``,
``summary.json``, ``bench.json`` and each round's scored samples without their texts. A record
with the spec's config counts as a done cell on any machine, so a large matrix can be completed
over several machines or fresh checkouts; the tables and plots are made from records only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from crosslm.bench.spec import Cell
from crosslm.rundir import load_samples, write_atomic

BENCH_FILE = "bench.json"  # the runner's wall seconds over all attempts of a cell, and its machine
RECORD_FILES = ("config.yaml", "metrics.jsonl", "summary.json", BENCH_FILE)
# what the plots read of a scored sample; the text stays in the run directory
SAMPLE_FIELDS = ("label", "soft_label", "quality", "accepted")


def _bench(folder: Path) -> dict:
    bench_file = folder / BENCH_FILE
    return json.loads(bench_file.read_text(encoding="utf-8")) if bench_file.is_file() else {}


def measured_seconds(folder: Path) -> float | None:
    return _bench(folder).get("seconds")


def measured_on(folder: Path) -> str | None:
    """The machine that ran the cell; None for cells recorded before bench.json kept it."""
    return _bench(folder).get("machine")


def record_path(cell: Cell, results: Path) -> Path:
    return results / "cells" / cell.task / cell.setting / cell.method / f"seed-{cell.seed}"


def keep_record(cell: Cell, results: Path) -> Path:
    """Copy a finished cell's record from its run directory, replacing an older one whole."""
    target = record_path(cell, results)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in RECORD_FILES:
        shutil.copyfile(cell.path / name, staging / name)
    for round_, samples in load_samples(cell.path).items():
        lines = "".join(json.dumps({k: s[k] for k in SAMPLE_FIELDS}) + "\n" for s in samples)
        (staging / "rounds" / f"{round_:03d}").mkdir(parents=True)
        write_atomic(staging / "rounds" / f"{round_:03d}" / "samples.jsonl", lines)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
