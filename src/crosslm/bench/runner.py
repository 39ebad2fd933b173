"""``crosslm bench``: run a matrix of cells, each an ordinary run directory, and aggregate them.

A cell is done when its directory, or else its record beside the results (bench.store), has
``summary.json`` and a ``config.yaml`` equal to the one the spec resolves to; done cells are never
run again. A cell with the same config but no summary is
resumed after its last completed round (also when the spec only raised ``rounds``). A cell whose
stored config differs is left alone and reported, unless ``rerun_changed`` says to start it again.
Besides the run directory, the runner keeps ``bench.json`` (wall seconds over all attempts, and
the machine that ran them) and, after a failure, ``bench-error.txt`` in the cell's folder.
"""

from __future__ import annotations

import fnmatch
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from crosslm.bench.estimate import estimate
from crosslm.bench.results import duration, machine_name, write_results
from crosslm.bench.share import shared_round_zero, start_from_shared_round_zero
from crosslm.bench.spec import BenchSpec, Cell, expand, load_spec
from crosslm.bench.store import (
    BENCH_FILE,
    config_text,
    find_record,
    has_config,
    is_finished,
    keep_record,
    legacy_record_path,
    measured_seconds,
    migrate_record,
)
from crosslm.config import config_from_layers, settings_read
from crosslm.errors import CrossLMError
from crosslm.rundir import Mode, write_atomic

ERROR_FILE = "bench-error.txt"
State = Literal["done", "todo", "resume", "changed", "skip"]


@dataclass(frozen=True)
class Status:
    state: State
    detail: str = ""
    seconds: float | None = None  # measured wall time so far (bench.json)
    folder: Path | None = None  # where the state was read: the run directory or the cell's record


def _diff(old: object, new: object, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in dict.fromkeys([*old, *new])
                for d in _diff(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if old != new else []


def _stored_config(path: Path) -> dict | None:
    """The cell's stored config with today's defaults filled in; None if it no longer validates."""
    stored = yaml.safe_load(config_text(path)) or {}
    try:
        return config_from_layers(stored).model_dump()
    except ValidationError:
        return None


def cell_status(cell: Cell, results: Path) -> Status:
    """What the runner will do with this cell, from what its run directory holds or, when this
    machine has none, its record under ``results``."""
    if cell.skip:
        return Status("skip", cell.skip)
    note = f"last attempt failed: see {cell.path / ERROR_FILE}" if (cell.path / ERROR_FILE).is_file() else ""
    folder = cell.path if (cell.path / "config.yaml").is_file() else find_record(cell, results)
    if not has_config(folder):
        return Status("todo", note)
    seconds = measured_seconds(folder)
    stored, new = _stored_config(folder), cell.config.model_dump()
    if stored is None:
        where = folder if folder != cell.path else folder / "config.yaml"
        return Status("changed", f"{where} is not valid for this version of crosslm",
                      seconds, folder)
    method = cell.config.method
    changed = _diff(settings_read(stored, method), settings_read(new, method))
    if changed == ["rounds"] and new["rounds"] > stored["rounds"] and folder == cell.path:
        return Status("resume", f"rounds {stored['rounds']} -> {new['rounds']}", seconds, folder)
    if changed:
        detail = ", ".join(f"{k}: {_get(stored, k)!r} -> {_get(new, k)!r}" for k in changed)
        where = "" if folder == cell.path else " (only its record is here: it cannot resume)"
        return Status("changed", f"stored config differs{where}: {detail}", seconds, folder)
    if is_finished(folder):
        return Status("done", "", seconds, folder)
    return Status("resume", note, seconds, folder)


def _get(tree: dict, dotted: str) -> object:
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _will_run(status: Status, rerun_changed: bool) -> bool:
    return status.state in ("todo", "resume") or (status.state == "changed" and rerun_changed)


def cell_name(cell: Cell) -> str:
    return f"{cell.task} / {cell.setting} / {cell.method} / seed {cell.seed}"


def cell_key(cell: Cell) -> str:
    """What ``--only`` patterns match: ``task/setting/method/seed-N``, the cell's folder."""
    return f"{cell.task}/{cell.setting}/{cell.method}/seed-{cell.seed}"


def selected(cells: list[Cell], only: list[str]) -> list[bool]:
    """Per cell, whether it matches one of the glob patterns ``only`` (every cell when it is empty)."""
    if not only:
        return [True] * len(cells)
    unmatched = [p for p in only if not any(fnmatch.fnmatchcase(cell_key(c), p) for c in cells)]
    if unmatched:
        raise CrossLMError(f"--only {unmatched[0]!r} matches no cell; cells are named task/setting/"
                           f"method/seed-N, e.g. {cell_key(cells[0])!r}")
    return [any(fnmatch.fnmatchcase(cell_key(c), p) for p in only) for c in cells]


def estimates(cells: list[Cell], statuses: list[Status]) -> list[tuple[float, str]]:
    """Per cell (seconds, basis): measured for done cells, else an estimate."""
    done = [(c, s.seconds) for c, s in zip(cells, statuses, strict=True)
            if s.state == "done" and s.seconds is not None]
    out = []
    for cell, status in zip(cells, statuses, strict=True):
        if status.state == "done" and status.seconds is not None:
            out.append((status.seconds, "measured"))
            continue
        same_task = [s for c, s in done if (c.task, c.method) == (cell.task, cell.method)]
        same_setting = [s for c, s in done if (c.task, c.setting, c.method) ==
                        (cell.task, cell.setting, cell.method)]
        out.append(estimate(cell.config, same_setting, same_task))
    return out


def dry_run(spec_path: Path, rerun_changed: bool, only: list[str], results: Path | None,
            console: Console) -> None:
    """Print every (selected) cell with its status and (estimated) seconds; loads no model."""
    spec, cells, statuses = _statuses(spec_path, results)
    rows = [row for row, keep in zip(zip(cells, statuses, estimates(cells, statuses), strict=True),
                                     selected(cells, only), strict=True) if keep]
    shown = f"{len(rows)} of {len(cells)}" if len(rows) < len(cells) else f"{len(cells)}"
    table = Table(title=f"{spec.name}: {shown} cells under {spec.output_dir}")
    for column in ("task", "setting", "method", "seed", "status", "seconds", "basis"):
        table.add_column(column, justify="right" if column in ("seed", "seconds") else "left")
    total, to_run, notes = 0.0, 0, {}
    for cell, status, (seconds, basis) in rows:
        runs = _will_run(status, rerun_changed)
        total, to_run = total + seconds * runs, to_run + runs
        skip = status.state == "skip"
        table.add_row(cell.task, cell.setting, cell.method, str(cell.seed), status.state,
                      "-" if skip else f"{seconds:,.0f}", "" if skip else basis)
        if status.detail:  # a skip reason once per setting and method, anything else per cell
            notes[f"{cell.setting} / {cell.method}" if skip else cell_name(cell)] = status.detail
    console.print(table)
    console.print("basis: measured wall time (done cells); median of the finished cells with the same "
                  "method and task (same setting unless said); model: a size model calibrated on the "
                  "default SST-2 experiment", highlight=False, soft_wrap=True)
    for where, detail in notes.items():
        console.print(f"- {where}: {escape(detail)}", highlight=False, soft_wrap=True)
    counts = {state: sum(status.state == state for _, status, _ in rows)
              for state in ("done", "todo", "resume", "changed", "skip")}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n), highlight=False, soft_wrap=True)
    console.print(f"Estimated time for the {to_run} cells to run: {duration(total)} ({total:,.0f} s); "
                  "an estimate, not a measurement.", highlight=False, soft_wrap=True)
    if counts["changed"] and not rerun_changed:
        console.print("Cells marked 'changed' will not run: pass --rerun-changed to start them again.",
                      soft_wrap=True)


def run_cell(cell: Cell, mode: Mode, output_dir: Path, progress: Callable[[str], None]) -> str | None:
    """Run (or resume, or restart) one cell; the error text if it failed. A new cell starts from
    the shared round 0 when it has one (bench.share)."""
    from crosslm.experiment import run_experiment

    previous = measured_seconds(cell.path) if mode == "resume" else None
    (cell.path / ERROR_FILE).unlink(missing_ok=True)
    if mode == "new":  # a new run needs an empty folder; it holds at most our files of a failed try
        (cell.path / BENCH_FILE).unlink(missing_ok=True)
    log: list[str] = []

    def record(message: str) -> None:
        log.append(message)
        progress(message)

    start, error = time.perf_counter(), None
    try:
        if mode == "new" and (shared := shared_round_zero(cell, output_dir)) is not None:
            start_from_shared_round_zero(cell, shared, record)
            mode = "resume"
        run_experiment(cell.config, mode, record)
    except CrossLMError as err:
        error = str(err)
    except Exception as err:  # a crash in one cell must not stop the matrix; keep the traceback
        error = f"{type(err).__name__}: {err}\n\n{traceback.format_exc()}"
    finally:  # a stopped attempt's time counts too: the cell resumes from it
        cell.path.mkdir(parents=True, exist_ok=True)
        seconds = time.perf_counter() - start + (previous or 0.0)
        write_atomic(cell.path / BENCH_FILE,
                     json.dumps({"seconds": round(seconds, 1), "machine": machine_name()}))
    if error is not None:
        write_atomic(cell.path / ERROR_FILE, f"{error}\n\nlast progress messages:\n" + "\n".join(log[-20:]))
    return error


def results_dir(spec: BenchSpec, results: Path | None) -> Path:
    """Where the aggregated results and the cells' records go: ``--results``, else output_dir."""
    return results or Path(spec.output_dir)


def _statuses(spec_path: Path, results: Path | None) -> tuple[BenchSpec, list[Cell], list[Status]]:
    loaded = load_spec(spec_path)
    cells = expand(loaded)
    out = results_dir(loaded.spec, results)
    return loaded.spec, cells, [cell_status(c, out) for c in cells]


def run_bench(spec_path: Path, rerun_changed: bool, only: list[str], results: Path | None,
              command: str, console: Console) -> int:
    """Run every (selected) cell that is not done, then aggregate all done cells; the exit code
    (1: a cell failed or was kept)."""
    spec, cells, statuses = _statuses(spec_path, results)
    keep = selected(cells, only)
    cells = [c for c, k in zip(cells, keep, strict=True) if k]
    statuses = [s for s, k in zip(statuses, keep, strict=True) if k]
    jobs = [(c, s) for c, s in zip(cells, statuses, strict=True) if _will_run(s, rerun_changed)]
    for cell, status in zip(cells, statuses, strict=True):
        if status.state in ("skip", "changed") and not _will_run(status, rerun_changed):
            console.print(f"[yellow]{status.state:7}[/] {cell_name(cell)}: {escape(status.detail)}",
                          highlight=False, soft_wrap=True)
    console.print(f"{len(cells)} cells: {sum(s.state == 'done' for s in statuses)} done, "
                  f"{len(jobs)} to run", highlight=False, soft_wrap=True)
    failed = _run_jobs(jobs, Path(spec.output_dir), console)
    kept = [c for c, s in zip(cells, statuses, strict=True) if s.state == "changed" and not rerun_changed]
    aggregate_only(spec_path, results, command, console)
    if kept:
        console.print(f"[yellow]{len(kept)} cells have a stored config that differs from the spec and "
                      "were left alone (not aggregated): pass --rerun-changed to start them again[/]",
                      soft_wrap=True)
    if failed:
        console.print(f"[red]{len(failed)} cells failed:[/] " + ", ".join(cell_name(c) for c in failed),
                      soft_wrap=True)
    return 1 if failed or kept else 0


def _run_jobs(jobs: list[tuple[Cell, Status]], output_dir: Path, console: Console) -> list[Cell]:
    """Run the cells in order under a progress bar; the cells that failed."""
    failed = []
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("cells", total=len(jobs))
        for cell, status in jobs:
            name = cell_name(cell)
            mode: Mode = ("resume" if status.state == "resume" else
                          "overwrite" if status.folder == cell.path else "new")
            bar.update(job, description=f"{name}: starting ({mode})")
            start = time.perf_counter()
            error = run_cell(cell, mode, output_dir, lambda message, name=name: bar.update(
                job, description=f"{name}: {message.strip()}"))
            if error is None:
                bar.console.print(f"[green]done[/]    {name} ({time.perf_counter() - start:,.0f} s)",
                                  highlight=False, soft_wrap=True)
            else:
                failed.append(cell)
                bar.console.print(f"[red]FAILED[/]  {name}: {escape(error.splitlines()[0])} "
                                  f"(see {cell.path / ERROR_FILE})", highlight=False, soft_wrap=True)
            bar.advance(job)
    return failed


def aggregate_only(spec_path: Path, results: Path | None, command: str, console: Console) -> None:
    """Record the cells finished in this machine's run directories, then aggregate every recorded
    cell into matrix.json, matrix.md and plots."""
    spec, cells, statuses = _statuses(spec_path, results)
    out = results_dir(spec, results)
    done = [c for c, s in zip(cells, statuses, strict=True) if s.state == "done"]
    for cell, status in zip(cells, statuses, strict=True):
        if status.state == "done" and status.folder == cell.path:
            keep_record(cell, out)
        elif status.folder == legacy_record_path(cell, out):  # a record from before they were packed
            migrate_record(cell, out)
    skipped = [c for c in cells if c.skip]
    plots = write_results(spec.name, done, skipped=skipped, out=out, command=command)
    console.print(f"aggregated {len(done)} finished cells of {len(cells)}: {out / 'matrix.json'}, "
                  f"{out / 'matrix.md'} and {len(plots)} plots in {out / 'plots'}",
                  highlight=False, soft_wrap=True)
