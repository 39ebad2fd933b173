"""The record of each finished cell, kept beside the aggregated results so it can be committed.

A cell's run directory (adapters, checkpoints, texts) stays on the machine that ran it. What the
results are made of is packed, when the results are aggregated, into one gzipped JSON file,
``RESULTS/cells/TASK/SETTING/METHOD/seed-N.json.gz``: the text of ``config.yaml``, the rows of
``metrics.jsonl``, ``summary.json``, ``bench.json`` and each round's scored samples without their
texts (``crosslm.rundir.pack``). A record with the spec's config counts as a done cell on any
machine, so a large matrix can be completed over several machines or fresh checkouts; the tables
and plots are made from records only.

The functions below read a cell's state from either place: its run directory or its record.
Records kept before they were packed, folders ``RESULTS/cells/TASK/SETTING/METHOD/seed-N/`` holding
those files, are read as run directories and packed by the next aggregation (``migrate_record``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from crosslm.bench.spec import Cell
from crosslm.rundir import PACKED_SUFFIX, is_packed, load_metrics, load_samples, pack, read_packed

BENCH_FILE = "bench.json"  # the runner's wall seconds over all attempts of a cell, and its machine
# what the plots read of a scored sample; the text stays in the run directory
SAMPLE_FIELDS = ("label", "soft_label", "quality", "accepted")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _bench(folder: Path) -> dict:
    return (read_packed(folder).get("bench", {}) if is_packed(folder) else _read_json(folder / BENCH_FILE))


def measured_seconds(folder: Path) -> float | None:
    return _bench(folder).get("seconds")


def measured_on(folder: Path) -> str | None:
    """The machine that ran the cell; None for cells recorded before bench.json kept it."""
    return _bench(folder).get("machine")


def has_config(folder: Path) -> bool:
    """Whether ``folder`` (a run directory or a record) holds a cell's config."""
    return folder.is_file() if is_packed(folder) else (folder / "config.yaml").is_file()


def config_text(folder: Path) -> str:
    """The cell's config.yaml, from its run directory or its record."""
    if is_packed(folder):
        return read_packed(folder)["config"]
    return (folder / "config.yaml").read_text(encoding="utf-8")


def is_finished(folder: Path) -> bool:
    """Whether the cell has its summary: every round ran."""
    return "summary" in read_packed(folder) if is_packed(folder) else (folder / "summary.json").is_file()


def record_path(cell: Cell, results: Path) -> Path:
    return results / "cells" / cell.task / cell.setting / cell.method / f"seed-{cell.seed}{PACKED_SUFFIX}"


def legacy_record_path(cell: Cell, results: Path) -> Path:
    """Where the record was kept before records were packed: a folder of the run's files."""
    return results / "cells" / cell.task / cell.setting / cell.method / f"seed-{cell.seed}"


def find_record(cell: Cell, results: Path) -> Path:
    """The cell's record: packed, else a folder in the former layout (read as a run directory)."""
    packed, legacy = record_path(cell, results), legacy_record_path(cell, results)
    return legacy if not packed.is_file() and (legacy / "config.yaml").is_file() else packed


def pack_record(run: Path) -> bytes:
    """What the results need of a finished run directory (or of a record folder in the former
    layout, which held the same files), packed into one file."""
    samples = {str(round_): [{k: s[k] for k in SAMPLE_FIELDS} for s in rows]
               for round_, rows in load_samples(run).items()}
    return pack({"config": (run / "config.yaml").read_text(encoding="utf-8"),
                 "metrics": load_metrics(run),
                 "summary": json.loads((run / "summary.json").read_text(encoding="utf-8")),
                 "bench": _read_json(run / BENCH_FILE),
                 "samples": samples})


def keep_record(cell: Cell, results: Path) -> Path:
    """Pack a finished cell's record from its run directory, replacing an older one whole."""
    return _write_record(cell, results, cell.path)


def migrate_record(cell: Cell, results: Path) -> Path:
    """Pack a record kept in the former folder layout, then remove the folder."""
    target = _write_record(cell, results, legacy_record_path(cell, results))
    shutil.rmtree(legacy_record_path(cell, results))
    return target


def _write_record(cell: Cell, results: Path, source: Path) -> Path:
    target = record_path(cell, results)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial")
    staging.write_bytes(pack_record(source))
    staging.replace(target)
    return target
