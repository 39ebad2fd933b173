"""Benchmark: the CPU a Flower ClientApp process of an encoder silo spends before its work.

Flower 1.41 runs every message in a fresh ClientApp process, which imports crosslm's
client side and loads the silo's SLM. This starts that process ``--runs`` times and
reports the median CPU seconds (user + system) of the imports alone and of imports plus
``build_classifier``; CPU time, not wall time, so that a busy machine changes it little.
``--src`` measures another checkout's ``src`` (e.g. an older commit) the same way.
Adds the result under ``--label`` to benchmarks/results/clientapp-start.json. Run from the
repo root:

    .venv/bin/python benchmarks/clientapp_start.py [--slm minilm-l6] [--runs 5] [--src DIR --label NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from crosslm.bench.results import machine

RESULTS = Path(__file__).parent / "results"
IMPORTS = "import crosslm.runtime.flower_app, crosslm.client"
LOAD = ("from crosslm.models.classifier import build_classifier\n"
        "from crosslm.tasks.spec import load_task\n"
        "build_classifier({slm!r}, load_task('sst2'), lora_rank=8, seed=0)")
REPORT = ("import resource, sys\n"
          "r = resource.getrusage(resource.RUSAGE_SELF)\n"
          "print(r.ru_utime + r.ru_stime, 'peft' in sys.modules, 'opacus' in sys.modules)")


def cpu_seconds(code: str, src: str | None) -> tuple[float, bool, bool]:
    env = dict(os.environ) | ({"PYTHONPATH": src} if src else {})
    out = subprocess.run([sys.executable, "-c", f"{code}\n{REPORT}"], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[-3]), out[-2] == "True", out[-1] == "True"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slm", default="minilm-l6")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--src", help="another checkout's src directory, measured instead of this one")
    parser.add_argument("--label", default="this checkout", help="the result's key in the JSON file")
    args = parser.parse_args()
    result: dict = {"slm": args.slm, "runs": args.runs}
    for name, code in (("imports", IMPORTS), ("imports_and_load", f"{IMPORTS}\n{LOAD.format(slm=args.slm)}")):
        runs = [cpu_seconds(code, args.src) for _ in range(args.runs)]
        result[f"{name}_cpu_s_median"] = round(statistics.median(r[0] for r in runs), 2)
        result[f"{name}_loads_peft"], result[f"{name}_loads_opacus"] = runs[0][1], runs[0][2]
    result |= {"machine": machine(), "command": shlex.join(["python", *sys.argv])}
    path = RESULTS / "clientapp-start.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps(results | {args.label: result}, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
