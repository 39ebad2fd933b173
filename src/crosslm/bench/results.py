"""The aggregated results of a bench: matrix.json, matrix.md (tables, targets, machine) and plots.

Only finished cells whose config matches the spec count. A row is one (task, setting, method)
over its seeds; every figure is read from the cells' records (bench.store): their metrics (generic
keys, null where a method has no such figure) and the runner's wall time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections import Counter
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from crosslm.bench.spec import Cell
from crosslm.bench.store import measured_on, measured_seconds, record_path
from crosslm.methods import method_spec
from crosslm.reporting.summary import summarise
from crosslm.rundir import load_metrics, write_atomic

FIGURES = ("slm_acc", "llm_acc", "wikitext2_ppl", "arc_easy_acc", "bytes_per_client_per_round")
# the data-quality meter's last round (evaluation.data_quality; docs/data-quality.md), mean over seeds
QUALITY = ("oracle_fidelity_generated", "oracle_fidelity_accepted", "distinct_2", "judge_accuracy_mean",
           "closeness_generated", "closeness_accepted")


def duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def _mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the non-null values (std needs two of them)."""
    numbers = [v for v in values if v is not None]
    return (statistics.mean(numbers) if numbers else None,
            statistics.stdev(numbers) if len(numbers) > 1 else None)


def aggregate(cells: list[Cell], results: Path) -> list[dict]:
    """One row per (task, setting, method) of finished cells, in spec order; each cell's figures
    are summarised afresh from its recorded metrics.jsonl, so every row follows today's definitions."""
    groups: dict[tuple[str, str, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.task, cell.setting, cell.method), []).append(cell)
    rows = []
    for (task, setting, method), group in groups.items():
        records = [record_path(c, results) for c in group]
        summaries = [summarise(load_metrics(record)) for record in records]
        stats = {key: _mean_std([s.get(key) for s in summaries]) for key in FIGURES + QUALITY}
        collapsed = [s.get("collapsed_clients") for s in summaries]
        by_seed = {str(c.seed): {key: s.get(key) for key in FIGURES + QUALITY + ("collapsed_clients",)}
                   | {"machine": measured_on(record)}
                   for c, s, record in zip(group, summaries, records, strict=True)}
        rows.append({
            "task": task, "setting": setting, "method": method, "seeds": [c.seed for c in group],
            "examples_per_client": group[0].config.clients.examples_per_client,
            "slm_acc_mean": stats["slm_acc"][0], "slm_acc_std": stats["slm_acc"][1],
            "llm_acc_mean": stats["llm_acc"][0], "llm_acc_std": stats["llm_acc"][1],
            "wikitext2_ppl": stats["wikitext2_ppl"][0], "arc_easy_acc": stats["arc_easy_acc"][0],
            "bytes_per_client_per_round": stats["bytes_per_client_per_round"][0],
            **{key: stats[key][0] for key in QUALITY},
            # client models at >= 95 % of their test predictions on one label, summed over the seeds
            "collapsed_clients": None if None in collapsed else sum(collapsed),
            "seconds_mean": _mean_std([measured_seconds(record) for record in records])[0],
            "by_seed": by_seed,
        })
    return rows


def machine() -> dict:
    """The machine the cells ran on, for the record."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        cpuinfo = []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
               platform.processor() or "unknown CPU")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": version("torch"), "flwr": version("flwr")}


def machine_name() -> str:
    """This machine in one line, as a cell's bench.json records it."""
    host = machine()
    return f"{host['cpu']}, {host['cores']} cores, torch {host['torch']}"


def _machines_line(rows: list[dict]) -> str:
    """Which machines ran the cells, and how many each: cells of one matrix may come from several."""
    counts = Counter(cell["machine"] or "not recorded" for r in rows for cell in r["by_seed"].values())
    return "- machines: " + "; ".join(f"{name} ({n} cell{'s' * (n != 1)})"
                                      for name, n in counts.most_common())


# (description, figure, reference method, check(value, reference)); on every crosslm method
TARGETS: list[tuple[str, str, str, Callable[[float, float], bool]]] = [
    ("SLM acc >= local-only + 3 pts", "slm_acc", "local-only", lambda v, r: v >= r + 0.03),
    ("SLM acc > synthetic-no-feedback", "slm_acc", "synthetic-no-feedback", lambda v, r: v > r),
    ("LLM acc >= llm-zero-shot + 15 pts", "llm_acc", "llm-zero-shot", lambda v, r: v >= r + 0.15),
    ("WikiText-2 ppl <= 1.03 x llm-zero-shot", "wikitext2_ppl", "llm-zero-shot", lambda v, r: v <= 1.03 * r),
    ("ARC-Easy >= llm-zero-shot - 1 pt", "arc_easy_acc", "llm-zero-shot", lambda v, r: v >= r - 0.01),
]


def _fmt(key: str, value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    if key == "wikitext2_ppl":
        return f"{value:.2f}"
    if key in ("bytes_per_client_per_round", "seconds_mean", "collapsed_clients"):
        return f"{value:,.0f}"
    if key.startswith("closeness"):
        return f"{value:.3f}"
    return f"{100 * value:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def _paired_means(row: dict, ref: dict, figure: str) -> tuple[list[str], float | None, float | None]:
    """The seeds both rows finished, and each row's mean of ``figure`` over just those seeds:
    a method run on seed 0 so far is compared with its reference's seed 0, not its 3-seed mean."""
    seeds = [s for s in row["by_seed"] if s in ref["by_seed"]]
    value = _mean_std([row["by_seed"][s][figure] for s in seeds])[0]
    return seeds, value, _mean_std([ref["by_seed"][s][figure] for s in seeds])[0]


def target_rows(rows: list[dict], kinds: dict[str, str]) -> list[list[str]]:
    """Per task and setting, every crosslm method against each target's reference method, on the
    seeds both have finished."""
    out = []
    for row in (r for r in rows if method_spec(kinds[r["method"]]).checked):
        peers = [r for r in rows if (r["task"], r["setting"]) == (row["task"], row["setting"])]
        for description, figure, reference, check in TARGETS:
            ref = next((r for r in peers if kinds[r["method"]] == reference), None)
            seeds, value, ref_value = _paired_means(row, ref, figure) if ref else ([], None, None)
            status = ("n/a" if value is None or ref_value is None
                      else "met" if check(value, ref_value) else "MISSED")
            shown_ref = (_fmt(figure, ref_value) if seeds else
                         f"no common seed with {reference}" if ref else f"no {reference} result")
            out.append([row["task"], row["setting"], row["method"], description, ",".join(seeds),
                        _fmt(figure, value), shown_ref, status])
    return out


def _table(header: list[str], rows: list[list[str]], numeric: set[str]) -> list[str]:
    """A markdown table; the ``numeric`` columns right-aligned."""
    return [f"| {' | '.join(header)} |", "|" + "".join("---:|" if h in numeric else "---|" for h in header),
            *(f"| {' | '.join(row)} |" for row in rows)]


QUALITY_HEADER = {"collapsed_clients": "collapsed SLMs (all seeds)",
                  "oracle_fidelity_generated": "oracle fidelity, generated",
                  "oracle_fidelity_accepted": "oracle fidelity, accepted", "distinct_2": "distinct-2",
                  "judge_accuracy_mean": "judge acc. vs oracle", "closeness_generated": "Fréchet, generated",
                  "closeness_accepted": "Fréchet, accepted"}


def _quality_tables(rows: list[dict]) -> list[str]:
    """The rows with data-quality figures or a count of collapsed SLMs, when any has them (runs from
    before either existed have neither, so older results keep their tables)."""
    shown = [r for r in rows if any(r.get(key) is not None for key in QUALITY_HEADER)]
    if not shown:
        return []
    header = ["task", "setting", "method", "seeds", *QUALITY_HEADER.values()]
    table = [[r["task"], r["setting"], r["method"], ",".join(map(str, r["seeds"])),
              *(_fmt(key, r.get(key)) for key in QUALITY_HEADER)] for r in shown]
    return ["", "## Data quality and collapsed SLMs", "",
            "Last round; fidelity: the share of samples whose intended label the oracle predicts; "
            "Fréchet: distance of sentence embeddings to real task texts (docs/data-quality.md); "
            "collapsed: client models with >= 95 % of their test predictions on one label.", "",
            *_table(header, table, set(header[4:]))]


def markdown(name: str, rows: list[dict], kinds: dict[str, str], skipped: list[Cell],
             plots: dict[tuple[str, str], list[Path]], command: str, wall_seconds: float,
             results: Path) -> str:
    lines = [f"# {name}", "",
             f"{sum(len(r['seeds']) for r in rows)} finished cells in {len(rows)} rows; mean ± sample "
             "std over seeds; accuracy in %.", "",
             f"- command: `{command}`",
             _machines_line(rows),
             f"- total wall time of the cells: {duration(wall_seconds)} ({wall_seconds:,.0f} s)",
             "- s/cell: mean wall time per cell; the first CrossLM or synthetic-no-feedback cell of a "
             "task, setting and seed also ran the round 0 that the others copy (bench/share.py)"]
    header = ["setting", "method", "seeds", "SLM acc", "LLM acc", "WikiText-2 ppl", "ARC-Easy",
              "bytes/client/round", "s/cell"]
    for task in dict.fromkeys(r["task"] for r in rows):
        lines += ["", f"## {task}", "", *_table(header, [
            [r["setting"], r["method"], ",".join(map(str, r["seeds"])),
             _fmt("slm_acc", r["slm_acc_mean"], r["slm_acc_std"]),
             _fmt("llm_acc", r["llm_acc_mean"], r["llm_acc_std"]), _fmt("wikitext2_ppl", r["wikitext2_ppl"]),
             _fmt("arc_easy_acc", r["arc_easy_acc"]),
             _fmt("bytes_per_client_per_round", r["bytes_per_client_per_round"]),
             _fmt("seconds_mean", r["seconds_mean"])] for r in rows if r["task"] == task], set(header[3:]))]
    lines += _quality_tables(rows)
    targets = target_rows(rows, kinds)
    target_header = ["task", "setting", "method", "target", "seeds", "value", "reference", "status"]
    lines += ["", "## Targets", "",
              "Value and reference: means over the seeds both methods have finished (paired).", "",
              *(_table(target_header, targets, {"value", "reference"}) if targets
                else ["No finished crosslm cell to check."])]
    reasons = dict.fromkeys(f"{c.setting} / {c.method}: {c.skip}" for c in skipped)
    if reasons:
        lines += ["", "## Skipped cells", "", *(f"- {reason}" for reason in reasons)]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"- {task}, {setting}: " + ", ".join(
            f"[{p.stem.rsplit('-', 1)[-1]}]({p.relative_to(results).as_posix()})" for p in paths)
            for (task, setting), paths in plots.items()]
    return "\n".join(lines) + "\n"


def draw(cells: list[Cell], results: Path) -> dict[tuple[str, str], list[Path]]:
    """Per (task, setting), under ``results/plots``: accuracy per round, synthetic data quality and
    communication."""
    from crosslm.reporting import plots

    groups: dict[tuple[str, str], dict[str, list[Path]]] = {}
    for cell in cells:
        groups.setdefault((cell.task, cell.setting), {}).setdefault(cell.method, []).append(
            record_path(cell, results))
    return {(task, setting): [
        figure(runs, results / "plots" / f"{task}-{setting}-{kind}.png", f"{task}, {setting}")
        for kind, figure in (("accuracy", plots.accuracy_per_round), ("synthetic", plots.synthetic_quality),
                             ("communication", plots.communication_per_round))]
        for (task, setting), runs in groups.items()}


def write_results(name: str, done: list[Cell], skipped: list[Cell], out: Path, command: str) -> list[Path]:
    """matrix.json, matrix.md and the plots under ``out``, from the done cells' records there; the
    plots written."""
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(done, out)
    figures = draw(done, out)
    kinds = {c.method: c.config.method for c in done}
    wall = sum(s for c in done if (s := measured_seconds(record_path(c, out))) is not None)
    write_atomic(out / "matrix.json", json.dumps(rows, indent=2) + "\n")
    write_atomic(out / "matrix.md", markdown(name, rows, kinds=kinds, skipped=skipped, plots=figures,
                                                 command=command, wall_seconds=wall, results=out))
    return [p for paths in figures.values() for p in paths]
