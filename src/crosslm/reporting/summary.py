"""What a run achieved, from its metrics lines: the summary dict and the table ``crosslm`` prints."""

from __future__ import annotations

import statistics

from rich.table import Table

from crosslm.quality.summary import data_quality_rows, data_quality_summary

COMPUTE_PHASES = ("S1-generate", "C2-score", "S2-aggregate", "S3-improve-generator", "S4-select",
                  "S5-enhance-llm", "C1-fit", "S-average")


def _phase(metrics: list[dict], phase: str) -> list[dict]:
    return [m for m in metrics if m["phase"] == phase]


COLLAPSED_SHARE = 0.95  # a client model that puts this share of its test predictions on one label


def _round_seconds(metrics: list[dict]) -> list[float]:
    """Per CrossLM round: S1-S5, C1 and C2, without the clients' evaluation time."""
    rounds = sorted({m["round"] for m in metrics if m["round"] > 0})
    out = []
    for r in rounds:
        mine = [m for m in metrics if m["round"] == r and m["phase"] in COMPUTE_PHASES]
        out.append(sum(m["seconds"] for m in mine) - sum(m.get("eval_seconds", 0) for m in mine))
    return out


def _slm_summary(metrics: list[dict]) -> dict:
    """Per client: local only (round 0) and after the last round; FedAvg: its global model."""
    fits = _phase(metrics, "C1-fit")
    if not fits:
        return {"slm_acc": None}
    first, last = fits[0], fits[-1]
    clients = {cid: {"local_only": first["clients"][cid]["test_accuracy"],
                     "crosslm": last["clients"].get(cid, {}).get("test_accuracy")}
               for cid in first["clients"]}
    def collapsed(record: dict) -> int | None:
        """None for runs from before the clients reported their majority share."""
        shares = [reply["metrics"].get("test_majority_share") for reply in record["clients"].values()]
        return None if None in shares else sum(share >= COLLAPSED_SHARE for share in shares)

    after = [c["crosslm"] for c in clients.values() if c["crosslm"] is not None]
    before = [c["local_only"] for c in clients.values() if c["local_only"] is not None]
    summary = {"clients": clients,
               "slm_acc_local_only_mean": statistics.mean(before) if before else None,
               "slm_acc_crosslm_mean": statistics.mean(after) if after else None,
               "collapsed_clients_local_only": collapsed(first), "collapsed_clients": collapsed(last)}
    global_model = _phase(metrics, "E-slm-global")
    summary["slm_acc"] = global_model[-1]["accuracy"] if global_model else summary["slm_acc_crosslm_mean"]
    return summary


def llm_task_accuracy(record: dict) -> float:
    """The better of the raw and the content-free calibrated accuracy of one E-llm-task record:
    the same rule before and after the rounds, so an untrained LLM shows no change."""
    return max(v for v in (record["accuracy"], record.get("accuracy_calibrated")) if v is not None)


def _llm_summary(metrics: list[dict]) -> dict:
    """Task accuracy before/after (each the better of raw and calibrated), general ability."""
    tasks, general = _phase(metrics, "E-llm-task"), _phase(metrics, "E-llm-general")
    summary: dict = {"llm_acc": None, "wikitext2_ppl": None, "arc_easy_acc": None}
    if tasks:
        summary |= {"llm_acc_zero_shot_raw": tasks[0]["accuracy"],
                    "llm_acc_zero_shot_calibrated": tasks[0].get("accuracy_calibrated"),
                    "llm_acc_zero_shot": llm_task_accuracy(tasks[0]),
                    "llm_acc_crosslm": llm_task_accuracy(tasks[-1]),
                    "llm_acc": llm_task_accuracy(tasks[-1])}
    if general:
        summary |= {"wikitext2_ppl_before": general[0]["wikitext2_ppl"],
                    "arc_easy_acc_before": general[0]["arc_easy_acc"],
                    "wikitext2_ppl": general[-1]["wikitext2_ppl"],
                    "arc_easy_acc": general[-1]["arc_easy_acc"]}
    if len(general) > 1:
        summary |= {"wikitext2_ppl_after": general[-1]["wikitext2_ppl"],
                    "arc_easy_acc_after": general[-1]["arc_easy_acc"]}
    return summary


def client_epsilon(metrics: list[dict]) -> dict[str, dict[int, float]]:
    """Client id -> round -> ε spent so far, for clients that train with DP (privacy:)."""
    out: dict[str, dict[int, float]] = {}
    for m in _phase(metrics, "C1-fit"):
        for cid, reply in m["clients"].items():
            if reply.get("metrics", {}).get("epsilon") is not None:
                out.setdefault(cid, {})[m["round"]] = reply["metrics"]["epsilon"]
    return out


def _privacy_summary(metrics: list[dict]) -> dict:
    """Each DP client's ε after every round; the largest after the last round is the run's ε."""
    spent = client_epsilon(metrics)
    if not spent:
        return {"epsilon_spent_max": None}
    deltas = {reply["metrics"]["delta"] for m in _phase(metrics, "C1-fit") for reply in m["clients"].values()
              if "delta" in reply.get("metrics", {})}
    return {"epsilon_by_client": spent, "epsilon_spent_max": max(max(e.values()) for e in spent.values()),
            "epsilon_after_round_zero_max": max(e.get(0, 0.0) for e in spent.values()),
            "delta": max(deltas)}


def summarise(metrics: list[dict]) -> dict:
    """Before (round 0: local-only SLMs, zero-shot LLM) versus after the last round.

    The keys ``slm_acc``, ``llm_acc``, ``wikitext2_ppl``, ``arc_easy_acc`` and
    ``bytes_per_client_per_round`` are each method's final figures (None where a
    method has no such figure): what ``crosslm bench`` compares.
    """
    traffic = [sum(b["down"] + b["up"] for b in m["bytes"].values()) / max(1, len(m["bytes"]))
               for m in _phase(metrics, "communication") if m["round"] > 0]
    rounds = _round_seconds(metrics)
    evals = [m["seconds"] for m in metrics if m["phase"].startswith("E-")]
    return {
        "rounds": max((m["round"] for m in metrics), default=0),
        **_slm_summary(metrics),
        **_llm_summary(metrics),
        **_privacy_summary(metrics),
        **data_quality_summary(metrics),
        "bytes_per_client_per_round": statistics.mean(traffic) if traffic else None,
        "round_seconds": rounds,
        "round_seconds_median": statistics.median(rounds) if rounds else None,
        "evaluation_seconds": sum(evals) + sum(m.get("eval_seconds", 0) for m in _phase(metrics, "C1-fit")),
    }


def _fmt(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:,.1f}"


def _epsilon(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_table(summary: dict) -> Table:
    """Before and after, for what the run has (a baseline may lack the SLM or the LLM side)."""
    method = summary.get("method", "crosslm")
    table = Table(title=f"{'CrossLM' if method == 'crosslm' else method} after {summary['rounds']} rounds")
    for name, justify in (("model", "left"), ("metric", "left"), ("before", "right"), ("after", "right")):
        table.add_column(name, justify=justify)
    for cid, acc in summary.get("clients", {}).items():
        table.add_row(f"SLM {cid}", "test accuracy (before: local only)",
                      _fmt(acc["local_only"]), _fmt(acc["crosslm"]))
    if "clients" in summary:
        table.add_row("SLM mean", "test accuracy", _fmt(summary["slm_acc_local_only_mean"]),
                      _fmt(summary["slm_acc"]))
        if summary["collapsed_clients"] is not None:
            table.add_row("SLM", f"clients collapsed (>= {COLLAPSED_SHARE:.0%} of predictions on one label)",
                          str(summary["collapsed_clients_local_only"]), str(summary["collapsed_clients"]))
    if "llm_acc_zero_shot" in summary:
        table.add_row("LLM", "task accuracy (best of raw and calibrated)",
                      _fmt(summary["llm_acc_zero_shot"]), _fmt(summary["llm_acc"]))
    if summary.get("wikitext2_ppl") is not None:
        table.add_row("LLM", "WikiText-2 perplexity (lower is better)",
                      _fmt(summary["wikitext2_ppl_before"], False),
                      _fmt(summary.get("wikitext2_ppl_after"), False))
        table.add_row("LLM", "ARC-Easy accuracy", _fmt(summary["arc_easy_acc_before"]),
                      _fmt(summary.get("arc_easy_acc_after")))
    for cid, spent in summary.get("epsilon_by_client", {}).items():
        table.add_row(f"SLM {cid}", f"ε spent (δ = {summary['delta']:g}; before: round 0)",
                      _epsilon(spent.get(0)), _epsilon(spent[max(spent)]))
    for row in data_quality_rows(summary):
        table.add_row(*row)
    table.add_row("network", "bytes per client per round (both directions)", "-",
                  _fmt(summary["bytes_per_client_per_round"], False))
    table.add_row("time", "seconds per round (median; S1-S5, C1, C2)", "-",
                  _fmt(summary["round_seconds_median"], False))
    return table
