"""The data-quality meter in a run's summary and in the table ``crosslm show`` prints.

Summary keys (present only when the run measured data quality; "last" is the last round measured):

- ``oracle_fidelity_generated`` / ``oracle_fidelity_accepted``: share of the generated (S1) /
  accepted (S4) samples whose intended label is the oracle's argmax;
- ``distinct_2``: distinct-2 of the accepted set, mean over labels (``distinct_1`` likewise);
- ``closeness_generated`` / ``closeness_accepted``: Fréchet distance of each set's sentence
  embeddings to a real sample (lower is closer); ``closeness_real``: a second real sample as large
  as the accepted set, the floor at that size;
- ``judge_accuracy_mean``: the clients' C2 argmax against the oracle, mean over clients
  (None for synthetic-no-feedback, which has no judges);
- ``oracle_test_accuracy``: the oracle's own accuracy on the task's test split;
- ``data_quality_by_round``: those figures (and the sets' sizes, distinct-1/2 of both sets,
  each judge's accuracy) for every round measured, so round 1 and round R can be compared.
"""

from __future__ import annotations

from pathlib import Path

PHASE = "E-data-quality"
HEADLINE = ("oracle_fidelity_generated", "oracle_fidelity_accepted", "distinct_2", "judge_accuracy_mean",
            "closeness_generated", "closeness_accepted")


def _round_figures(record: dict) -> dict:
    generated, accepted = record["generated"], record["accepted"]
    return {
        "round": record["round"],
        "oracle_fidelity_generated": generated["oracle_fidelity"],
        "oracle_fidelity_accepted": accepted["oracle_fidelity"],
        "distinct_1": accepted["distinct_1"], "distinct_2": accepted["distinct_2"],
        "distinct_1_generated": generated["distinct_1"], "distinct_2_generated": generated["distinct_2"],
        "judge_accuracy_mean": record["judge_accuracy_mean"],
        "judge_accuracy": record["judge_accuracy"],
        "closeness_generated": generated["frechet_distance"],
        "closeness_accepted": accepted["frechet_distance"],
        "closeness_real": record["real"]["frechet_distance"],
        "generated": generated["n"], "accepted": accepted["n"],
    }


def data_quality_summary(metrics: list[dict]) -> dict:
    """The last measured round's figures and every round's; {} when the run did not measure."""
    records = [m for m in metrics if m["phase"] == PHASE]
    if not records:
        return {}
    by_round = [_round_figures(m) for m in records]
    last = by_round[-1]
    return {**{key: last[key] for key in (*HEADLINE, "distinct_1", "closeness_real")},
            "oracle_model": records[-1]["oracle_model"],
            "oracle_test_accuracy": records[-1]["oracle_test_accuracy"],
            "data_quality_by_round": by_round}


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def data_quality_rows(summary: dict) -> list[tuple[str, str, str, str]]:
    """(model, metric, before, after) rows: before is the first round measured, after the last."""
    rounds = summary.get("data_quality_by_round")
    if not rounds:
        return []
    first, last = rounds[0], rounds[-1]
    before = (lambda key, fmt: fmt(first[key])) if len(rounds) > 1 else (lambda key, fmt: "-")
    oracle = Path(summary["oracle_model"]).name  # a local directory: its last part
    rows = [
        ("data", f"label fidelity (oracle {oracle} agrees), generated; before: round {first['round']}",
         "oracle_fidelity_generated", _percent),
        ("data", "label fidelity, accepted", "oracle_fidelity_accepted", _percent),
        ("data", "distinct-2 of the accepted set (mean over labels)", "distinct_2", _number),
        ("data", "Fréchet distance to real texts, generated (lower is closer)", "closeness_generated",
         _number),
        ("data", f"Fréchet distance to real texts, accepted (a real sample as large: "
                 f"{_number(last['closeness_real'])})", "closeness_accepted", _number),
        ("SLM judges", "accuracy against the oracle (mean over clients)", "judge_accuracy_mean", _percent),
    ]
    return [("oracle", f"{oracle} test accuracy (trained on real data, never shown to a client)", "-",
             _percent(summary["oracle_test_accuracy"])),
            *((model, metric, before(key, fmt), fmt(last[key])) for model, metric, key, fmt in rows)]
