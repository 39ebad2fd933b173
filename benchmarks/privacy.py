"""Benchmark: the privacy-utility trade-off of DP clients, and a membership-inference audit of each run.

For each client setting (homogeneous: four MiniLM-L6; heterogeneous: two MiniLM-L6 and
two SmolLM2-135M), seed and privacy level (non-private, then each target ε): one CrossLM
run of the config with ``privacy.target_epsilon`` set (noise planned to spend at most it
over round 0 and all rounds) and ``audit.canaries`` planted in client-0, then
``crosslm audit`` on it (the server's loss attack through the ordinary score path).
General ability (WikiText-2, ARC-Easy) is not measured: DP changes only the clients.
DP clients train with ``privacy.local_training`` and ``privacy.round_training`` (their
defaults: a DP head needs a larger step and batch than fine-tuning); the non-private run
keeps the clients' own budgets and early stopping.
Writes ``privacy.json`` (one row per setting and ε), ``privacy.md`` (the table) and
``plots/privacy-utility.png`` into ``--results``, again after every finished run, from
every run's figures kept in ``--results``/privacy-cells/ (so a checkout continues, and
runs of several commands make one table). From
the repo root:

    .venv/bin/python benchmarks/privacy.py [--settings homogeneous heterogeneous]
        [--epsilons none 8 3 1] [--seeds 0 1 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from crosslm.bench.results import machine  # noqa: E402
from crosslm.config import load_config  # noqa: E402
from crosslm.experiment import run_experiment  # noqa: E402
from crosslm.privacy.audit import AUDIT_RESULT  # noqa: E402
from crosslm.privacy.auditor import audit_run  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NON_PRIVATE = "none"


SETTINGS = {"homogeneous": "clients.slm=[minilm-l6]",
            "heterogeneous": "clients.slm=[minilm-l6,minilm-l6,smollm2-135m,smollm2-135m]"}
CELL_KEYS = ("slm_acc", "llm_acc", "epsilon_spent_max", "round_seconds_median", "mia_auc",
             "mia_tpr_at_1pct_fpr")


def _privacy_name(epsilon: str) -> str:
    return "non-private" if epsilon == NON_PRIVATE else f"dp-eps{epsilon}"


def run_cell(config: Path | None, overrides: list[str], cell: tuple[str, str, int], delta: float,
             canaries: int, root: Path, records: Path) -> dict:
    """One run and its audit: the figures a row needs, kept in ``records`` (a record is a done run)."""
    setting, epsilon, seed = cell
    record = records / setting / _privacy_name(epsilon) / f"seed-{seed}.json"
    if record.is_file():
        return json.loads(record.read_text(encoding="utf-8"))
    out = root / setting / _privacy_name(epsilon) / f"seed-{seed}"
    private = ([] if epsilon == NON_PRIVATE
               else [f"privacy.target_epsilon={epsilon}", f"privacy.delta={delta}"])
    cfg = load_config(config, [SETTINGS[setting], "evaluation.general_ability=false", *overrides, *private,
                               f"seed={seed}", f"audit.canaries={canaries}", f"output_dir={out}"])
    run_experiment(cfg, "overwrite", progress=lambda message: print(f"[{out}] {message}", flush=True))
    audit_run(out)
    figures = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    figures |= json.loads((out / AUDIT_RESULT).read_text(encoding="utf-8"))
    kept = {key: figures.get(key) for key in CELL_KEYS}
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(kept, indent=2), encoding="utf-8")
    return kept


def row(setting: str, epsilon: str, delta: float, cells: dict[int, dict]) -> dict:
    """One setting and ε over its seeds: means (std for the SLM), the largest ε any client spent."""
    values = list(cells.values())
    slm = [c["slm_acc"] for c in values if c.get("slm_acc") is not None]
    llm = [c["llm_acc"] for c in values if c.get("llm_acc") is not None]
    spent = [c["epsilon_spent_max"] for c in values if c.get("epsilon_spent_max") is not None]
    seconds = [c["round_seconds_median"] for c in values if c.get("round_seconds_median") is not None]
    mean = lambda xs: statistics.mean(xs) if xs else None  # noqa: E731
    return {
        "setting": setting, "privacy": _privacy_name(epsilon),
        "epsilon": None if epsilon == NON_PRIVATE else float(epsilon),
        "delta": None if epsilon == NON_PRIVATE else delta,
        "seeds": sorted(cells),
        "slm_acc_mean": mean(slm), "slm_acc_std": statistics.pstdev(slm) if slm else None,
        "llm_acc_mean": mean(llm),
        "epsilon_spent_max": max(spent) if spent else None,
        "mia_auc": mean([c["mia_auc"] for c in values]),
        "mia_tpr_at_1pct_fpr": mean([c["mia_tpr_at_1pct_fpr"] for c in values]),
        "round_seconds_median": statistics.median(seconds) if seconds else None,
    }


def _cell(value: float | None, template: str) -> str:
    return "-" if value is None else template.format(value)


def markdown(rows: list[dict], command: str, host: dict) -> str:
    lines = ["# Privacy-utility trade-off and membership-inference audit", "",
             f"- last command: `{command}`; the rows hold every run recorded in privacy-cells/, "
             "whichever command ran it",
             f"- machine: {host['cpu']}, {host['cores']} cores, torch {host['torch']}",
             "- ε: the target per client over round 0 and every round; ε spent: the largest any client "
             "spent (RDP accountant); MIA: the server's loss attack on client-0's canaries (mean over seeds)",
             "", "| clients | privacy | target ε | δ | ε spent | seeds | SLM acc. (mean ± std) | LLM acc. | "
             "MIA AUC | TPR @ 1 % FPR | s / round |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(" | ".join([
            f"| {r['setting']}", r["privacy"], _cell(r["epsilon"], "{:g}"), _cell(r["delta"], "{:g}"),
            _cell(r["epsilon_spent_max"], "{:.2f}"), ",".join(map(str, r["seeds"])),
            f"{_cell(r['slm_acc_mean'], '{:.1%}')} ± {_cell(r['slm_acc_std'], '{:.1%}')}",
            _cell(r["llm_acc_mean"], "{:.1%}"), _cell(r["mia_auc"], "{:.3f}"),
            _cell(r["mia_tpr_at_1pct_fpr"], "{:.1%}"), _cell(r["round_seconds_median"], "{:.1f}")]) + " |")
    return "\n".join(lines) + "\n\n![privacy-utility](plots/privacy-utility.png)\n"


def plot(rows: list[dict], out: Path) -> Path:
    """Per client setting: SLM accuracy against ε spent (log scale), the non-private run as a
    dashed line; the attack's AUC beside it."""
    fig, (acc_ax, mia_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for index, setting in enumerate(dict.fromkeys(r["setting"] for r in rows)):
        color = f"C{index}"
        mine = [r for r in rows if r["setting"] == setting]
        private = sorted((r for r in mine if r["epsilon"] is not None),
                         key=lambda r: r["epsilon_spent_max"] or 0)
        xs = [r["epsilon_spent_max"] for r in private]
        acc_ax.errorbar(xs, [r["slm_acc_mean"] for r in private], yerr=[r["slm_acc_std"] for r in private],
                        marker="o", capsize=3, color=color, label=f"{setting}, DP")
        mia_ax.plot(xs, [r["mia_auc"] for r in private], marker="o", color=color, label=f"{setting}, DP")
        for r in (r for r in mine if r["epsilon"] is None):
            for ax, key in ((acc_ax, "slm_acc_mean"), (mia_ax, "mia_auc")):
                ax.axhline(r[key], color=color, linestyle="--", label=f"{setting}, non-private")
    mia_ax.axhline(0.5, color="black", linewidth=0.5)
    any_private = any(r["epsilon_spent_max"] for r in rows)
    for ax, ylabel in ((acc_ax, "SLM test accuracy (mean of clients)"), (mia_ax, "loss attack ROC AUC")):
        if any_private:
            ax.set_xscale("log")
        ax.set_xlabel("ε spent (largest client)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize="small")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_results(rows: list[dict], command: str, results: Path) -> None:
    host = machine()
    results.mkdir(parents=True, exist_ok=True)
    (results / "privacy.json").write_text(
        json.dumps({"command": command, "machine": host, "rows": rows}, indent=2), encoding="utf-8")
    (results / "privacy.md").write_text(markdown(rows, command, host), encoding="utf-8")
    plot(rows, results / "plots" / "privacy-utility.png")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/sst2-default.yaml"))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--epsilons", nargs="+", default=[NON_PRIVATE, "8", "3", "1"],
                        help=f"target ε per setting; {NON_PRIVATE}: the non-private run")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--canaries", type=int, default=50)
    parser.add_argument("--root", type=Path, default=Path("runs/bench-privacy"), help="run directories")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    args = parser.parse_args(argv)
    command = shlex.join(["benchmarks/privacy.py", *(sys.argv[1:] if argv is None else argv)])
    records = args.results / "privacy-cells"
    # a seed of every ε before the next seed: an early stop still shows the whole curve
    for setting in args.settings:
        for seed in args.seeds:
            for epsilon in args.epsilons:
                run_cell(args.config, args.overrides, (setting, epsilon, seed), args.delta, args.canaries,
                         args.root, records)
                rows = recorded_rows(records, args.delta)
                write_results(rows, command, args.results)
    return rows


def recorded_rows(records: Path, delta: float) -> list[dict]:
    """A row per setting and privacy level from every recorded run, whichever command ran it
    (non-private first, then by falling ε)."""
    rows = []
    for setting in SETTINGS:
        levels = [p for p in (records / setting).glob("*") if p.is_dir()]
        epsilons = [NON_PRIVATE] * any(p.name == _privacy_name(NON_PRIVATE) for p in levels) + sorted(
            (p.name.removeprefix("dp-eps") for p in levels if p.name.startswith("dp-eps")),
            key=float, reverse=True)
        for epsilon in epsilons:
            cells = {int(f.stem.removeprefix("seed-")): json.loads(f.read_text(encoding="utf-8"))
                     for f in (records / setting / _privacy_name(epsilon)).glob("seed-*.json")}
            rows.append(row(setting, epsilon, delta, cells))
    return rows


if __name__ == "__main__":
    main()
