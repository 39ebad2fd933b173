"""``crosslm run --tensorboard``: the event files hold exactly the numbers of metrics.jsonl, step = round."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import _config as tiny_config
from typer.testing import CliRunner

from crosslm.cli import app
from crosslm.reporting import tensorboard as tb

Events = dict[str, list[tuple[int, float]]]


@pytest.fixture
def runner(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CROSSLM_DATA_DIR", str(shared_data))
    return CliRunner()


def _invoke(runner: CliRunner, *args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def read_events(run: Path) -> Events:
    """Every scalar event under ``run/tensorboard``, by tag, as TensorBoard itself loads them."""
    accumulator = EventAccumulator(str(run / tb.FOLDER), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def numbers(value: object) -> list[float]:
    """Every number in a record, at any depth."""
    if isinstance(value, dict):
        return [n for key, inner in value.items() if key != "round" for n in numbers(inner)]
    return [float(value)] if isinstance(value, int | float) else []


def assert_events_mirror(events: Events, metrics: list[dict]) -> None:
    def at(tag: str, step: int) -> float:
        values = [v for s, v in events[tag] if s == step]
        assert len(values) == 1, f"{tag} has {len(values)} events at step {step}"
        return values[0]

    for tag, points in events.items():  # one point per round: nothing duplicated
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), f"{tag}: steps {steps}"
    for m in metrics:
        r, phase = m["round"], m["phase"]
        if "seconds" in m:
            assert at(f"time/{phase}_seconds", r) == pytest.approx(m["seconds"], rel=1e-6)
        if phase == "C1-fit":
            accuracies = [c["test_accuracy"] for c in m["clients"].values()]
            for cid, res in m["clients"].items():
                assert at(f"slm/{cid}/test_accuracy", r) == pytest.approx(res["test_accuracy"], rel=1e-6)
                assert at(f"slm/{cid}/val_accuracy", r) == pytest.approx(res["val_accuracy"], rel=1e-6)
            assert at("slm/mean_test_accuracy", r) == pytest.approx(statistics.mean(accuracies), rel=1e-6)
        if phase == "E-llm-task":
            assert at("llm/accuracy", r) == pytest.approx(m["accuracy"], rel=1e-6)
        if phase == "communication":
            for cid, traffic in m["bytes"].items():
                assert at(f"communication/{cid}/down", r) == traffic["down"]
                assert at(f"communication/{cid}/up", r) == traffic["up"]
        if phase == "S4-select":
            assert at("synthetic/accepted", r) == m["accepted"]
        # whatever the phase: each of its numbers is a scalar at its round
        logged = [v for points in events.values() for s, v in points if s == r]
        for value in numbers(m):
            assert any(v == pytest.approx(value, rel=1e-6) for v in logged), (phase, value)
    assert {s for points in events.values() for s, _ in points} == {m["round"] for m in metrics}


def test_tensorboard_mirrors_the_metrics_and_a_resume_adds_no_duplicates(
        runner, tmp_path, tiny_causal_dir, tiny_encoder_dir):
    config = tiny_config(tmp_path, tiny_causal_dir, [tiny_encoder_dir], rounds=1)
    _invoke(runner, "run", str(config), "--tensorboard")
    run = tmp_path / "run"
    assert list((run / tb.FOLDER).glob("events.out.tfevents.*"))
    assert_events_mirror(read_events(run), read_metrics(run))

    # a crash in round 2 left a metrics line behind; the resumed run drops it and shows each round once
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps({"round": 2, "phase": "S1-generate", "seconds": 1234.5}) + "\n")
    _invoke(runner, "run", str(config), "--resume", "--set", "rounds=2", "--tensorboard")
    metrics, events = read_metrics(run), read_events(run)
    assert {m["round"] for m in metrics} == {0, 1, 2}
    assert_events_mirror(events, metrics)
    assert all(v != pytest.approx(1234.5) for _, v in events["time/S1-generate_seconds"])

    tb.export(run)  # what --engine flower writes after the run: the same events from metrics.jsonl alone
    assert read_events(run) == events


def test_without_the_flag_no_tensorboard_folder(runner, tmp_path, tiny_causal_dir, tiny_encoder_dir):
    _invoke(runner, "run", str(tiny_config(tmp_path, tiny_causal_dir, [tiny_encoder_dir], rounds=0)))
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    assert not (tmp_path / "run" / tb.FOLDER).exists()


def test_tag_scheme():
    record = {"round": 3, "phase": "S1-generate", "seconds": 2.5, "generated": 10, "kept": 8,
              "dropped": {"too short": 2}, "note": "text is not a scalar"}
    assert tb.scalars(record) == {"time/S1-generate_seconds": 2.5, "synthetic/generated": 10.0,
                                  "synthetic/kept": 8.0, "synthetic/dropped/too_short": 2.0}
    fit = {"round": 1, "phase": "C1-fit", "seconds": 4.0, "eval_seconds": 1.0, "clients": {
        "client-0": {"round": 1, "test_accuracy": 0.5, "metrics": {"train_loss": 0.25}},
        "client-1": {"round": 1, "test_accuracy": None, "metrics": {"train_loss": 0.75}}}}
    assert tb.scalars(fit) == {
        "time/C1-fit_seconds": 4.0, "time/C1-fit_eval_seconds": 1.0,
        "slm/client-0/test_accuracy": 0.5, "slm/client-0/train_loss": 0.25,
        "slm/client-1/train_loss": 0.75,
        "slm/mean_test_accuracy": 0.5, "slm/mean_train_loss": 0.5}
    assert tb.scalars({"round": 0, "phase": "E-new-phase", "score": 1}) == {"E-new-phase/score": 1.0}
    assert tb.scalars({"round": 0, "phase": "failure", "client": "client-0", "error": "boom"}) == {}
