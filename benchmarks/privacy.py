"""Benchmark: the privacy-utility trade-off of DP clients, and a membership-inference audit of each run.

For each setting (non-private, then each target ε) and seed: one CrossLM run of the
config with ``privacy.target_epsilon`` set (noise planned to spend at most it over
round 0 and all rounds) and ``audit.canaries`` planted in client-0, then
``crosslm audit`` on it (the server's loss attack through the ordinary score path).
Writes ``privacy.json`` (one row per setting), ``privacy.md`` (the table) and
``plots/privacy-utility.png`` into ``--results``. Run from the repo root:

    .venv/bin/python benchmarks/privacy.py [--epsilons none 8 4 1] [--seeds 0 1 2] [--set key=value ...]

A finished run (its summary.json and audit result exist) is not run again.
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


def _setting_name(epsilon: str) -> str:
    return "non-private" if epsilon == NON_PRIVATE else f"dp-eps{epsilon}"


def run_cell(config: Path | None, overrides: list[str], epsilon: str, delta: float, seed: int,
             canaries: int, root: Path) -> dict:
    """One run and its audit; (summary, audit result). Reuses a finished run's files."""
    out = root / _setting_name(epsilon) / f"seed-{seed}"
    summary_file, audit_file = out / "summary.json", out / AUDIT_RESULT
    if not (summary_file.is_file() and audit_file.is_file()):
        private = ([] if epsilon == NON_PRIVATE
                   else [f"privacy.target_epsilon={epsilon}", f"privacy.delta={delta}"])
        cfg = load_config(config, [*overrides, *private, f"seed={seed}", f"audit.canaries={canaries}",
                                   f"output_dir={out}"])
        run_experiment(cfg, "overwrite", progress=lambda message: print(f"[{out}] {message}", flush=True))
        audit_run(out)
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    return summary | json.loads(audit_file.read_text(encoding="utf-8"))


def row(epsilon: str, delta: float, cells: dict[int, dict]) -> dict:
    """One setting over its seeds: means (std for the SLM), the largest ε any client spent."""
    values = list(cells.values())
    slm = [c["slm_acc"] for c in values if c.get("slm_acc") is not None]
    llm = [c["llm_acc"] for c in values if c.get("llm_acc") is not None]
    spent = [c["epsilon_spent_max"] for c in values if c.get("epsilon_spent_max") is not None]
    seconds = [c["round_seconds_median"] for c in values if c.get("round_seconds_median") is not None]
    mean = lambda xs: statistics.mean(xs) if xs else None  # noqa: E731
    return {
        "setting": _setting_name(epsilon),
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
             f"- command: `{command}`",
             f"- machine: {host['cpu']}, {host['cores']} cores, torch {host['torch']}",
             "- ε: the target per client over round 0 and every round; ε spent: the largest any client "
             "spent (RDP accountant); MIA: the server's loss attack on client-0's canaries (mean over seeds)",
             "", "| setting | target ε | δ | ε spent | SLM acc. (mean ± std) | LLM acc. | MIA AUC | "
             "TPR @ 1 % FPR | s / round |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(" | ".join([
            f"| {r['setting']}", _cell(r["epsilon"], "{:g}"), _cell(r["delta"], "{:g}"),
            _cell(r["epsilon_spent_max"], "{:.2f}"),
            f"{_cell(r['slm_acc_mean'], '{:.1%}')} ± {_cell(r['slm_acc_std'], '{:.1%}')}",
            _cell(r["llm_acc_mean"], "{:.1%}"), _cell(r["mia_auc"], "{:.3f}"),
            _cell(r["mia_tpr_at_1pct_fpr"], "{:.1%}"), _cell(r["round_seconds_median"], "{:.1f}")]) + " |")
    return "\n".join(lines) + "\n\n![privacy-utility](plots/privacy-utility.png)\n"


def plot(rows: list[dict], out: Path) -> Path:
    """SLM accuracy against ε spent (log scale), the non-private run as a line; MIA AUC beside it."""
    private = sorted((r for r in rows if r["epsilon"] is not None), key=lambda r: r["epsilon_spent_max"] or 0)
    baseline = next((r for r in rows if r["epsilon"] is None), None)
    fig, (acc_ax, mia_ax) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [r["epsilon_spent_max"] for r in private]
    acc_ax.errorbar(xs, [r["slm_acc_mean"] for r in private], yerr=[r["slm_acc_std"] for r in private],
                    marker="o", capsize=3, label="DP clients")
    mia_ax.plot(xs, [r["mia_auc"] for r in private], marker="o", label="DP clients")
    if baseline is not None:
        acc_ax.axhline(baseline["slm_acc_mean"], color="grey", linestyle="--", label="non-private")
        mia_ax.axhline(baseline["mia_auc"], color="grey", linestyle="--", label="non-private")
    mia_ax.axhline(0.5, color="black", linewidth=0.5)
    for ax, ylabel in ((acc_ax, "SLM test accuracy (mean of clients)"), (mia_ax, "loss attack ROC AUC")):
        if xs:
            ax.set_xscale("log")
        ax.set_xlabel("ε spent (largest client)")
        ax.set_ylabel(ylabel)
        ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/sst2-default.yaml"))
    parser.add_argument("--epsilons", nargs="+", default=[NON_PRIVATE, "8", "4", "1"],
                        help=f"target ε per setting; {NON_PRIVATE}: the non-private run")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--canaries", type=int, default=50)
    parser.add_argument("--root", type=Path, default=Path("runs/bench-privacy"), help="run directories")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    args = parser.parse_args(argv)
    rows = []
    for epsilon in args.epsilons:
        cells = {seed: run_cell(args.config, args.overrides, epsilon, args.delta, seed, args.canaries,
                                args.root) for seed in args.seeds}
        rows.append(row(epsilon, args.delta, cells))
    command = shlex.join(["benchmarks/privacy.py", *(sys.argv[1:] if argv is None else argv)])
    host = machine()
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "privacy.json").write_text(
        json.dumps({"command": command, "machine": host, "rows": rows}, indent=2), encoding="utf-8")
    (args.results / "privacy.md").write_text(markdown(rows, command, host), encoding="utf-8")
    plot(rows, args.results / "plots" / "privacy-utility.png")
    return rows


if __name__ == "__main__":
    main()
