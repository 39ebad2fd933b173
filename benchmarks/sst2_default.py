"""Benchmark: the default experiment (SST-2, 4 MiniLM clients, Gemma 3 270M, 3 rounds).

Writes benchmarks/results/sst2-default.json and sst2-default.md. Run from the repo root:

    .venv/bin/python benchmarks/sst2_default.py [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sampler_speed import s1

from crosslm.bench.results import machine
from crosslm.config import load_config
from crosslm.federation_setup import build_server
from crosslm.reporting.summary import COMPUTE_PHASES
from crosslm.tasks.spec import load_task

RESULTS = Path(__file__).parent / "results"
CONFIG = "configs/sst2-default.yaml"
TARGETS = {  # on a 2-core CPU (issue 28 for the times)
    "round_seconds_median": "<= 60 s",
    "evaluation_seconds": "<= 90 s",
    "total_seconds": "<= 300 s (model and evaluation caches warm)",
    "sampler_speedup": ">= 3x HF generate",
    "slm_gain_points": ">= 3",
    "llm_gain_points": ">= 15",
    "wikitext2_ppl_change_pct": "<= 3 % worse",
    "arc_easy_change_points": ">= -1",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    run_dir = Path("runs/bench-sst2-default")
    command = ["crosslm", "run", CONFIG, "--output-dir", str(run_dir),
               "--overwrite", *[a for o in args.overrides for a in ("--set", o)]]
    start = time.time()
    subprocess.run([str(Path(sys.executable).with_name("crosslm")), *command[1:]], check=True)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = json.loads((run_dir / "summary.json").read_text())
    result = {
        **{k: summary.get(k) for k in (
            "slm_acc_local_only_mean", "slm_acc_crosslm_mean", "llm_acc_zero_shot",
            "llm_acc_zero_shot_raw", "llm_acc_zero_shot_calibrated", "llm_acc_crosslm",
            "wikitext2_ppl_before", "wikitext2_ppl_after", "arc_easy_acc_before",
            "arc_easy_acc_after", "round_seconds", "round_seconds_median", "evaluation_seconds",
            "bytes_per_client_per_round", "clients")},
        "peak_rss_mb": round(peak_rss_mb, 1),
        "total_seconds": round(time.time() - start, 1),
        "machine": machine(),
        "command": "python benchmarks/sst2_default.py" + "".join(
            f" --set {shlex.quote(o)}" for o in args.overrides),
        "crosslm_command": shlex.join(command),
    }
    result["slm_gain_points"] = 100 * (result["slm_acc_crosslm_mean"] - result["slm_acc_local_only_mean"])
    result["llm_gain_points"] = 100 * (result["llm_acc_crosslm"] - result["llm_acc_zero_shot"])
    if result["wikitext2_ppl_after"] is not None:
        result["wikitext2_ppl_change_pct"] = 100 * (
            result["wikitext2_ppl_after"] / result["wikitext2_ppl_before"] - 1)
        result["arc_easy_change_points"] = 100 * (
            result["arc_easy_acc_after"] - result["arc_easy_acc_before"])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    result["phase_seconds"] = phase_seconds(metrics)
    result["evaluations_cached"] = [f"{m['phase']} round {m['round']}" for m in metrics if m.get("cached")]
    result |= sampler_against_generate(args.overrides)
    result["sampler_speedup"] = result["sampler_tokens_per_s"] / result["hf_generate_tokens_per_s"]
    result["targets"] = TARGETS
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sst2-default.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "sst2-default.md").write_text(markdown(result))
    print(markdown(result))


def phase_seconds(metrics: list[dict]) -> dict[str, float]:
    """Median seconds of each round phase over rounds 1..R (C1 without the clients' evaluation)."""
    by_phase: dict[str, list[float]] = {}
    for m in metrics:
        if m["round"] > 0 and m["phase"] in COMPUTE_PHASES:
            by_phase.setdefault(m["phase"], []).append(m["seconds"] - m.get("eval_seconds", 0))
    return {phase: round(statistics.median(seconds), 2) for phase, seconds in by_phase.items()}


def sampler_against_generate(overrides: list[str]) -> dict[str, float]:
    """S1's sampler and HF generate on this experiment's round-1 prompts, settings and batch size."""
    config = load_config(CONFIG, overrides)
    server = build_server(config, load_task(config.task))
    prompts, _ = server.generation_prompts(1)
    speeds = s1(server.llm, prompts, server.sampling_params(), config.generation.batch_size)
    return {"sampler_tokens_per_s": round(speeds["s1_tokens_per_s"], 1),
            "hf_generate_tokens_per_s": round(speeds["hf_generate_tokens_per_s"], 1)}


def markdown(r: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    rows = [
        ("SLM accuracy, mean of clients (%)", pct(r["slm_acc_local_only_mean"]),
         pct(r["slm_acc_crosslm_mean"]), f"{r['slm_gain_points']:+.1f} pts", TARGETS["slm_gain_points"]),
        ("LLM SST-2 accuracy (%)", pct(r["llm_acc_zero_shot"]), pct(r["llm_acc_crosslm"]),
         f"{r['llm_gain_points']:+.1f} pts", TARGETS["llm_gain_points"]),
        ("WikiText-2 perplexity", f"{r['wikitext2_ppl_before']:.2f}", f"{r['wikitext2_ppl_after']:.2f}",
         f"{r['wikitext2_ppl_change_pct']:+.2f} %", TARGETS["wikitext2_ppl_change_pct"]),
        ("ARC-Easy accuracy (%)", pct(r["arc_easy_acc_before"]), pct(r["arc_easy_acc_after"]),
         f"{r['arc_easy_change_points']:+.1f} pts", TARGETS["arc_easy_change_points"]),
    ]
    lines = ["| metric | before | after | change | target |", "|---|---:|---:|---:|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    lines += [
        "",
        f"- round time (S1-S5, C1, C2), median of {len(r['round_seconds'])} rounds: "
        f"{r['round_seconds_median']:.1f} s (target {TARGETS['round_seconds_median']}); "
        f"rounds: {', '.join(f'{s:.1f}' for s in r['round_seconds'])} s",
        f"- evaluation time (reported apart): {r['evaluation_seconds']:.1f} s (target "
        f"{TARGETS['evaluation_seconds']}); from the evaluation cache: "
        f"{', '.join(r['evaluations_cached']) or 'none'}",
        f"- median seconds per phase: {', '.join(f'{k} {v:.1f}' for k, v in r['phase_seconds'].items())}",
        f"- S1 sampler {r['sampler_tokens_per_s']:.0f} tokens/s, HF generate "
        f"{r['hf_generate_tokens_per_s']:.0f} tokens/s on the same prompts: {r['sampler_speedup']:.1f}x "
        f"(target {TARGETS['sampler_speedup']})",
        f"- bytes per client per round (both directions): {r['bytes_per_client_per_round']:,.0f}",
        f"- peak RSS: {r['peak_rss_mb']:,.0f} MB; whole run {r['total_seconds']:.0f} s "
        f"(target {TARGETS['total_seconds']})",
        f"- machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, torch {r['machine']['torch']}",
        f"- command: `{r['command']}`",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
