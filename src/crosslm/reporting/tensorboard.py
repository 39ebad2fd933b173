"""A run's metrics as TensorBoard scalars (``crosslm run --tensorboard``), step = round.

The ``tensorboard/`` folder of a run directory is a view of its ``metrics.jsonl``:
it is rebuilt from that file whenever a run starts or resumes, then extended with
every record the run logs, so a resumed run never shows a round twice. Tags:

- ``time/<phase>_<key>``: every top-level field of a record whose name ends in
  ``seconds`` (``time/S1-generate_seconds``, ``time/C1-fit_eval_seconds``).
- per-client fields (C1-fit ``clients``, communication ``bytes``):
  ``<group>/<client>/<name>`` for each number of a client, nested ones under their
  own name (``slm/client-0/test_accuracy``, ``slm/client-0/train_loss``,
  ``communication/client-1/down``), and ``<group>/mean_<name>``, the mean over the
  clients that report it (``slm/mean_test_accuracy``, ``communication/mean_up``).
- any other number: ``<group>/<key>``, nested keys joined by ``/``
  (``llm/accuracy``, ``llm/wikitext2_ppl``, ``synthetic/accepted``,
  ``synthetic/dropped/too_short``).

The group is ``GROUPS[phase]``, or the phase's own name for a phase not listed.
Strings, lists, flags (``cached``: True/False) and missing values (``None``) are not
scalars and are skipped.
"""

from __future__ import annotations

import re
import shutil
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from crosslm.rundir import Listener, RunDir, listening, load_metrics

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

FOLDER = "tensorboard"
GROUPS = {
    "C1-fit": "slm", "E-slm-global": "slm_global",
    "E-llm-task": "llm", "E-llm-general": "llm", "S5-enhance-llm": "llm",
    "S1-generate": "synthetic", "C2-score": "synthetic", "S2-aggregate": "synthetic",
    "S3-improve-generator": "synthetic", "S4-select": "synthetic",
    "communication": "communication", "E-data-quality": "data_quality",
}
PER_CLIENT = ("clients", "bytes")
NOT_METRICS = ("round", "phase")


def scalars(record: dict) -> dict[str, float]:
    """The tags and values one metrics record becomes (its ``round`` is their step)."""
    phase = str(record.get("phase", "unknown"))
    group = GROUPS.get(phase, phase)
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in NOT_METRICS:
            continue
        if key.endswith("seconds"):
            _flatten(out, f"time/{phase}_{key}", value)
        elif key in PER_CLIENT and isinstance(value, dict):
            _per_client(out, group, value)
        else:
            _flatten(out, f"{group}/{key}", value)
    return {_clean(tag): v for tag, v in out.items()}


def _flatten(out: dict[str, float], tag: str, value: object) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key not in NOT_METRICS:
                _flatten(out, f"{tag}/{key}", inner)
    elif _is_number(value):
        out[tag] = float(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _leaves(fields: dict) -> dict[str, float]:
    """A client's numbers by their own name, nested dicts (FitRes.metrics) merged in."""
    out: dict[str, float] = {}
    for key, value in fields.items():
        if isinstance(value, dict):
            out |= _leaves(value)
        elif key not in NOT_METRICS and _is_number(value):
            out[key] = float(value)
    return out


def _per_client(out: dict[str, float], group: str, clients: dict) -> None:
    per_client = {cid: _leaves(fields) for cid, fields in clients.items() if isinstance(fields, dict)}
    for cid, values in per_client.items():
        out |= {f"{group}/{cid}/{name}": v for name, v in values.items()}
    for name in dict.fromkeys(n for values in per_client.values() for n in values):
        out[f"{group}/mean_{name}"] = statistics.fmean(
            values[name] for values in per_client.values() if name in values)


def _clean(tag: str) -> str:
    """Tags without spaces or other characters TensorBoard's tag filter would need escaped."""
    return re.sub(r"[^\w/.\-]", "_", tag)


def write_record(writer: SummaryWriter, record: dict) -> None:
    for tag, value in scalars(record).items():
        writer.add_scalar(tag, value, global_step=int(record.get("round", 0)))


def open_writer(run_path: Path, metrics: list[dict]) -> SummaryWriter:
    """A writer into a fresh ``run_path/tensorboard`` that already holds ``metrics``."""
    from torch.utils.tensorboard import SummaryWriter

    folder = run_path / FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    writer = SummaryWriter(str(folder))
    for record in metrics:
        write_record(writer, record)
    writer.flush()
    return writer


@contextmanager
def tensorboard_logging() -> Iterator[None]:
    """Mirror the metrics of every run directory opened inside the block to its ``tensorboard/``."""
    writers: list[SummaryWriter] = []

    def attach(run: RunDir) -> Listener:
        writer = open_writer(run.path, run.metrics())
        writers.append(writer)

        def listener(record: dict) -> None:
            write_record(writer, record)
            writer.flush()  # a crashed run keeps what it logged, as metrics.jsonl does

        return listener

    try:
        with listening(attach):
            yield
    finally:
        for writer in writers:
            writer.close()


def export(run_path: Path) -> None:
    """``tensorboard/`` for a run directory another process wrote (``--engine flower``)."""
    open_writer(run_path, load_metrics(run_path)).close()
