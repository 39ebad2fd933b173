"""The Python entry point for notebooks and scripts: ``crosslm.run`` does what ``crosslm run`` does.

``configure`` builds a checked config from a YAML file, a config object or the defaults, with
settings given by their dotted names (as ``--set`` takes them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

from crosslm.config import ExperimentConfig, load_config
from crosslm.experiment import run_experiment
from crosslm.rounds import Progress
from crosslm.rundir import Mode


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """Every setting of a config dump by its dotted name."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def configure(config: str | Path | ExperimentConfig | None = None,
              settings: Mapping[str, object] | None = None) -> ExperimentConfig:
    """``config`` (a YAML path, a config, or None for the defaults) with ``settings`` over it, e.g.
    ``{"rounds": 1, "clients.slm": ["minilm-l6"]}``; a bad name or value raises CrossLMError."""
    overrides = [f"{key}={json.dumps(value, default=str)}" for key, value in (settings or {}).items()]
    if isinstance(config, ExperimentConfig):  # validated again with the settings, as one layer
        overrides = [f"{key}={json.dumps(value)}" for key, value in _leaves(config.model_dump()).items()
                     ] + overrides
        config = None
    return load_config(config, overrides)


def _print_progress() -> Progress:
    start = time.perf_counter()
    return lambda message: print(f"{time.perf_counter() - start:7.1f}s {message}", flush=True)


def run(config: str | Path | ExperimentConfig | None = None, settings: Mapping[str, object] | None = None,
        *, mode: Mode = "new", verbose: bool = False, progress: Progress | None = None) -> dict:
    """Run an experiment on this machine and return its summary (what ``crosslm run`` tabulates).

    ``mode``: "new" (refuses an existing run directory), "resume" or "overwrite". Progress lines are
    printed unless ``progress`` takes them; other libraries' output goes to the run directory's
    third_party.log unless ``verbose``.
    """
    summary, _ = run_experiment(configure(config, settings), mode, progress or _print_progress(),
                                verbose=verbose)
    return summary
