"""Benchmark: seconds per CrossLM round on each engine, for the same experiment and seed.

- in-process: everything in one process;
- flower-sim: Flower's Simulation Engine (Ray) on this machine;
- flower (deployment): a SuperLink and one SuperNode per silo on 127.0.0.1, insecure,
  each SuperNode with its silo's data (the in-process partition, written to a file)
  in its node config; every message runs in a fresh ClientApp process;
- flower (deployment with silo workers): the same, and beside each SuperNode a
  ``crosslm silo-worker`` to which each message's ClientApp hands its work
  (``crosslm.runtime.silo_link``): the silo's model stays loaded between messages.

A round's seconds are its wall time S1-S5 + C2 + C1 (C1 includes the clients' own
evaluation in every engine), median over rounds 1..R; ``flower_deploy_overhead_pct``
is the deployment's round time over the in-process one: what moving messages
through Flower, and a fresh ClientApp process per message, cost
(``flower_deploy_workers_overhead_pct``: the same with silo workers). Per engine it also
records each round's engine overhead (see ``round_times``), the peak RSS of all its
processes and the bytes per client per round.
Writes benchmarks/results/engines.json. Run from the repo root:

    .venv/bin/python benchmarks/engines.py [--set key=value ...] [--only in_process ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

from crosslm.bench.results import machine
from crosslm.reporting.summary import COMPUTE_PHASES

RESULTS = Path(__file__).parent / "results"
ROOT = Path("runs/bench-engines")
ENGINES = {"in_process": "in-process", "flower_sim": "flower-sim", "flower_deploy": "deploy/run",
           "flower_deploy_workers": "deploy-workers/run"}
BIN = Path(sys.executable).parent
QUIET = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


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


class PeakMemory:
    """Peak total RSS of this process's descendants and of Flower's processes, sampled every 0.5 s.

    Flower's SuperExec detaches the ServerApp and ClientApp processes it starts,
    so they are found by name as well as by parentage.
    """

    def __init__(self) -> None:
        self.peak_mb, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss_mb(self) -> float:
        procs = {p.pid: p for p in psutil.Process().children(recursive=True)}
        for p in psutil.process_iter(["name", "cmdline"]):
            if any(word in " ".join(p.info["cmdline"] or []) for word in ("flwr-", "flower-")):
                procs.setdefault(p.pid, p)
        total = 0
        for p in procs.values():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def crosslm(config: Path, output: Path, *args: str) -> dict:
    """Run one experiment through the CLI; its summary."""
    subprocess.run([str(BIN / "crosslm"), "run", str(config), "--output-dir", str(output.resolve()),
                    "--overwrite", *args], check=True, env={**os.environ, **QUIET})
    return json.loads((output / "summary.json").read_text())


def deploy(config: Path, overrides: list[str], root: Path, output: Path, workers: bool = False) -> dict:
    """SuperLink + one SuperNode (and with ``workers`` a silo worker) per silo on loopback; run;
    stop every process started here."""
    env = {**os.environ, **QUIET, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    port, procs = free_port(), []
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def start(name: str, args: list[str], **extra_env: str) -> None:
        procs.append(subprocess.Popen(args, env={**env, **extra_env}, cwd=root, start_new_session=True,
                                      stdout=(logs / f"{name}.log").open("w"), stderr=subprocess.STDOUT))

    from crosslm.config import load_config
    from crosslm.runtime.flower_submit import export_silos

    silos = export_silos(load_config(config, overrides), root / "silos", workers=workers)
    # The silos share this machine's cores and run at once (in-process they take turns): each
    # gets its share of threads, as one would give co-located services; more threads than cores
    # makes every process wait on the others' spinning OpenMP threads.
    threads = str(max(1, (os.cpu_count() or 1) // len(silos)))
    try:
        start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--port", str(port),
                            "--disable-runtime-dependency-installation"])
        for k, (node_config, worker) in enumerate(silos):
            if worker is not None:
                start(f"worker-{k}", [str(BIN / "crosslm"), "silo-worker", str(worker)],
                      OMP_NUM_THREADS=threads)
            start(f"client-{k}", [str(BIN / "flower-supernode"), "--insecure", "--superlink",
                                  f"127.0.0.1:{port}", "--port", str(free_port()),
                                  "--node-config", node_config], OMP_NUM_THREADS=threads)
        wait_for_port(port)  # SuperNodes retry until it is up; the run waits for all of them
        return crosslm(config, output, "--engine", "flower", "--superlink", f"127.0.0.1:{port}",
                       *[a for o in overrides for a in ("--set", o)])
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def round_times(run: Path, workers: int) -> list[dict]:
    """Per CrossLM round: wall seconds (S1-S5, C1, C2 as the server timed them) and engine overhead.

    The overhead is what a client phase took beyond the clients' own compute (as each
    client timed itself) when ``workers`` clients run at a time: all of it one after
    another in-process, in waves of Ray actors in simulation, the longest client when
    every silo runs at once (deployment).
    """
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    out = []
    for r in sorted({m["round"] for m in metrics if m["round"] > 0}):
        phases = {m["phase"]: m for m in metrics if m["round"] == r and m["phase"] in COMPUTE_PHASES}
        clients = {"C1-fit": [c["metrics"]["seconds"] for c in phases["C1-fit"]["clients"].values()],
                   "C2-score": list(phases["C2-score"]["client_seconds"].values())}
        compute = {name: max(max(s), sum(s) / workers) for name, s in clients.items()}
        out.append({"wall_s": round(sum(m["seconds"] for m in phases.values()), 2),
                    "overhead_s": round(sum(phases[name]["seconds"] - compute[name] for name in clients), 2)})
    return out


def previous_rerun() -> list[str]:
    path = RESULTS / "engines.json"
    return json.loads(path.read_text()).get("rerun_alone", []) if path.is_file() else []


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/sst2-default.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--only", choices=[*ENGINES, "none"], action="append",
                        help="rerun only this engine (repeatable; 'none': only recompute the figures); "
                             "the others' last runs are reused")
    args = parser.parse_args()
    config, sets = Path(args.config), [a for o in args.overrides for a in ("--set", o)]
    # The deployment waits for every silo: a slow first message must not drop one.
    num_clients = yaml.safe_load(config.read_text()).get("clients", {}).get("num_clients", 4)
    deploy_sets = [*args.overrides, f"clients.min_replies={num_clients}"]
    runs = {
        "in_process": lambda: crosslm(config, ROOT / "in-process", *sets),
        "flower_sim": lambda: crosslm(config, ROOT / "flower-sim", "--engine", "flower-sim", *sets),
        "flower_deploy": lambda: deploy(config, deploy_sets, ROOT / "deploy", ROOT / "deploy" / "run"),
        "flower_deploy_workers": lambda: deploy(config, deploy_sets, ROOT / "deploy-workers",
                                                ROOT / "deploy-workers" / "run", workers=True),
    }
    summaries, peaks = {}, {}
    for name, run in runs.items():
        if args.only and name not in args.only:
            if not (ROOT / ENGINES[name] / "summary.json").is_file():
                continue  # never run on this machine: its figures stay empty
            previous = json.loads((RESULTS / "engines.json").read_text())
            summaries[name] = json.loads((ROOT / ENGINES[name] / "summary.json").read_text())
            peaks[name] = previous["peak_rss_mb"][name]
            continue
        with PeakMemory() as peak:
            summaries[name] = run()
        peaks[name] = round(peak.peak_mb)
    workers = {"in_process": 1,
               "flower_sim": min(os.cpu_count() or 1, num_clients),  # as run_simulation_engine sizes Ray
               "flower_deploy": num_clients, "flower_deploy_workers": num_clients}
    times = {name: round_times(ROOT / ENGINES[name], workers[name]) for name in summaries}
    seconds = {name: round(statistics.median(t["wall_s"] for t in rounds), 2)
               for name, rounds in times.items()}
    overhead = {name: round(100 * (seconds[name] / seconds["in_process"] - 1), 1)
                for name in ("flower_deploy", "flower_deploy_workers")
                if {"in_process", name} <= seconds.keys()}
    result = {
        **{f"{name}_round_s": seconds.get(name) for name in runs},
        "flower_deploy_overhead_pct": overhead.get("flower_deploy"),
        "flower_deploy_workers_overhead_pct": overhead.get("flower_deploy_workers"),
        "engine_overhead_s_median": {name: statistics.median(t["overhead_s"] for t in rounds)
                                     for name, rounds in times.items()},
        "rounds": times,
        "peak_rss_mb": peaks,
        **{key: {name: s[key] for name, s in summaries.items()}
           for key in ("bytes_per_client_per_round", "slm_acc", "llm_acc")},
        "machine": machine(),
        "command": f"python benchmarks/engines.py --config {args.config}" + "".join(
            f" --set {shlex.quote(o)}" for o in args.overrides) + "".join(
            f" --only {o}" for o in args.only or []),
        # engines rerun later on their own with --only (e.g. after CPU contention)
        "rerun_alone": sorted((set(args.only or []) | set(previous_rerun())) - {"none"}),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engines.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
