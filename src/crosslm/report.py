"""What a run achieved, from its metrics lines: the summary dict and the table ``crosslm`` prints."""

from __future__ import annotations

import statistics

from rich.table import Table

COMPUTE_PHASES = ("S1-generate", "C2-score", "S2-aggregate", "S3-improve-generator", "S4-select",
                  "S5-enhance-llm", "C1-fit")


def _phase(metrics: list[dict], phase: str) -> list[dict]:
    return [m for m in metrics if m["phase"] == phase]


def _round_seconds(metrics: list[dict]) -> list[float]:
    """Per CrossLM round: S1-S5, C1 and C2, without the clients' evaluation time."""
    rounds = sorted({m["round"] for m in metrics if m["round"] > 0})
    out = []
    for r in rounds:
        mine = [m for m in metrics if m["round"] == r and m["phase"] in COMPUTE_PHASES]
        out.append(sum(m["seconds"] for m in mine) - sum(m.get("eval_seconds", 0) for m in mine))
    return out


def summarise(metrics: list[dict]) -> dict:
    """Before (round 0: local-only SLMs, zero-shot LLM) versus after the last round."""
    fits = _phase(metrics, "C1-fit")
    first, last = fits[0], fits[-1]
    clients = {cid: {"local_only": first["clients"][cid]["test_accuracy"],
                     "crosslm": last["clients"].get(cid, {}).get("test_accuracy")}
               for cid in first["clients"]}
    tasks = _phase(metrics, "E-llm-task")
    general = _phase(metrics, "E-llm-general")
    traffic = [sum(b["down"] + b["up"] for b in m["bytes"].values()) / max(1, len(m["bytes"]))
               for m in _phase(metrics, "communication") if m["round"] > 0]
    rounds = _round_seconds(metrics)
    evals = [m["seconds"] for m in metrics if m["phase"].startswith("E-")]
    summary = {
        "rounds": last["round"],
        "clients": clients,
        "slm_acc_local_only_mean": statistics.mean(c["local_only"] for c in clients.values()),
        "slm_acc_crosslm_mean": statistics.mean(
            c["crosslm"] for c in clients.values() if c["crosslm"] is not None),
        "llm_acc_zero_shot_raw": tasks[0]["accuracy"],
        "llm_acc_zero_shot_calibrated": tasks[0].get("accuracy_calibrated"),
        "llm_acc_zero_shot": max(v for v in (tasks[0]["accuracy"],
                                             tasks[0].get("accuracy_calibrated")) if v is not None),
        "llm_acc_crosslm": tasks[-1]["accuracy"],
        "bytes_per_client_per_round": statistics.mean(traffic) if traffic else 0.0,
        "round_seconds": rounds,
        "round_seconds_median": statistics.median(rounds) if rounds else None,
        "evaluation_seconds": sum(evals) + sum(m.get("eval_seconds", 0) for m in fits),
    }
    if general:
        summary |= {"wikitext2_ppl_before": general[0]["wikitext2_ppl"],
                    "arc_easy_acc_before": general[0]["arc_easy_acc"]}
    if len(general) > 1:
        summary |= {"wikitext2_ppl_after": general[-1]["wikitext2_ppl"],
                    "arc_easy_acc_after": general[-1]["arc_easy_acc"]}
    return summary


def _fmt(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:,.1f}"


def summary_table(summary: dict) -> Table:
    table = Table(title=f"CrossLM after {summary['rounds']} rounds")
    table.add_column("model")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for cid, acc in summary["clients"].items():
        table.add_row(f"SLM {cid}", "test accuracy (before: local only)",
                      _fmt(acc["local_only"]), _fmt(acc["crosslm"]))
    table.add_row("SLM mean", "test accuracy", _fmt(summary["slm_acc_local_only_mean"]),
                  _fmt(summary["slm_acc_crosslm_mean"]))
    table.add_row("LLM", "task accuracy (before: zero-shot, best of raw/calibrated)",
                  _fmt(summary["llm_acc_zero_shot"]), _fmt(summary["llm_acc_crosslm"]))
    table.add_row("LLM", "WikiText-2 perplexity (lower is better)",
                  _fmt(summary.get("wikitext2_ppl_before"), False),
                  _fmt(summary.get("wikitext2_ppl_after"), False))
    table.add_row("LLM", "ARC-Easy accuracy", _fmt(summary.get("arc_easy_acc_before")),
                  _fmt(summary.get("arc_easy_acc_after")))
    table.add_row("network", "bytes per client per round (both directions)", "-",
                  f"{summary['bytes_per_client_per_round']:,.0f}")
    table.add_row("time", "seconds per round (median; S1-S5, C1, C2)", "-",
                  _fmt(summary["round_seconds_median"], False))
    return table
