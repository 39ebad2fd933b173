"""The run directory: resolved config, metrics per phase, samples and adapters per round, summary.

Everything is written so that a crash loses at most the round in progress:
files are replaced atomically, metrics lines are flushed one by one, and a round
counts as completed only once ``progress.json`` says so.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

import yaml
from pydantic import ValidationError

from crosslm.config import ExperimentConfig, config_from_layers, settings_read
from crosslm.errors import CrossLMError

Mode = Literal["new", "resume", "overwrite"]
Listener = Callable[[dict], None]
ListenerFactory = Callable[["RunDir"], Listener]

_listener_factories: ContextVar[tuple[ListenerFactory, ...]] = ContextVar("run_listeners", default=())


@contextmanager
def listening(factory: ListenerFactory) -> Iterator[None]:
    """Every RunDir opened inside the block calls ``factory(run)`` once it is ready (on resume: after
    the unfinished round's metrics are dropped) and passes each record it logs to the listener it got.

    Optional outputs such as TensorBoard hook in here, so the round loop never tests for them.
    """
    token = _listener_factories.set((*_listener_factories.get(), factory))
    try:
        yield
    finally:
        _listener_factories.reset(token)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RunDir:
    def __init__(self, path: str | Path, config: ExperimentConfig, mode: Mode = "new") -> None:
        self.path = Path(path)
        if mode == "resume":
            self._check_resumable(config)
        else:
            self._create(config, overwrite=mode == "overwrite")
        self._listeners = [make(self) for make in _listener_factories.get()]

    def _create(self, config: ExperimentConfig, overwrite: bool) -> None:
        if self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                raise CrossLMError(
                    f"run directory {self.path} already exists: pass --resume to continue it "
                    "or --overwrite to start again")
            if not (self.path / "config.yaml").is_file():
                raise CrossLMError(f"--overwrite refused: {self.path} does not look like a run "
                                   "directory (no config.yaml)")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / "config.yaml", yaml.safe_dump(config.model_dump(), sort_keys=False))

    def _check_resumable(self, config: ExperimentConfig) -> None:
        stored_file = self.path / "config.yaml"
        if not stored_file.is_file():
            raise CrossLMError(f"--resume: {self.path} has no config.yaml; nothing to resume")
        # e.g. S4's settings do not count in a local-only run; a setting added since the run
        # started counts at its default (it did not exist, so the run had the default's behaviour)
        raw = yaml.safe_load(stored_file.read_text(encoding="utf-8")) or {}
        with suppress(ValidationError):  # if it no longer validates, it is compared as written
            raw = config_from_layers(raw).model_dump()
        stored = settings_read(raw, config.method)
        new = settings_read(config.model_dump(), config.method)
        changed = sorted(k for k in new if k != "rounds" and stored.get(k) != new[k])
        if changed:
            raise CrossLMError(f"--resume: the config differs from {stored_file} in: "
                               f"{', '.join(changed)} (only 'rounds' may change)")
        write_atomic(stored_file, yaml.safe_dump(new, sort_keys=False))
        self._drop_unfinished_metrics()

    def _drop_unfinished_metrics(self) -> None:
        done = self.completed_round()
        records = [r for r in self.metrics() if done is not None and r["round"] <= done]
        write_atomic(self.metrics_file, "".join(json.dumps(r) + "\n" for r in records))

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def log(self, record: dict) -> None:
        with self.metrics_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        for listener in self._listeners:
            listener(record)

    def metrics(self) -> list[dict]:
        return _read_jsonl(self.metrics_file) if self.metrics_file.is_file() else []

    def round_dir(self, round_: int) -> Path:
        path = self.path / "rounds" / f"{round_:03d}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def completed_round(self) -> int | None:
        progress = self.path / "progress.json"
        if not progress.is_file():
            return None
        return json.loads(progress.read_text())["completed_round"]

    def mark_completed(self, round_: int) -> None:
        write_atomic(self.path / "progress.json", json.dumps({"completed_round": round_}))

    def write_json(self, name: str, payload: object) -> None:
        write_atomic(self.path / name, json.dumps(payload, indent=2))

    def write_jsonl(self, path: Path, rows: list[dict]) -> None:
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


PACKED_SUFFIX = ".json.gz"  # a finished run's results in one file: what the bench keeps of a cell


def is_packed(path: str | Path) -> bool:
    return Path(path).name.endswith(PACKED_SUFFIX)


def pack(fields: dict) -> bytes:
    """``fields`` as gzipped JSON, the same bytes for the same fields (no time stamp)."""
    return gzip.compress(json.dumps(fields, separators=(",", ":")).encode("utf-8"), mtime=0)


def read_packed(path: str | Path) -> dict:
    """A packed run: ``config`` (the config.yaml text), ``metrics`` (rows), ``summary``, ``bench`` and
    ``samples`` (round -> scored samples)."""
    try:
        return json.loads(gzip.decompress(Path(path).read_bytes()))
    except (OSError, ValueError) as err:
        raise CrossLMError(f"{path}: not a packed run record ({err})") from err


def load_metrics(path: str | Path) -> list[dict]:
    """The metrics of an existing run directory, or of a packed run (for ``crosslm show``, the reports
    and the bench)."""
    if is_packed(path):
        return read_packed(path)["metrics"]
    return _read_jsonl(_existing_run(path) / "metrics.jsonl")


def load_samples(path: str | Path) -> dict[int, list[dict]]:
    """Round -> that round's scored synthetic samples (``rounds/NNN/samples.jsonl``); {} if none."""
    if is_packed(path):
        return {int(round_): samples for round_, samples in read_packed(path)["samples"].items()}
    return {int(f.parent.name): _read_jsonl(f)
            for f in sorted(_existing_run(path).glob("rounds/*/samples.jsonl")) if f.parent.name.isdigit()}


def _existing_run(path: str | Path) -> Path:
    if not (Path(path) / "metrics.jsonl").is_file():
        raise CrossLMError(f"{path} is not a run directory: no metrics.jsonl")
    return Path(path)


def _read_jsonl(path: Path) -> list[dict]:
    """One dict per non-empty line; a damaged line is named by file and line number."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise CrossLMError(f"{path}:{number}: not valid JSON ({err.msg})") from err
    return rows
