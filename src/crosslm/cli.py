"""The ``crosslm`` command line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from crosslm.config import load_config
from crosslm.errors import CrossLMError
from crosslm.report import summarise, summary_table
from crosslm.rundir import RunDir, load_metrics

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

        from crosslm.experiment import RoundLoop, build_in_process, load_experiment_data

        mode = "resume" if resume else "overwrite" if overwrite else "new"
        if cfg.engine == "flower":
            summary, run_path = _run_on_superlink(cfg, mode, superlink, root_certificates, progress)
            if summary is None:
                return
        else:
            progress("checking data and models")
            data = load_experiment_data(cfg)
            run_dir = RunDir(cfg.output_dir, cfg, mode)
            run_path = run_dir.path
            progress("loading models")
            if cfg.engine == "flower-sim":
                from crosslm.runtime.flower_app import run_simulation_engine

                summary = run_simulation_engine(cfg, data, run_dir, progress)
            else:
                server, federation = build_in_process(cfg, data, run_dir.path, progress)
                llm_test = data.test[:cfg.evaluation.llm_test_size]
                summary = RoundLoop(cfg, server, federation, run_dir, llm_test, data.data_dir,
                                    progress).run_all()
    except CrossLMError as err:
        _fail(err)
    console.print(summary_table(summary))
    console.print(f"run directory: {run_path}")


def _run_on_superlink(cfg, mode: str, superlink: str, root_certificates: Path | None,
                      progress) -> tuple[dict | None, Path]:
    """Submit to a SuperLink; paths are made absolute here, as the ServerApp runs elsewhere."""
    from crosslm.runtime.flower_submit import submit

    absolute = {"output_dir": str(Path(cfg.output_dir).resolve())}
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
) -> None:
    """Write each silo's data as files and print a SuperNode command per silo (a local Flower trial)."""
    from crosslm.runtime.flower_submit import export_silos

    try:
        node_configs = export_silos(load_config(config, list(set_)), out)
    except CrossLMError as err:
        _fail(err)
    for k, node_config in enumerate(node_configs):
        print(f"flower-supernode --insecure --superlink {superlink} --port {9094 + k} "
              f"--node-config '{node_config}'")


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


def main() -> None:
    app()
