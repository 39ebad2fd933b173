"""The ``crosslm`` command line."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from crosslm.config import ExperimentConfig, load_config
from crosslm.errors import CrossLMError
from crosslm.reporting import tensorboard as tb
from crosslm.reporting.summary import summarise, summary_table
from crosslm.rundir import Listener, RunDir, listening, load_metrics

app = typer.Typer(help="CrossLM: a server LLM and client SLMs improve each other without "
                       "moving private data.", no_args_is_help=True, add_completion=False)
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # unwrapped: a file path must stay copyable


def _fail(err: CrossLMError) -> None:
    errors.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
    raise typer.Exit(2)


@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(help="experiment YAML; omitted: the defaults "
                                                       "(SST-2, 4 clients, 3 rounds)")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="override a setting: key=value, "
                                            "e.g. --set rounds=2 --set generation.top_k=20")] = [],  # noqa: B006
    data_dir: Annotated[Path | None, typer.Option(help="local data folder (JSONL layout of "
                                                  "shared/data); default $CROSSLM_DATA_DIR")] = None,
    output_dir: Annotated[Path | None, typer.Option(help="run directory (default: from the "
                                                    "config)")] = None,
    resume: Annotated[bool, typer.Option(help="continue after the last completed round")] = False,
    overwrite: Annotated[bool, typer.Option(help="delete an existing run directory first")] = False,
    engine: Annotated[str | None, typer.Option(help="in-process (default), flower-sim (Flower's "
                                               "Simulation Engine) or flower (a running SuperLink, "
                                               "see docs/flower.md)")] = None,
    superlink: Annotated[str, typer.Option(help="--engine flower: the SuperLink's address")
                         ] = "127.0.0.1:8000",
    root_certificates: Annotated[Path | None, typer.Option(help="--engine flower: the CA certificate "
                                                           "of the SuperLink's TLS; without it the "
                                                           "connection is insecure")] = None,
    tensorboard: Annotated[bool, typer.Option(help="also write the metrics as TensorBoard scalars to "
                                              "RUN_DIR/tensorboard (tensorboard --logdir runs/); "
                                              "--engine flower: after the run, if the run directory "
                                              "is on this machine")] = False,
    verbose: Annotated[bool, typer.Option(help="show other libraries' progress bars, log lines and "
                                          "warnings here instead of in RUN_DIR/third_party.log")] = False,
) -> None:
    """Run an experiment: round 0 (local SLMs, zero-shot LLM), then CrossLM rounds."""
    overrides = list(set_)
    if engine is not None:
        overrides.append(f"engine={engine}")
    if data_dir is not None:
        overrides.append(f"data_dir={data_dir}")
    if output_dir is not None:
        overrides.append(f"output_dir={output_dir}")
    if resume and overwrite:
        _fail(CrossLMError("--resume and --overwrite exclude each other"))
    try:
        cfg = load_config(config, overrides)
        start = time.perf_counter()

        def progress(message: str) -> None:
            console.print(f"[dim]{time.perf_counter() - start:7.1f}s[/] {message}")

        mode = "resume" if resume else "overwrite" if overwrite else "new"
        if cfg.engine == "flower":
            summary, run_path = _run_on_superlink(cfg, mode, superlink, root_certificates, progress)
            if summary is None:
                return
            if tensorboard:
                tb.export(run_path)
        else:
            from crosslm.experiment import run_experiment

            with _round_bar(cfg), tb.tensorboard_logging() if tensorboard else nullcontext():
                summary, run_path = run_experiment(cfg, mode, progress, verbose=verbose)
    except CrossLMError as err:
        _fail(err)
    console.print(summary_table(summary))
    console.print(f"run directory: {run_path}")


ROUND_ZERO_ONLY = {"local-only", "centralized", "llm-zero-shot", "llm-few-shot"}  # a side is left out


@contextmanager
def _round_bar(cfg: ExperimentConfig) -> Iterator[None]:
    """A bar under the progress lines on a terminal: rounds done, time so far, an estimate of the rest."""
    total = 1 if cfg.method in ROUND_ZERO_ONLY else cfg.rounds + 1
    columns = (TextColumn("rounds done"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("left"), TimeRemainingColumn())
    # rounds take minutes: estimate from every round so far, not rich's default last 30 seconds
    with Progress(*columns, console=console, transient=True, speed_estimate_period=7 * 24 * 3600) as bar:
        task = bar.add_task("rounds", total=total)

        def attach(run: RunDir) -> Listener:
            done = run.completed_round()  # resumed: rounds 0..done are done
            bar.update(task, completed=0 if done is None else done + 1)

            def listener(record: dict) -> None:  # a record of round r: rounds before r are done
                bar.update(task, completed=max(bar.tasks[0].completed, record["round"]))

            return listener

        with listening(attach):
            yield


def _run_on_superlink(cfg, mode: str, superlink: str, root_certificates: Path | None,
                      progress) -> tuple[dict | None, Path]:
    """Submit to a SuperLink; paths are made absolute here, as the ServerApp runs elsewhere."""
    from crosslm.runtime.flower_submit import submit

    absolute = {"output_dir": str(Path(cfg.output_dir).resolve())}
    if Path(cfg.task).is_file():  # a task YAML of the user's, not a built-in name
        absolute["task"] = str(Path(cfg.task).resolve())
    if cfg.data_dir:
        absolute["data_dir"] = str(Path(cfg.data_dir).expanduser().resolve())
    cfg = cfg.model_copy(update=absolute)
    submit(cfg, mode, superlink, root_certificates, progress)
    summary_file = Path(cfg.output_dir) / "summary.json"
    if not summary_file.is_file():
        console.print(f"run finished; its run directory {cfg.output_dir} is on the SuperLink's machine")
        return None, Path(cfg.output_dir)
    return json.loads(summary_file.read_text(encoding="utf-8")), Path(cfg.output_dir)


@app.command("export-silos")
def export_silos_command(
    config: Annotated[Path | None, typer.Argument(help="experiment YAML; omitted: the defaults")] = None,
    out: Annotated[Path, typer.Option(help="folder for one sub-folder per silo")] = Path("silos"),
    set_: Annotated[list[str], typer.Option("--set", help="override a setting: key=value")] = [],  # noqa: B006
    superlink: Annotated[str, typer.Option(help="the SuperLink address the commands use")
                         ] = "127.0.0.1:8000",
    workers: Annotated[bool, typer.Option(help="give each silo a `crosslm silo-worker` that keeps its "
                                               "model loaded between messages")] = False,
) -> None:
    """Write each silo's data as files and print a SuperNode command per silo (a local Flower trial)."""
    from crosslm.runtime.flower_submit import export_silos

    try:
        node_configs = export_silos(load_config(config, list(set_)), out, workers=workers)
    except CrossLMError as err:
        _fail(err)
    for k, (node_config, worker) in enumerate(node_configs):
        if worker is not None:
            print(f"crosslm silo-worker {worker} &")
        print(f"flower-supernode --insecure --superlink {superlink} --port {9094 + k} "
              f"--node-config '{node_config}'")


@app.command("silo-worker")
def silo_worker(
    folder: Annotated[Path, typer.Argument(help="the folder the SuperNode's node config names as "
                                                "silo-worker: its socket and key go there")],
) -> None:
    """Answer this silo's Flower messages from one long-running process (docs/flower.md)."""
    from crosslm.runtime.silo_worker import serve

    try:
        serve(folder, progress=lambda line: print(line, flush=True))  # a log line per message, unwrapped
    except CrossLMError as err:
        _fail(err)
    except KeyboardInterrupt:
        console.print("silo worker stopped")


@app.command()
def show(run_dir: Annotated[Path, typer.Argument(help="a run directory")]) -> None:
    """Print the metrics table of a finished (or partly finished) run again."""
    try:
        metrics = load_metrics(run_dir)
        console.print(summary_table(summarise(metrics)))
    except CrossLMError as err:
        _fail(err)
    except (IndexError, KeyError):
        _fail(CrossLMError(f"{run_dir}: round 0 has not finished; no table yet"))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default: RUN_DIR/report.html)")
                   ] = None,
) -> None:
    """Write one self-contained HTML page of a run: config, tables, figures, synthetic samples."""
    from crosslm.reporting.html import write_report

    try:
        print(write_report(run_dir, out))
    except CrossLMError as err:
        _fail(err)


@app.command()
def audit(run_dir: Annotated[Path, typer.Argument(help="a finished in-process run with audit.canaries")]
          ) -> None:
    """Membership-inference audit of client-0 from the server's view (docs/privacy.md): the loss
    attack's ROC AUC and TPR at 1% FPR on the planted canaries; also written to RUN_DIR/audit/."""
    from crosslm.privacy.auditor import audit_run

    try:
        print(json.dumps(audit_run(run_dir)))
    except CrossLMError as err:
        _fail(err)


@app.command()
def bench(
    spec: Annotated[Path, typer.Argument(help="bench spec YAML: tasks x settings x methods x seeds "
                                             "(docs/experiments.md)")],
    dry_run: Annotated[bool, typer.Option(help="list the cells, their status and estimated seconds; "
                                          "run nothing")] = False,
    aggregate_only: Annotated[bool, typer.Option(help="only aggregate the finished cells")] = False,
    rerun_changed: Annotated[bool, typer.Option(help="start again (deleting them) the cells whose "
                                                "stored config differs from the spec")] = False,
    results: Annotated[Path | None, typer.Option(help="folder for matrix.json, matrix.md, plots and "
                                                 "the finished cells' records (default: the spec's "
                                                 "output_dir)")] = None,
    only: Annotated[list[str] | None, typer.Option(help="run (or list) only the cells whose "
                                                   "task/setting/method/seed-N matches this glob, "
                                                   "e.g. 'sst2/*/*/seed-0'; repeatable")] = None,
) -> None:
    """Run every cell of a benchmark matrix that is not done yet, then aggregate the results."""
    from crosslm.bench import runner

    if dry_run and aggregate_only:
        _fail(CrossLMError("--dry-run and --aggregate-only exclude each other"))
    if only and aggregate_only:
        _fail(CrossLMError("--only selects cells to run; --aggregate-only runs none and aggregates "
                           "every finished cell"))
    only = only or []
    command = " ".join(["crosslm bench", str(spec), *(["--rerun-changed"] if rerun_changed else []),
                        *(f"--only '{pattern}'" for pattern in only),
                        *(["--results", str(results)] if results else []),
                        *(["--aggregate-only"] if aggregate_only else [])])
    # a scheduler's SIGTERM stops the bench as Ctrl-C does, so the stopped cell keeps its time
    previous_handler = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if dry_run:
            runner.dry_run(spec, rerun_changed, only, results, console)
        elif aggregate_only:
            runner.aggregate_only(spec, results, command, console)
        elif runner.run_bench(spec, rerun_changed, only, results, command, console):
            raise typer.Exit(1)
    except CrossLMError as err:
        _fail(err)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def main() -> None:
    app()
