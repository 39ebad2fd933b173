"""A user-defined task without code changes: examples/tasks/support_tickets.yaml through ``crosslm run``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crosslm.cli import app
from crosslm.tasks.spec import load_task

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "examples/support_tickets.yaml"  # as the README runs it, from the repository root
TASK = ROOT / "examples" / "tasks" / "support_tickets.yaml"


def tiny(llm: Path, slm: Path, output: Path, rounds: int) -> list[str]:
    """--set flags that put the example experiment on tiny models and a small budget."""
    settings = [f"server.llm={llm}", f"clients.slm=[{slm}]", f"output_dir={output}", f"rounds={rounds}",
                "server.lora_rank=2", "server.classifier_training.epochs=1", "clients.lora_rank=2",
                "clients.local_training.epochs=2", "generation.samples_per_label=4",
                "generation.max_new_tokens=12", "generation.min_words=1", "selection.threshold=0",
                "feedback.threshold=0"]
    return [arg for setting in settings for arg in ("--set", setting)]


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """From the repository root, and without the benchmark data: the task brings its own."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("CROSSLM_DATA_DIR", raising=False)
    return CliRunner()


def test_the_example_task_runs_end_to_end(runner, tmp_path, tiny_causal_dir, tiny_encoder_dir):
    run = tmp_path / "run"
    result = runner.invoke(app, ["run", EXPERIMENT, *tiny(tiny_causal_dir, tiny_encoder_dir, run, 1)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "CrossLM after 1 round" in result.output
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    test_lines = (TASK.parent / "support_tickets" / "test.jsonl").read_text().splitlines()
    llm_evals = [m for m in metrics if m["phase"] == "E-llm-task"]
    assert [m["round"] for m in llm_evals] == [0, 1]
    assert all(m["num_examples"] == len(test_lines) for m in llm_evals)  # the task's own test file
    fits = [m for m in metrics if m["phase"] == "C1-fit"]
    assert all(c["num_examples"] == 16 for m in fits for c in m["clients"].values())
    samples = [json.loads(line) for line in (run / "rounds/001/samples.jsonl").read_text().splitlines()]
    assert samples and {s["label"] for s in samples} <= set(range(4))
    assert all(len(s["soft_label"]) == 4 for s in samples)
    # offline and without the benchmark data: general ability is not measured, and the run says so
    assert "general ability not measured" in result.output and "CROSSLM_DATA_DIR" in result.output
    assert [m["round"] for m in metrics if m["phase"] == "note"] == [0]
    assert not [m for m in metrics if m["phase"] == "E-llm-general"]


def test_the_example_task_measures_general_ability_from_the_benchmark_data(
        runner, tmp_path, tiny_causal_dir, tiny_encoder_dir, shared_data):
    run = tmp_path / "run"
    settings = [*tiny(tiny_causal_dir, tiny_encoder_dir, run, 0), "--set", "evaluation.wikitext_tokens=64",
                "--set", "evaluation.arc_easy_questions=2", "--data-dir", str(shared_data)]
    result = runner.invoke(app, ["run", EXPERIMENT, *settings], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    general = [m for m in metrics if m["phase"] == "E-llm-general"]
    assert len(general) == 1 and general[0]["arc_easy_acc"] in (0.0, 0.5, 1.0)


def test_data_folder_is_relative_to_the_task_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anywhere else: the data is still found beside the YAML
    assert Path(load_task(str(TASK)).data_folder) == TASK.parent / "support_tickets"
    copy = tmp_path / "elsewhere" / "task.yaml"
    copy.parent.mkdir()
    copy.write_text(TASK.read_text())
    assert Path(load_task("elsewhere/task.yaml").data_folder) == tmp_path / "elsewhere" / "support_tickets"


def _edited_task(tmp_path: Path, old: str, new: str) -> tuple[Path, int | None]:
    """The example task with one line changed; (its path, the changed line's number or None if removed)."""
    lines = TASK.read_text().splitlines()
    number = next(i for i, line in enumerate(lines, start=1) if line.startswith(old))
    lines[number - 1] = new
    path = tmp_path / "bad_task.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, number if new else None


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("verbalizers:", "", "missing field 'verbalizers'"),
    ("item_prefix:", 'item_prefx: "Ticket:"', "unknown field 'item_prefx'"),
    ("verbalizers:", 'verbalizers: [" billing", " delivery", " technical"]',
     "verbalizers has 3 entries, labels has 4"),
    ("classify_template:", 'classify_template: "Ticket: {ticket}\\nTeam:"',
     "classify_template must contain '{text}'"),
])
def test_a_bad_task_yaml_names_file_line_and_field(runner, tmp_path, old, new, expected):
    path, line = _edited_task(tmp_path, old, new)
    result = runner.invoke(app, ["run", EXPERIMENT, "--set", f"task={path}",
                                 "--set", f"output_dir={tmp_path / 'run'}"])
    assert result.exit_code == 2
    assert expected in result.output
    where = f"{path}:{line}:" if line else f"{path}:"
    assert where in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_a_missing_data_folder_names_the_expected_file(runner, tmp_path):
    path, _ = _edited_task(tmp_path, "data_folder:", "data_folder: tickets-2024")
    result = runner.invoke(app, ["run", EXPERIMENT, "--set", f"task={path}",
                                 "--set", f"output_dir={tmp_path / 'run'}"])
    assert result.exit_code == 2
    assert f"{tmp_path / 'tickets-2024' / 'train.jsonl'}" in result.output
