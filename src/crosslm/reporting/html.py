"""One self-contained HTML page per run: config, summary, per-round table, figures, synthetic samples.

Plain HTML with inline CSS and the figures as base64 PNGs, without scripts or external resources,
so the page opens offline in any browser and can be archived or mailed with the results.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Callable, Container, Iterable
from html import escape
from itertools import groupby, islice
from operator import itemgetter
from pathlib import Path

import yaml
from rich.table import Table

from crosslm.errors import CrossLMError
from crosslm.reporting.plots import (
    accuracy_per_round,
    bytes_per_client,
    client_accuracy,
    communication_per_round,
    llm_accuracy,
    slm_accuracy,
    synthetic_quality,
)
from crosslm.reporting.summary import client_epsilon, summarise, summary_table
from crosslm.rundir import load_metrics, load_samples, write_atomic
from crosslm.tasks.spec import load_task

SAMPLES_PER_LABEL = 10

FIGURES: tuple[tuple[str, Callable[..., Path]], ...] = (
    ("Test accuracy per round", accuracy_per_round),
    ("Synthetic data quality", synthetic_quality),
    ("Communication per round", communication_per_round),
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1500px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; vertical-align: top; }
th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #666; font-size: 0.9em; }
"""


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of ``run_dir`` (default ``<run_dir>/report.html``) and return its path."""
    run_dir = Path(run_dir)
    metrics, samples = load_metrics(run_dir), load_samples(run_dir)
    config_text, config = _config(run_dir / "config.yaml")
    rounds = max((m["round"] for m in metrics), default=None)
    title = f"crosslm run {run_dir.resolve().name}"
    body = "".join([
        f"<h1>{escape(title)}</h1>",
        f"<p class='note'>method {escape(str(config.get('method', 'crosslm')))}; "
        f"task {escape(str(config.get('task', '?')))}; rounds logged: "
        f"{'none' if rounds is None else f'0 to {rounds}'}; directory {escape(str(run_dir))}</p>",
        _section("Summary", _summary(metrics)),
        _section("Per round", _per_round(metrics) + _failures(metrics)),
        _section("Figures", _figures(run_dir)),
        _section("Synthetic samples", _samples(samples, _label_names(config.get("task")))),
        _section("Configuration", f"<pre>{escape(config_text)}</pre>" if config_text
                 else "<p>No config.yaml in this run directory.</p>"),
    ])
    out = Path(out) if out is not None else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
                      f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
                      f"<body>{body}</body></html>\n")
    return out


def _config(path: Path) -> tuple[str, dict]:
    """The resolved config as written by ``crosslm run`` (text and parsed); ("", {}) if absent."""
    if not path.is_file():
        return "", {}
    text = path.read_text(encoding="utf-8")
    try:
        return text, yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise CrossLMError(f"{path}: not valid YAML ({err})") from err


def _section(heading: str, content: str) -> str:
    anchor = heading.lower().replace(" ", "-")
    return f"<section id='{anchor}'><h2>{escape(heading)}</h2>{content}</section>"


def _table(headers: Iterable[str], rows: Iterable[Iterable[object]], caption: str = "",
           numeric: Container[int] = ()) -> str:
    """An HTML table of escaped cells; the ``numeric`` columns are right-aligned."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(
        f"<td class='num'>{escape(str(c))}</td>" if k in numeric else f"<td>{escape(str(c))}</td>"
        for k, c in enumerate(row)) + "</tr>" for row in rows)
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary(metrics: list[dict]) -> str:
    """The table ``crosslm run`` and ``crosslm show`` print (rows for what the run has), cell by cell."""
    table: Table = summary_table(summarise(metrics))
    columns = [list(column.cells) for column in table.columns]
    return _table([str(column.header) for column in table.columns], zip(*columns, strict=True),
                  str(table.title or ""), numeric=(2, 3))


def _field(metrics: list[dict], phase: str, template: str) -> dict[int, str]:
    return {m["round"]: template.format(**m) for m in metrics if m["phase"] == phase}


def _formatted(values: dict[int, float], template: str) -> dict[int, str]:
    return {r: template.format(v) for r, v in values.items()}


def _per_round(metrics: list[dict]) -> str:
    """One row per round and one column per quantity that some round has."""
    rounds = sorted({m["round"] for m in metrics})
    seconds = {r: sum(m.get("seconds", 0.0) for m in metrics if m["round"] == r) for r in rounds}
    columns = {
        "SLM test acc., mean": _formatted(slm_accuracy(metrics), "{:.1%}"),
        **{f"{cid} test acc.": _formatted(acc, "{:.1%}") for cid, acc in client_accuracy(metrics).items()},
        **{f"{cid} ε spent": _formatted(eps, "{:.2f}") for cid, eps in client_epsilon(metrics).items()},
        "LLM task acc.": _formatted(llm_accuracy(metrics), "{:.1%}"),
        "WikiText-2 ppl": _field(metrics, "E-llm-general", "{wikitext2_ppl:.2f}"),
        "ARC-Easy acc.": _field(metrics, "E-llm-general", "{arc_easy_acc:.1%}"),
        "generated / kept": _field(metrics, "S1-generate", "{generated} / {kept}"),
        "mean quality": _field(metrics, "S2-aggregate", "{mean_quality:.3f}"),
        "accepted / candidates": _field(metrics, "S4-select", "{accepted} / {candidates}"),
        "bytes per client": _formatted(bytes_per_client(metrics), "{:,.0f}"),
        "seconds, all phases": _formatted(seconds, "{:.1f}"),
    }
    columns = {name: values for name, values in columns.items() if values}
    rows = [[r, *(values.get(r, "-") for values in columns.values())] for r in rounds]
    note = ("<p class='note'>LLM task accuracy is the better of raw and content-free calibrated; "
            "accuracies are on the test split; bytes are down + up, mean over clients.</p>")
    return _table(["round", *columns], rows, numeric=range(len(columns) + 1)) + note


def _failures(metrics: list[dict]) -> str:
    failures = [m for m in metrics if m["phase"] == "failure"]
    if not failures:
        return "<p class='note'>No client failures.</p>"
    rows = [[m["round"], m.get("client", "?"), m.get("message", "?"), str(m.get("error", "")).splitlines()[0]]
            for m in failures]
    return _table(["round", "client", "message", "error"], rows, "Client failures", numeric=(0,))


def _figures(run_dir: Path) -> str:
    """The three figures of this run, rendered to a temporary folder and inlined as data URIs."""
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (caption, draw) in enumerate(FIGURES):
            png = draw({run_dir.resolve().name: [run_dir]}, Path(tmp) / f"figure-{k}.png")
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{escape(caption)}'>"
                         f"<figcaption>{escape(caption)}</figcaption></figure>")
    return "".join(parts)


def _label_names(task: str | None) -> list[str] | None:
    """The task's label names, or None when the task cannot be loaded here (labels show as numbers)."""
    try:
        return load_task(task).labels if task else None
    except CrossLMError:
        return None


def _samples(samples: dict[int, list[dict]], names: list[str] | None) -> str:
    """Up to SAMPLES_PER_LABEL accepted and rejected samples per intended label, from the last round."""
    if not samples:
        return "<p>This run has no synthetic samples.</p>"
    round_ = max(samples)
    rows = samples[round_]
    parts = [f"<p class='note'>Round {round_}: {len(rows)} scored samples, "
             f"{sum(s['accepted'] for s in rows)} accepted. In generation order, at most "
             f"{SAMPLES_PER_LABEL} per intended label.</p>"]
    by_label = itemgetter("label")
    for verdict in ("accepted", "rejected"):
        mine = sorted((s for s in rows if s["accepted"] == (verdict == "accepted")), key=by_label)  # stable
        chosen = [s for _, group in groupby(mine, key=by_label) for s in islice(group, SAMPLES_PER_LABEL)]
        parts.append(_table(["intended label", "text", "quality", "soft label (aggregated)",
                             "each SLM: p(intended label)"], [_sample_row(s, names) for s in chosen],
                            f"{verdict.capitalize()} ({len(chosen)} shown)", numeric=(2,))
                     if chosen else f"<p>No {verdict} samples in round {round_}.</p>")
    return "".join(parts)


def _sample_row(sample: dict, names: list[str] | None) -> list[str]:
    def name(label: int) -> str:
        return names[label] if names and 0 <= label < len(names) else str(label)

    label = sample["label"]
    return [name(label), sample["text"], f"{sample['quality']:.3f}",
            ", ".join(f"{name(k)} {p:.2f}" for k, p in enumerate(sample["soft_label"])),
            ", ".join(f"{cid} {p[label]:.2f}" for cid, p in sample.get("client_probs", {}).items())]
