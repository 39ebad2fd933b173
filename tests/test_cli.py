"""End to end through the command line on tiny models: a 2-round run, show, resume, refusals, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from crosslm.cli import app

PHASES = {"C1-fit", "E-llm-task", "E-llm-general", "communication", "S1-generate", "C2-score",
          "S2-aggregate", "S3-improve-generator", "S4-select", "S5-enhance-llm"}


def _config(tmp_path: Path, llm: Path, slms: list[Path], rounds: int = 2) -> Path:
    config = {
        "task": "sst2", "rounds": rounds, "output_dir": str(tmp_path / "run"),
        "clients": {"num_clients": 2, "examples_per_client": 24, "validation_per_client": 8,
                    "slm": [str(s) for s in slms], "lora_rank": 2,
                    "local_training": {"lr": 1e-3, "epochs": 2},
                    "round_training": {"epochs": 1}},
        "server": {"llm": str(llm), "lora_rank": 2,
                   "classifier_training": {"epochs": 1}},
        "generation": {"samples_per_label": 6, "max_new_tokens": 12, "min_words": 1},
        "selection": {"threshold": 0.0, "top_fraction": 1.0},
        "feedback": {"threshold": 0.0},
        "evaluation": {"slm_test_size": 32, "llm_test_size": 32, "wikitext_tokens": 128,
                       "arc_easy_questions": 4},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def runner(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CROSSLM_DATA_DIR", str(shared_data))
    return CliRunner()


def _invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_two_round_run_writes_a_complete_run_directory(runner, tmp_path, tiny_causal_dir,
                                                      tiny_encoder_dir):
    # heterogeneous clients: one encoder classifier, one causal LM with LoRA
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir, tiny_causal_dir])
    result = _invoke(runner, "run", str(config))
    assert result.exit_code == 0, result.output
    assert "CrossLM after 2 rounds" in result.output
    run = tmp_path / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {m["phase"] for m in metrics} == PHASES
    assert sorted({m["round"] for m in metrics}) == [0, 1, 2]
    # S5 trains on the round's accepted set A_r, not on every sample accepted so far
    accepted = {m["round"]: m["accepted"] for m in metrics if m["phase"] == "S4-select"}
    trained = {m["round"]: m["llm_train_samples"] for m in metrics if m["phase"] == "S5-enhance-llm"}
    assert trained == accepted and all(accepted.values())
    samples = [json.loads(line) for line in (run / "rounds/001/samples.jsonl").read_text().splitlines()]
    assert samples and all(set(s["client_probs"]) == {"client-0", "client-1"} for s in samples)
    assert (run / "rounds/002/adapters/generator.safetensors").is_file()
    assert (run / "clients/client-1/model-r2.safetensors").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["bytes_per_client_per_round"] > 0
    assert yaml.safe_load((run / "config.yaml").read_text())["rounds"] == 2

    shown = _invoke(runner, "show", str(run))
    assert shown.exit_code == 0 and "SLM client-1" in shown.output

    again = _invoke(runner, "run", str(config))
    assert again.exit_code == 2 and "--resume" in again.output


def test_resume_continues_after_the_last_completed_round(runner, tmp_path, tiny_causal_dir,
                                                         tiny_encoder_dir):
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir], rounds=1)
    assert _invoke(runner, "run", str(config)).exit_code == 0
    metrics_file = tmp_path / "run" / "metrics.jsonl"
    # a crash in round 2 left a partial line set behind: resume must drop it, not duplicate it
    with metrics_file.open("a") as handle:
        handle.write(json.dumps({"round": 2, "phase": "S1-generate", "seconds": 1.0}) + "\n")
    result = _invoke(runner, "run", str(config), "--resume", "--set", "rounds=2")
    assert result.exit_code == 0, result.output
    assert "resuming after round 1" in result.output
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    for round_ in (0, 1, 2):
        fits = [m for m in metrics if m["round"] == round_ and m["phase"] == "C1-fit"]
        assert len(fits) == 1
    assert len([m for m in metrics if m["round"] == 2 and m["phase"] == "S1-generate"]) == 1


def test_resume_refuses_a_changed_config(runner, tmp_path, tiny_causal_dir, tiny_encoder_dir):
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir], rounds=0)
    assert _invoke(runner, "run", str(config)).exit_code == 0
    result = _invoke(runner, "run", str(config), "--resume", "--set", "seed=7")
    assert result.exit_code == 2 and "seed" in result.output


def test_overwrite_starts_again(runner, tmp_path, tiny_causal_dir, tiny_encoder_dir):
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir], rounds=0)
    assert _invoke(runner, "run", str(config)).exit_code == 0
    (tmp_path / "run" / "marker").write_text("old")
    assert _invoke(runner, "run", str(config), "--overwrite").exit_code == 0
    assert not (tmp_path / "run" / "marker").exists()


@pytest.mark.parametrize(("override", "expected"), [
    ("generation.topk=3", "generation.topk"),
    ("rounds=-1", "rounds"),
    ("clients.slm=[no-such-model]", "unknown model 'no-such-model'"),
    ("clients.examples_per_client=100000", "training pool has only"),
    ("task=no-such-task", "unknown task"),
])
def test_bad_input_is_refused_before_anything_is_written(runner, tmp_path, tiny_causal_dir,
                                                         tiny_encoder_dir, override, expected):
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir])
    result = _invoke(runner, "run", str(config), "--set", override)
    assert result.exit_code == 2
    assert expected in result.output
    assert not (tmp_path / "run").exists()


def test_a_malformed_data_file_names_file_and_line(runner, tmp_path, tiny_causal_dir,
                                                   tiny_encoder_dir, shared_data):
    data = tmp_path / "data" / "sst2"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text('{"text": "fine", "label": 1}\n{"text": "oops", "label": 7}\n')
    (data / "dev.jsonl").write_text('{"text": "ok", "label": 0}\n')
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir])
    result = _invoke(runner, "run", str(config), "--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 2
    assert "train.jsonl:2" in result.output and "label" in result.output
    assert not (tmp_path / "run").exists()


def test_help_explains_every_command():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "show"):
        assert command in result.output


def test_resume_fills_settings_added_since_the_run_started_with_their_defaults(
        runner, tmp_path, tiny_causal_dir, tiny_encoder_dir):
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir], rounds=0)
    assert _invoke(runner, "run", str(config)).exit_code == 0
    stored = tmp_path / "run" / "config.yaml"
    older = yaml.safe_load(stored.read_text())
    del older["server"]["device"], older["generation"]["prompt_format"]  # written by an older crosslm
    stored.write_text(yaml.safe_dump(older))
    result = _invoke(runner, "run", str(config), "--resume", "--set", "rounds=0")
    assert result.exit_code == 0, result.output
