"""``--engine flower``: submit an experiment to a running SuperLink with Flower's own ``flwr`` CLI.

crosslm writes the Flower app (a pyproject.toml naming crosslm's ServerApp and
ClientApp, the experiment config in its run config) and a private Flower config
naming the SuperLink, into a temporary folder, so a user never edits either.
The SuperLink's machine and every SuperNode's need crosslm installed: Flower's
runtime dependency installation stays off.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from crosslm.config import ExperimentConfig
from crosslm.errors import CrossLMError

CONNECTION = "crosslm"
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_app(directory: Path, config: ExperimentConfig, mode: str) -> Path:
    """A Flower app folder whose components are crosslm's apps and whose run config is ``config``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(f"""\
[project]
name = "crosslm-app"
version = "0.1.0"
description = "CrossLM: a server LLM and client SLMs improve each other without moving private data"
license = "Apache-2.0"

[tool.flwr.app]
publisher = "crosslm"

[tool.flwr.app.components]
serverapp = "crosslm.runtime.flower_app:server_app"
clientapp = "crosslm.runtime.flower_app:client_app"

[tool.flwr.app.config]
crosslm-config = {_toml_string(config.model_dump_json())}
crosslm-mode = {_toml_string(mode)}
""", encoding="utf-8")
    return directory


def write_flower_home(directory: Path, superlink: str, root_certificates: Path | None) -> Path:
    """A Flower config with one connection; TLS when a CA certificate is given, else insecure."""
    directory.mkdir(parents=True, exist_ok=True)
    security = (f"root-certificates = {_toml_string(str(root_certificates.resolve()))}"
                if root_certificates else "insecure = true")
    (directory / "config.toml").write_text(f"""\
[superlink]
default = "{CONNECTION}"

[superlink.{CONNECTION}]
address = {_toml_string(superlink)}
{security}
""", encoding="utf-8")
    return directory


def _flwr() -> str:
    beside = Path(sys.executable).with_name("flwr")
    found = str(beside) if beside.is_file() else shutil.which("flwr")
    if not found:
        raise CrossLMError("--engine flower needs Flower's CLI: pip install 'flwr[simulation]==1.41.0'")
    return found


def _call(args: list[str], env: dict[str, str], timeout: float | None = 120) -> str:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise CrossLMError(f"{' '.join(args[:2])} failed:\n{done.stdout}{done.stderr}".rstrip())
    return done.stdout


def _json(text: str) -> dict:
    """The JSON object in ``flwr --format json`` output (it may print notices before it)."""
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        return {}


def export_silos(config: ExperimentConfig, out: Path, workers: bool = False) -> list[tuple[str, Path | None]]:
    """Write each in-process silo's private data and test split to files; the node config of each,
    and with ``workers`` the folder of its ``crosslm silo-worker`` (which the node config names).

    For trying a deployment on one machine with the partition in-process runs use.
    """
    from crosslm.federation_setup import load_experiment_data, silo_assignment

    data = load_experiment_data(config, resolve_models=False)
    test = data.test[:config.evaluation.slm_test_size]
    node_configs = []
    for k, silo in enumerate(data.silos):
        assigned = silo_assignment(config, k)
        folder = (out / assigned.name).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        files = {"data-path": ("data.jsonl", silo.train),
                 "validation-path": ("validation.jsonl", silo.validation),
                 "test-path": ("test.jsonl", test)}
        for name, rows in files.values():
            lines = "".join(json.dumps({"text": r.text, "label": r.label}) + "\n" for r in rows)
            (folder / name).write_text(lines, encoding="utf-8")
        worker = folder / "worker" if workers else None
        values = {"silo-name": assigned.name, **{key: folder / name for key, (name, _) in files.items()},
                  "state-dir": folder / "state", "slm": assigned.model,
                  **({"silo-worker": worker} if worker else {})}
        node_configs.append((" ".join(f'{key}="{value}"' for key, value in values.items())
                             + f" seed={assigned.seed}", worker))  # the in-process client's seed
    return node_configs


def run_status(run_id: int, env: dict[str, str]) -> str:
    listing = _json(_call([_flwr(), "list", "--run-id", str(run_id), CONNECTION, "--format", "json"], env))
    runs = listing.get("runs") or [{}]
    return str(runs[0].get("status", "unknown"))


def submit(config: ExperimentConfig, mode: str, superlink: str, root_certificates: Path | None,
           progress: Callable[[str], None] = print, stream: bool = True) -> int:
    """Start the run, stream its log until it ends, and fail unless it completed; returns the run id."""
    with tempfile.TemporaryDirectory(prefix="crosslm-flower-") as tmp:
        app = write_app(Path(tmp) / "app", config, mode)
        env = {**os.environ, **QUIET_ENV,
               "FLWR_HOME": str(write_flower_home(Path(tmp) / "home", superlink, root_certificates))}
        started = _json(_call([_flwr(), "run", str(app), CONNECTION, "--format", "json"], env))
        if not started.get("success") or started.get("run-id") is None:
            raise CrossLMError(f"the SuperLink at {superlink} did not start the run: {started}")
        run_id = int(started["run-id"])
        progress(f"Flower run {run_id} started on {superlink}")
        if stream:
            subprocess.run([_flwr(), "log", str(run_id), CONNECTION, "--stream"], env=env, check=False)
        status = run_status(run_id, env)
        if "completed" not in status:
            raise CrossLMError(f"Flower run {run_id} ended as {status!r}; `flwr log {run_id}` shows why")
        return run_id
