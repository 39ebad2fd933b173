"""Loading labelled examples: local JSONL/CSV/Parquet (how a silo holds its data) or the hub."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from crosslm.errors import CrossLMError
from crosslm.tasks.spec import Example, TaskSpec

DATA_DIR_ENV = "CROSSLM_DATA_DIR"
SUFFIXES = (".jsonl", ".csv", ".parquet")


def _parse_label(value: object, task: TaskSpec, where: str) -> int:
    if isinstance(value, str) and value in task.labels:
        return task.labels.index(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise CrossLMError(f"{where}: field 'label' must be an integer or a label name, got {value!r}")
    try:
        label = int(value)
    except ValueError:
        raise CrossLMError(
            f"{where}: field 'label' is {value!r}, not one of the task's labels {task.labels}"
        ) from None
    if not 0 <= label < task.num_labels:
        raise CrossLMError(
            f"{where}: field 'label' is {label}, outside 0..{task.num_labels - 1} "
            f"for task '{task.name}' ({', '.join(task.labels)})"
        )
    return label


def _example(row: object, task: TaskSpec, where: str) -> Example:
    if not isinstance(row, dict):
        raise CrossLMError(f"{where}: expected an object with fields 'text' and 'label'")
    for field in ("text", "label"):
        if row.get(field) is None:
            raise CrossLMError(f"{where}: missing field '{field}'")
    text = row["text"]
    if not isinstance(text, str) or not text.strip():
        raise CrossLMError(f"{where}: field 'text' must be a non-empty string")
    return Example(text=text, label=_parse_label(row["label"], task, where))


def _rows(path: Path) -> list[tuple[int, object]]:
    """(line number, raw row) pairs; line numbers are 1-based as an editor shows them."""
    if path.suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise CrossLMError(f"{path}:{number}: not valid JSON: {err.msg}") from None
        return rows
    if path.suffix == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            return [(reader.line_num, row) for row in reader]
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise CrossLMError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
        return [(i + 1, row) for i, row in enumerate(pq.read_table(path).to_pylist())]
    raise CrossLMError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")


def read_examples(path: str | Path, task: TaskSpec) -> list[Example]:
    """All rows of a local data file, each checked; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise CrossLMError(f"data file not found: {path}")
    try:
        rows = _rows(path)
    except UnicodeDecodeError as err:
        raise CrossLMError(f"{path}: not UTF-8 text: {err}") from None
    examples = [_example(row, task, f"{path}:{line}") for line, row in rows]
    if not examples:
        raise CrossLMError(f"{path}: no examples")
    return examples


def find_split_file(data_dir: Path | None, task: TaskSpec, split: str) -> Path:
    """``<stem>.jsonl|.csv|.parquet`` in the task's own ``data_folder``, else in ``data_dir/<folder>``."""
    stem = getattr(task.splits, split)
    folder = Path(task.data_folder) if task.data_folder else data_dir / (task.folder or task.name)
    for suffix in SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise CrossLMError(
        f"no {split} split for task '{task.name}': expected {folder}/{stem}.jsonl (or .csv, .parquet)"
    )


def _check_label_names(folder: Path, task: TaskSpec) -> None:
    names_file = folder / "labels.json"
    if names_file.is_file():
        try:
            names = json.loads(names_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CrossLMError(f"{names_file}: not a JSON list of label names: {err}") from None
        if names != task.labels:
            raise CrossLMError(f"{names_file}: labels {names} differ from task '{task.name}' {task.labels}")


class DataUnavailable(CrossLMError):
    """Neither a data directory nor the hub has the data, so the user must choose one of the two."""


def hub_rows(name: str, config: str | None, split: str, layout: str,
             revision: str | None = None) -> list[dict]:
    """The rows of a Hugging Face hub dataset; offline or unreachable, a DataUnavailable that says
    both ways to get them (``layout``: the file a data directory would hold instead)."""
    from datasets import load_dataset  # imported here: a run from a data directory never needs it

    try:
        return list(load_dataset(name, config, split=split, revision=revision))
    except (OSError, ValueError) as err:  # offline, no network, no such dataset; no such config
        raise DataUnavailable(
            f"'{name}' ({config or 'default'}, {split}) could not be loaded from the Hugging Face hub: "
            f"{err}. Either set ${DATA_DIR_ENV} (or data_dir: in the config, --data-dir) to a folder "
            f"laid out like shared/data, holding {layout}, or go online (HF_HUB_OFFLINE unset) "
            "so the hub is used"
        ) from None


def _load_hub_split(task: TaskSpec, split: str) -> list[Example]:
    if task.hub is None:
        raise CrossLMError(f"task '{task.name}' has no local data directory and no hub source")
    hub_split = getattr(task.hub, f"{split}_split")
    stem = getattr(task.splits, split)
    rows = hub_rows(task.hub.name, task.hub.config, hub_split, f"{task.folder or task.name}/{stem}.jsonl",
                    revision=task.hub.revision)
    return [
        _example({"text": r[task.hub.text_column], "label": r[task.hub.label_column]}, task,
                 f"hub:{task.hub.name}/{hub_split}:{i}")
        for i, r in enumerate(rows)
    ]


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The configured directory, else ``$CROSSLM_DATA_DIR``, else None (use the hub)."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise CrossLMError(f"data directory not found: {path}")
    return path


def load_split(task: TaskSpec, split: str, data_dir: Path | None) -> list[Example]:
    """The task's ``train`` or ``test`` split: from its own data folder, else ``data_dir``, else the hub."""
    if data_dir is None and task.data_folder is None:
        return _load_hub_split(task, split)
    path = find_split_file(data_dir, task, split)
    _check_label_names(path.parent, task)
    return read_examples(path, task)
