"""Evaluations kept on disk, keyed by everything their figures depend on.

The LLM's evaluations before any round (task accuracy, WikiText-2, ARC-Easy) are
the same in every run with the same model, task and test data, and took a third
of a default run. A key is a digest of the model's weights (``model_fingerprint``),
the data and the settings; anything that changes a figure changes the key, so a
stale entry is never read. ``CACHE_VERSION`` changes when an evaluation's
definition does.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

CACHE_VERSION = 1
SAMPLED_VALUES = 4096  # per tensor: enough that any training or a different checkpoint shows


def digest(value: object) -> str:
    """A stable digest of a JSON-serialisable value (dict keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tensor_digest(tensor: torch.Tensor, sample: int | None = SAMPLED_VALUES) -> str:
    """Name-free digest of a tensor's shape, dtype and values (an evenly strided sample of them
    when ``sample`` is given: reading a 7B model whole would cost more than the evaluation)."""
    flat = tensor.detach().reshape(-1)
    if sample is not None and flat.numel() > sample:
        flat = flat[::flat.numel() // sample][:sample]
    values = flat.to("cpu", torch.float32).contiguous().numpy().tobytes()
    header = f"{tuple(tensor.shape)}|{tensor.dtype}|".encode()
    return hashlib.sha256(header + values).hexdigest()


def model_fingerprint(model: nn.Module, skip: Callable[[str], bool] = lambda name: False) -> str:
    """A digest of a model's parameters and buffers (sampled), except those ``skip`` names."""
    h = hashlib.sha256()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not skip(name):
            h.update(f"{name}:{tensor_digest(tensor)}:{tensor.device.type};".encode())
    return h.hexdigest()


class EvaluationCache:
    """JSON results under ``directory``, one file per key; ``enabled=False`` always recomputes."""

    def __init__(self, directory: Path, enabled: bool = True) -> None:
        self.directory, self.enabled = Path(directory), enabled

    def get_or_compute(self, key: dict, compute: Callable[[], dict]) -> tuple[dict, bool]:
        """(result, whether it came from the cache)."""
        if not self.enabled:
            return compute(), False
        path = self.directory / f"{digest({'version': CACHE_VERSION, **key})}.json"
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))["result"], True
            except (OSError, ValueError, KeyError):
                pass  # unreadable (e.g. cut short by a crash): recompute and rewrite it
        result = compute()
        self.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.directory, suffix=".tmp", delete=False,
                                         encoding="utf-8") as handle:
            json.dump({"key": key, "result": result}, handle, default=str)
        os.replace(handle.name, path)
        return result, False
