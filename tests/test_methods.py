"""Each baseline method end to end through the CLI on tiny models, on the splits CrossLM uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import _config
from typer.testing import CliRunner

from crosslm.baselines import average, few_shot_task
from crosslm.cli import app
from crosslm.protocol import AverageRes, pack_weights
from crosslm.tasks.spec import load_task


@pytest.fixture
def runner(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CROSSLM_DATA_DIR", str(shared_data))
    return CliRunner()


def _run(runner: CliRunner, config: Path, method: str, out: Path, *sets: str) -> tuple[dict, list[dict]]:
    args = ["run", str(config), "--set", f"method={method}", "--output-dir", str(out)]
    result = runner.invoke(app, args + [a for s in sets for a in ("--set", s)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "summary.json").read_text()), metrics


def test_slm_only_baselines_share_the_splits_and_skip_the_llm(runner, tmp_path, tiny_causal_dir,
                                                              tiny_encoder_dir):
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir], rounds=2)
    local, local_metrics = _run(runner, config, "local-only", tmp_path / "local")
    crosslm, crosslm_metrics = _run(runner, config, "crosslm", tmp_path / "crosslm")
    assert local["method"] == "local-only" and local["rounds"] == 0 and local["llm_acc"] is None
    assert {m["phase"] for m in local_metrics} == {"C1-fit", "communication"}
    # local-only is exactly CrossLM's round 0: same splits, seed and budget
    accuracies = lambda fit: {c: (r["val_accuracy"], r["test_accuracy"]) for c, r in fit["clients"].items()}  # noqa: E731
    assert accuracies(local_metrics[0]) == accuracies(crosslm_metrics[0])
    assert local["slm_acc"] == crosslm["slm_acc_local_only_mean"]

    central, metrics = _run(runner, config, "centralized", tmp_path / "central")
    fit = metrics[0]["clients"]
    assert list(fit) == ["centralized-0"] and central["rounds"] == 0
    assert fit["centralized-0"]["num_examples"] == 2 * 24  # the union of both silos


def test_fedavg_averages_weights_every_round(runner, tmp_path, tiny_causal_dir, tiny_encoder_dir):
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir], rounds=2)
    summary, metrics = _run(runner, config, "fedavg", tmp_path / "fedavg")
    rounds = [m["round"] for m in metrics if m["phase"] == "E-slm-global"]
    assert rounds == [0, 1, 2] and summary["slm_acc"] == metrics[-2]["accuracy"]
    # weights cross the network: far more than CrossLM's texts and label distributions
    assert summary["bytes_per_client_per_round"] > 100_000
    assert (tmp_path / "fedavg/rounds/002/global-slm.safetensors").is_file()

    hetero = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir, tiny_causal_dir])
    result = runner.invoke(app, ["run", str(hetero), "--set", "method=fedavg", "--output-dir",
                                 str(tmp_path / "refused")])
    assert result.exit_code == 2 and "every client needs the same SLM" in result.output
    assert not (tmp_path / "refused").exists()


def test_llm_only_and_no_feedback_baselines(runner, tmp_path, tiny_causal_dir, tiny_encoder_dir):
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir], rounds=1)
    zero, metrics = _run(runner, config, "llm-zero-shot", tmp_path / "zero")
    assert {m["phase"] for m in metrics} == {"E-llm-task", "E-llm-general"}
    assert zero["slm_acc"] is None and zero["llm_acc"] == zero["llm_acc_zero_shot"]
    assert zero["bytes_per_client_per_round"] is None
    few, _ = _run(runner, config, "llm-few-shot", tmp_path / "few")
    assert few["wikitext2_ppl"] == pytest.approx(zero["wikitext2_ppl"])  # the same base model

    plain, metrics = _run(runner, config, "synthetic-no-feedback", tmp_path / "plain")
    phases = [m["phase"] for m in metrics if m["round"] == 1]
    assert "C2-score" not in phases and "S3-improve-generator" not in phases
    samples = [json.loads(line) for line in (tmp_path / "plain/rounds/001/samples.jsonl").open()]
    assert samples and all(s["accepted"] and s["soft_label"][s["label"]] == 1.0 for s in samples)
    assert plain["slm_acc"] is not None and plain["llm_acc"] is not None


def test_centralized_llm_trains_s5_on_the_union_of_the_silos(runner, tmp_path, tiny_causal_dir,
                                                             tiny_encoder_dir):
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir], rounds=2)
    summary, metrics = _run(runner, config, "centralized-llm", tmp_path / "central-llm")
    assert [(m["round"], m["phase"]) for m in metrics] == [(0, "E-llm-task"), (0, "E-llm-general"),
                                                           (1, "S5-enhance-llm"), (1, "E-llm-task"),
                                                           (1, "E-llm-general")]
    assert metrics[2]["llm_train_samples"] == 2 * 24  # every silo's training examples, once
    assert summary["slm_acc"] is None and summary["rounds"] == 1
    assert summary["llm_acc"] == summary["llm_acc_crosslm"] and summary["llm_acc_zero_shot"] is not None
    assert (tmp_path / "central-llm/rounds/001").is_dir()


def test_few_shot_prompt_shows_labelled_public_demonstrations():
    task = load_task("sst2")
    prompt = few_shot_task(task, 2, seed=0).classify_prompt("a {braced} text")
    assert prompt.endswith(task.classify_prompt("a {braced} text"))
    assert prompt.count(" negative\n\n") == 2 and prompt.count(" positive\n\n") == 2


def test_average_weights_by_examples_and_keeps_integer_buffers():
    import torch

    a = {"w": torch.tensor([0.0, 4.0]), "ids": torch.tensor([1, 2])}
    b = {"w": torch.tensor([4.0, 8.0]), "ids": torch.tensor([1, 2])}
    replies = {"a": AverageRes(0, 3, pack_weights(a), 0.5), "b": AverageRes(0, 1, pack_weights(b), 0.5)}
    out = average(replies, a)
    assert torch.equal(out["w"], torch.tensor([1.0, 5.0])) and torch.equal(out["ids"], a["ids"])


def test_a_round_that_relabels_accepts_every_text_under_the_judges_label(runner, tmp_path, tiny_causal_dir,
                                                                          tiny_encoder_dir):
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir], rounds=1)
    result = runner.invoke(app, ["run", str(config), "--output-dir", str(tmp_path / "run"), "--set",
                                 "selection.flips=relabel", "--set", "selection.balance=false",
                                 "--set", "selection.threshold=top-label"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    samples = [json.loads(line) for line in (tmp_path / "run/rounds/001/samples.jsonl").open()]
    top = [max(range(len(s["soft_label"])), key=s["soft_label"].__getitem__) for s in samples]
    assert samples and all(s["accepted"] for s in samples)  # top-label: every text has a first label
    assert [s["accepted_label"] for s in samples] == top
    assert any(y != s["label"] for y, s in zip(top, samples, strict=True)), "no text was relabelled"
    metrics = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").open()]
    fit = next(m for m in metrics if m["phase"] == "C1-fit" and m["round"] == 1)
    assert {c["metrics"]["num_accepted"] for c in fit["clients"].values()} == {len(samples)}
