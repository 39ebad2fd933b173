"""Issue #29's results, from the feedback benches: ``feedback.json``, ``feedback.md`` and the regime plot.

Runs nothing: it reads the finished cells of ``benchmarks/feedback.yaml`` (128 private
examples per client) and ``benchmarks/feedback-regimes.yaml`` (32 and 512) from their
results folders (the records ``crosslm bench`` kept there), and writes into ``benchmarks/results``:

- ``feedback.json``: one row per task, setting and method (the bench's row keys, the
  spec it came from, and the meter's generated-data figures per round, mean over seeds);
- ``feedback.md``: the table, the issue's targets for every CrossLM row against
  ``synthetic-no-feedback`` on the seeds both have, the machine and the commands;
- ``plots/feedback-regimes.png``: by private examples per client, the SLMs' and the LLM's accuracy and
  how often the judges and the generator's labels agree with the oracle.

From the repo root, after ``crosslm bench`` on either spec:

    .venv/bin/python benchmarks/feedback_summary.py
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from crosslm.bench.results import aggregate, machine_name  # noqa: E402
from crosslm.bench.runner import cell_key, cell_status  # noqa: E402
from crosslm.bench.spec import expand, load_spec  # noqa: E402
from crosslm.bench.store import record_path  # noqa: E402
from crosslm.reporting.summary import summarise  # noqa: E402
from crosslm.rundir import load_metrics, write_atomic  # noqa: E402

BENCHMARKS = Path(__file__).parent
RESULTS = BENCHMARKS / "results"
SPECS = {"feedback.yaml": RESULTS / "feedback", "feedback-regimes.yaml": RESULTS / "feedback-regimes"}
HELDOUT = RESULTS / "feedback-heldout.json"  # benchmarks/heldout_accuracy.py
REFERENCE = "synthetic-no-feedback"
TASKS = ("sst2", "ag_news", "trec")
KEYS = ("task", "setting", "method", "examples_per_client", "seeds", "slm_acc_mean", "slm_acc_std",
        "llm_acc_mean", "llm_acc_std", "wikitext2_ppl", "arc_easy_acc", "oracle_fidelity_generated",
        "oracle_fidelity_accepted", "distinct_2", "judge_accuracy_mean", "closeness_generated",
        "closeness_accepted", "collapsed_clients")
BY_ROUND = ("oracle_fidelity_generated", "closeness_generated")
EXAMPLES = (32, 128, 512)  # private examples per client in the two specs
# no target: how far above plain synthetic data the SLMs could go, with real data or a perfect label filter
UPPER_REFERENCES = {
    "centralized": "SLM upper reference (no target): room above synthetic-no-feedback",
    "oracle-filtered": "SLM with a perfect label filter (no target): against synthetic-no-feedback",
}
COLOURS = {"local-only": "tab:gray", REFERENCE: "tab:blue", "crosslm": "tab:orange", "centralized": "black"}


def _by_round(records: list[Path]) -> dict[str, list[float | None]]:
    """The meter's generated-data figures per round, mean over the cells that measured them."""
    rounds = [summarise(load_metrics(r)).get("data_quality_by_round") or [] for r in records]
    out: dict[str, list[float | None]] = {}
    for key in BY_ROUND:
        per_round = list(zip(*[[q[key] for q in r] for r in rounds if r], strict=False))
        out[f"{key}_by_round"] = [statistics.mean(v) if None not in v else None for v in per_round]
    return out


def _heldout_by_seed(cells: list, heldout: dict) -> dict[str, float]:
    """Per seed, the cell's SLMs' mean accuracy on real training texts in no silo
    (heldout_accuracy.py): the figure to choose settings by, since the test split must not."""
    return {str(c.seed): heldout[key]["heldout_acc_mean"] for c in cells if (key := cell_key(c)) in heldout}


def spec_rows(spec: str, results: Path, heldout: dict) -> list[dict]:
    """The bench's rows of one spec's recorded, finished cells, as ``crosslm bench`` aggregates them."""
    cells = [c for c in expand(load_spec(BENCHMARKS / spec))
             if record_path(c, results).is_file() and cell_status(c, results).state == "done"]
    kinds = {c.method: c.config.method for c in cells}
    rows = []
    for row in aggregate(cells, results):
        row_key = (row["task"], row["setting"], row["method"])
        group = [c for c in cells if (c.task, c.setting, c.method) == row_key]
        by_seed = _heldout_by_seed(group, heldout)
        rows.append({key: row[key] for key in KEYS}
                    | {"slm_heldout_acc_mean": statistics.mean(by_seed.values())
                       if by_seed and len(by_seed) == len(group) else None,
                       "slm_heldout_by_seed": by_seed,
                       "kind": kinds[row["method"]], "spec": spec, "by_seed": row["by_seed"],
                       **_by_round([record_path(c, results) for c in group])})
    return rows


def _paired(row: dict, ref: dict, key: str) -> tuple[float | None, float | None, list[str]]:
    """Means of one figure over the seeds both rows have."""
    seeds = [s for s in row["by_seed"] if s in ref["by_seed"]
             and row["by_seed"][s].get(key) is not None and ref["by_seed"][s].get(key) is not None]
    if not seeds:
        return None, None, []
    return (statistics.mean(row["by_seed"][s][key] for s in seeds),
            statistics.mean(ref["by_seed"][s][key] for s in seeds), seeds)


def targets(rows: list[dict]) -> list[list[str]]:
    """Issue #29's targets for every CrossLM row at 128 examples per client, against plain synthetic data."""
    by_key = {(r["task"], r["setting"], r["method"]): r for r in rows if r["spec"] == "feedback.yaml"}
    out = []
    for (task, setting, method), row in by_key.items():
        ref = by_key.get((task, setting, REFERENCE))
        if row["kind"] != "crosslm" or ref is None:
            continue
        for label, key, margin in (("SLM acc >= synthetic-no-feedback + 2 pts", "slm_acc", 0.02),
                                   ("LLM acc >= synthetic-no-feedback", "llm_acc", 0.0),
                                   ("accepted fidelity > synthetic-no-feedback's", "oracle_fidelity_accepted",
                                    1e-9)):
            value, reference, seeds = _paired(row, ref, key)
            met = None if value is None else value >= reference + margin
            out.append([task, method, label, ",".join(seeds), _pct(value), _pct(reference), _status(met)])
        fidelity, frechet = row["oracle_fidelity_generated"], row["closeness_generated"]
        by_round = [row[f"{k}_by_round"] for k in BY_ROUND]
        first, last = [r[0] if r else None for r in by_round], [r[-1] if r else None for r in by_round]
        learned = None if None in first + last or len(by_round[0]) < 2 else (
            last[0] > first[0] or last[1] < first[1])
        out.append([task, method, "last round's generated data more faithful or closer than round 1's",
                    ",".join(str(s) for s in row["seeds"]),
                    f"{_pct(fidelity)} / {_num(frechet)}", f"{_pct(first[0])} / {_num(first[1])}",
                    _status(learned)])
        out += _llm_targets(row, by_key.get((task, setting, "llm-zero-shot")),
                            by_key.get((task, setting, "centralized-llm")))
    for (task, setting, method), row in by_key.items():
        ref = by_key.get((task, setting, REFERENCE))
        if method in UPPER_REFERENCES and ref is not None:
            value, reference, seeds = _paired(row, ref, "slm_acc")
            out.append([task, method, UPPER_REFERENCES[method], ",".join(seeds), _pct(value), _pct(reference),
                        "-"])
        if method == "local-only" and row["collapsed_clients"] is not None:
            out.append([task, method, "no collapsed client model", ",".join(str(s) for s in row["seeds"]),
                        str(row["collapsed_clients"]), "0", _status(row["collapsed_clients"] == 0)])
    return out


def choice(rows: list[dict]) -> list[list[str]]:
    """The default's choice: each CrossLM variant's held-out SLM accuracy against plain synthetic data
    on the seeds both have, per task and on average over the tasks (never the test split)."""
    by_key = {(r["task"], r["method"]): r["slm_heldout_by_seed"] for r in rows
              if r["spec"] == "feedback.yaml" and r["slm_heldout_by_seed"]}
    kinds = {r["method"]: r["kind"] for r in rows}
    out = []
    for method in dict.fromkeys(m for _, m in by_key if kinds[m] == "crosslm"):
        line, gains = [method], []
        for task in TASKS:
            row, ref = by_key.get((task, method), {}), by_key.get((task, REFERENCE), {})
            seeds = sorted(set(row) & set(ref))
            gain = statistics.mean(row[s] - ref[s] for s in seeds) if seeds else None
            gains += [] if gain is None else [gain]
            line.append("-" if gain is None else f"{100 * gain:+.1f} (seeds {','.join(seeds)})")
        out.append(line + [f"{100 * statistics.mean(gains):+.1f} over {len(gains)}" if gains else "-"])
    return out


def _llm_targets(row: dict, zero_shot: dict | None, centralized: dict | None) -> list[list[str]]:
    """General ability kept (perplexity within 3 %, ARC-Easy within 1 point of the base LLM), and the
    LLM's share of the way from zero-shot to the LLM trained on the silos' real data (no target)."""
    if zero_shot is None:
        return []
    seeds = ",".join(str(s) for s in row["seeds"])
    ppl, arc = row["wikitext2_ppl"], row["arc_easy_acc"]
    base_ppl, base_arc = zero_shot["wikitext2_ppl"], zero_shot["arc_easy_acc"]
    out = [[row["task"], row["method"], "WikiText-2 ppl <= 1.03 x llm-zero-shot", seeds, _num(ppl),
            _num(base_ppl), _status(None if ppl is None else ppl <= 1.03 * base_ppl)],
           [row["task"], row["method"], "ARC-Easy >= llm-zero-shot - 1 pt", seeds, _pct(arc),
            _pct(base_arc), _status(None if arc is None else arc >= base_arc - 0.01)]]
    if centralized is not None and row["llm_acc_mean"] is not None:
        base, top = zero_shot["llm_acc_mean"], centralized["llm_acc_mean"]
        share = (row["llm_acc_mean"] - base) / (top - base) if top != base else None
        out.append([row["task"], row["method"], "LLM: share of the way from llm-zero-shot to centralized-llm",
                    seeds, _pct(share), f"{_pct(base)} -> {_pct(top)}", "-"])
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _status(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "MISSED")


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(line) + " |" for line in body)]


def markdown(rows: list[dict]) -> str:
    body = [[r["task"], r["setting"], r["method"], str(r["examples_per_client"]),
             ",".join(str(s) for s in r["seeds"]),
             _pct(r["slm_heldout_acc_mean"]),
             _pct(r["slm_acc_mean"]) + ("" if r["slm_acc_std"] is None else f" ± {_pct(r['slm_acc_std'])}"),
             _pct(r["llm_acc_mean"]) + ("" if r["llm_acc_std"] is None else f" ± {_pct(r['llm_acc_std'])}"),
             _pct(r["oracle_fidelity_generated"]), _pct(r["oracle_fidelity_accepted"]), _pct(r["distinct_2"]),
             _pct(r["judge_accuracy_mean"]), _num(r["closeness_generated"]),
             "-" if r["collapsed_clients"] is None else str(r["collapsed_clients"])] for r in rows]
    lines = ["# Feedback against plain synthetic data (issue #29)", "",
             f"- machine: {machine_name()}",
             "- cells: `crosslm bench benchmarks/feedback.yaml --results benchmarks/results/feedback` and "
             "`crosslm bench benchmarks/feedback-regimes.yaml --results benchmarks/results/feedback-regimes`",
             "- this file: `.venv/bin/python benchmarks/feedback_summary.py`", "",
             "Mean ± sample std over seeds, last round, in %; SLM held-out: on real training texts in no "
             "silo (`benchmarks/heldout_accuracy.py`, what a setting is chosen by; all seeds of the row or "
             "none), SLM acc: on the test split; fidelity: the oracle agrees with the intended "
             "label; Fréchet: distance of the generated texts' embeddings to real texts (lower is closer); "
             "collapsed: client models with >= 95 % of their test predictions on one label, all seeds.", "",
             *_table(["task", "setting", "method", "examples/client", "seeds", "SLM held-out", "SLM acc",
                      "LLM acc",
                      "fidelity, generated", "fidelity, accepted", "distinct-2", "judges vs oracle",
                      "Fréchet, generated", "collapsed"], body),
             "", "## Targets (128 examples per client; means over the seeds both rows have)", "",
             *_table(["task", "method", "target", "seeds", "value", "reference", "status"], targets(rows)),
             "", "## Choosing the default: SLM held-out accuracy against synthetic-no-feedback", "",
             "Points, paired by seed; a variant replaces `crosslm`'s default only if its mean over the "
             "three tasks is clearly above the default's (a tie keeps it; docs/results.md).", "",
             *_table(["method", *TASKS, "mean over tasks"], choice(rows)),
             "", "## Where the feedback pays: `crosslm` against synthetic-no-feedback", "",
             "Points, paired by seed (test split); judges: the clients' agreement with the oracle on the "
             "batch they scored (last round); generator: how often the oracle agrees with the intended label "
             "of synthetic-no-feedback's texts.", "",
             *_table(["task", "examples/client", "seeds", "SLM acc: plain → crosslm (gain)",
                      "LLM acc: plain → crosslm (gain)", "judges vs oracle",
                      "generator's labels vs oracle", "accepted vs oracle"], regimes(rows)),
             "", "![Accuracy and label agreement by private examples per client](plots/feedback-regimes.png)",
             ""]
    return "\n".join(lines)


def _homogeneous(rows: list[dict], task: str, method: str) -> list[dict]:
    """A task's homogeneous rows of one method, by private examples per client (both specs)."""
    return sorted((r for r in rows if r["task"] == task and r["method"] == method
                   and r["setting"].startswith("homogeneous")), key=lambda r: r["examples_per_client"])


def regimes(rows: list[dict]) -> list[list[str]]:
    """Where the feedback pays: ``crosslm`` against plain synthetic data at each number of private
    examples per client (paired by seed), beside how often the judges and the generator are right."""
    out = []
    for task in TASKS:
        reference = {r["examples_per_client"]: r for r in _homogeneous(rows, task, REFERENCE)}
        for row in _homogeneous(rows, task, "crosslm"):
            ref = reference.get(row["examples_per_client"])
            if ref is None:
                continue
            _, _, seeds = _paired(row, ref, "slm_acc")
            gains = []
            for key in ("slm_acc", "llm_acc"):
                value, base, _ = _paired(row, ref, key)
                gains.append("-" if value is None else
                             f"{_pct(base)} → {_pct(value)} ({100 * (value - base):+.1f})")
            agreement = [_seed_mean(source, key, seeds) for source, key in (
                (row, "judge_accuracy_mean"), (ref, "oracle_fidelity_generated"),
                (row, "oracle_fidelity_accepted"))]
            out.append([task, str(row["examples_per_client"]), ",".join(seeds), *gains,
                        *map(_pct, agreement)])
    return out


def _seed_mean(row: dict, key: str, seeds: list[str]) -> float | None:
    values = [row["by_seed"][s].get(key) for s in seeds]
    return statistics.mean(values) if values and None not in values else None


def plot(rows: list[dict], out: Path) -> Path:
    """Per task, against private examples per client: the SLMs' and the LLM's test accuracy, and how
    often the judges and the generator agree with the oracle; the feedback pays where judges beat it."""
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(3, len(tasks), figsize=(4.5 * len(tasks), 9.6), squeeze=False)
    panels = (("slm_acc", "SLM test accuracy (%)", ("local-only", REFERENCE, "crosslm", "centralized")),
              ("llm_acc", "LLM test accuracy (%)", (REFERENCE, "crosslm")))
    for column, task in enumerate(tasks):
        for ax, (key, ylabel, methods) in zip(axes[:2, column], panels, strict=True):
            for method in methods:
                points = [(r["examples_per_client"], r[f"{key}_mean"], r[f"{key}_std"] or 0.0)
                          for r in _homogeneous(rows, task, method) if r[f"{key}_mean"] is not None]
                if points:
                    x, y, err = zip(*points, strict=True)
                    ax.errorbar(x, [100 * v for v in y], yerr=[100 * e for e in err], marker="o", capsize=3,
                                label=method, color=COLOURS[method])
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
        axes[0, column].set_title(task)
        ax = axes[2, column]
        for method, key, label, colour in (
                ("crosslm", "judge_accuracy_mean", "judges (crosslm's SLMs)", "tab:purple"),
                (REFERENCE, "oracle_fidelity_generated", "generator's intended labels", "tab:brown")):
            points = [(r["examples_per_client"], 100 * r[key]) for r in _homogeneous(rows, task, method)
                      if r[key] is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label, color=colour)
        ax.set_ylabel("agree with the oracle (%)")
        ax.set_xlabel("private examples per client")
        ax.legend(fontsize=8)
        for ax in axes[:, column]:
            ax.set_xscale("log", base=2)
            ax.set_xlim(24, 680)
            ax.set_xticks(EXAMPLES, [str(n) for n in EXAMPLES])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    heldout = json.loads(HELDOUT.read_text(encoding="utf-8")) if HELDOUT.is_file() else {}
    rows = [row for spec, results in SPECS.items() for row in spec_rows(spec, results, heldout)]
    write_atomic(RESULTS / "feedback.json", json.dumps(rows, indent=2) + "\n")
    write_atomic(RESULTS / "feedback.md", markdown(rows))
    plot(rows, RESULTS / "plots" / "feedback-regimes.png")
    print(markdown(rows))


if __name__ == "__main__":
    main()
