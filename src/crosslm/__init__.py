"""crosslm: mutual enhancement of a server LLM and client SLMs (CrossLM).

The Python API, for notebooks and scripts (README, "Python quick start")::

    import crosslm
    summary = crosslm.run("examples/support_tickets.yaml", {"rounds": 1})

- ``run(config, settings)``: run an experiment, return its summary.
- ``configure(config, settings)``: the checked ``ExperimentConfig`` that ``run`` would use.
- ``load_config(path, overrides)`` and ``run_experiment(config)``: the same steps as ``crosslm run``.
- ``CrossLMError``: bad input, with a message that names what to fix.

They are imported on first use, so ``import crosslm`` (and the command line) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "run": "crosslm.api",
    "configure": "crosslm.api",
    "ExperimentConfig": "crosslm.config",
    "load_config": "crosslm.config",
    "run_experiment": "crosslm.experiment",
    "CrossLMError": "crosslm.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'crosslm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
