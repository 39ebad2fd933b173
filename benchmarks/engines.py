"""Benchmark: seconds per CrossLM round on each engine, for the same experiment and seed.

- in-process: everything in one process;
- flower-sim: Flower's Simulation Engine (Ray) on this machine;
- flower (deployment): a SuperLink and one SuperNode per silo on 127.0.0.1, insecure,
  each SuperNode with its silo's data (the in-process partition, written to a file)
  in its node config; every message runs in a fresh ClientApp process.

A round's seconds are the summary's ``round_seconds_median`` (S1-S5, C1, C2, without
evaluation), so the deployment overhead is what moving messages through Flower costs.
Writes benchmarks/results/engines.json. Run from the repo root:

    .venv/bin/python benchmarks/engines.py [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

RESULTS = Path(__file__).parent / "results"
ROOT = Path("runs/bench-engines")
ENGINES = {"in_process": "in-process", "flower_sim": "flower-sim", "flower_deploy": "deploy/run"}
BIN = Path(sys.executable).parent
QUIET = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": __import__("torch").__version__, "flwr": __import__("flwr").__version__}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def crosslm(config: Path, output: Path, *args: str) -> dict:
    """Run one experiment through the CLI; its summary."""
    subprocess.run([str(BIN / "crosslm"), "run", str(config), "--output-dir", str(output.resolve()),
                    "--overwrite", *args], check=True, env={**os.environ, **QUIET})
    return json.loads((output / "summary.json").read_text())


def deploy(config: Path, overrides: list[str], root: Path, output: Path) -> dict:
    """SuperLink + one SuperNode per silo on loopback; run; stop every process started here."""
    env = {**os.environ, **QUIET}
    port, procs = free_port(), []
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def start(name: str, args: list[str]) -> None:
        procs.append(subprocess.Popen(args, env=env, cwd=root, start_new_session=True,
                                      stdout=(logs / f"{name}.log").open("w"), stderr=subprocess.STDOUT))

    from crosslm.config import load_config
    from crosslm.runtime.flower_submit import export_silos

    try:
        start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--port", str(port),
                            "--disable-runtime-dependency-installation"])
        for k, node_config in enumerate(export_silos(load_config(config, overrides), root / "silos")):
            start(f"client-{k}", [str(BIN / "flower-supernode"), "--insecure", "--superlink",
                                  f"127.0.0.1:{port}", "--port", str(free_port()),
                                  "--node-config", node_config])
        wait_for_port(port)  # SuperNodes retry until it is up; the run waits for all of them
        return crosslm(config, output, "--engine", "flower", "--superlink", f"127.0.0.1:{port}",
                       *[a for o in overrides for a in ("--set", o)])
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/sst2-default.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--only", choices=ENGINES, action="append",
                        help="rerun only this engine (repeatable); the others' last runs are reused")
    args = parser.parse_args()
    config, sets = Path(args.config), [a for o in args.overrides for a in ("--set", o)]
    # The deployment waits for every silo: a slow first message must not drop one.
    num_clients = yaml.safe_load(config.read_text()).get("clients", {}).get("num_clients", 4)
    deploy_sets = [*args.overrides, f"clients.min_replies={num_clients}"]
    runs = {
        "in_process": lambda: crosslm(config, ROOT / "in-process", *sets),
        "flower_sim": lambda: crosslm(config, ROOT / "flower-sim", "--engine", "flower-sim", *sets),
        "flower_deploy": lambda: deploy(config, deploy_sets, ROOT / "deploy", ROOT / "deploy" / "run"),
    }
    summaries = {name: run() if not args.only or name in args.only
                 else json.loads((ROOT / ENGINES[name] / "summary.json").read_text())
                 for name, run in runs.items()}
    seconds = {name: s["round_seconds_median"] for name, s in summaries.items()}
    result = {
        "in_process_round_s": round(seconds["in_process"], 2),
        "flower_sim_round_s": round(seconds["flower_sim"], 2),
        "flower_deploy_round_s": round(seconds["flower_deploy"], 2),
        "flower_deploy_overhead_pct": round(100 * (seconds["flower_deploy"] / seconds["in_process"] - 1), 1),
        "round_seconds": {name: s["round_seconds"] for name, s in summaries.items()},
        "slm_acc_crosslm_mean": {name: s["slm_acc_crosslm_mean"] for name, s in summaries.items()},
        "llm_acc_crosslm": {name: s["llm_acc_crosslm"] for name, s in summaries.items()},
        "machine": machine(),
        "command": f"python benchmarks/engines.py --config {args.config}" + "".join(
            f" --set {shlex.quote(o)}" for o in args.overrides),
        "rerun_alone": args.only or [],  # engines rerun later with --only (e.g. after CPU contention)
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engines.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
