"""Round 0, run once and shared by the bench cells that would each compute the same one.

In a CrossLM or synthetic-no-feedback cell, round 0 is local training of every SLM on its private
data and the evaluation of the LLM before any enhancement: nothing in it depends on the method,
nor on the settings of S1-S5 (the server state saved after it holds no feedback). Every later round seeds
its own random generators, so a cell resumed from a copy of that round ends as a cell run from
scratch does (tests/test_bench.py checks it). The runner keeps one such round 0 per distinct config
under ``<output_dir>/shared-round-zero/`` and starts each new cell from a copy, which saves the
most expensive round of all but the first cell of each task, setting and seed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import yaml

from crosslm.bench.spec import Cell
from crosslm.config import (
    ENHANCEMENT_SETTINGS,
    LLM_TRAINING_SETTINGS,
    ExperimentConfig,
    config_from_layers,
    without_settings,
)
from crosslm.methods import method_spec
from crosslm.rundir import write_atomic

SHARED_FOLDER = "shared-round-zero"
NOT_IN_ROUND_ZERO = (*ENHANCEMENT_SETTINGS, *LLM_TRAINING_SETTINGS)


def shared_round_zero(cell: Cell, output_dir: Path) -> ExperimentConfig | None:
    """The config of the round-0 run this cell can start from; None if it must run its own.

    Flower's simulation keys client state by run, so only in-process cells share.
    """
    config = cell.config
    if method_spec(config.method).rounds != "generate" or config.engine != "in-process":
        return None
    key = without_settings(config.model_dump(), NOT_IN_ROUND_ZERO)
    key.update(method="crosslm", rounds=0, output_dir="")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    folder = output_dir / SHARED_FOLDER / cell.task / cell.setting / f"seed-{cell.seed}-{digest}"
    return config_from_layers({**key, "output_dir": str(folder)})  # defaults for what round 0 ignores


def start_from_shared_round_zero(cell: Cell, shared: ExperimentConfig,
                                 progress: Callable[[str], None]) -> None:
    """Copy round 0 of ``shared`` (running it first if it is not there yet) into the new cell,
    which then resumes after round 0 like any other stopped run."""
    from crosslm.experiment import run_experiment

    source = Path(shared.output_dir)
    if not (source / "summary.json").is_file():
        progress(f"round 0, shared with the cells like this one, in {source}")
        run_experiment(shared, "overwrite" if (source / "config.yaml").is_file() else "new", progress)
    shutil.copytree(source, cell.path, dirs_exist_ok=True)
    (cell.path / "summary.json").unlink()
    own = cell.config.model_copy(update={"rounds": 0}).model_dump()
    write_atomic(cell.path / "config.yaml", yaml.safe_dump(own, sort_keys=False))
