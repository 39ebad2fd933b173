"""Differentially private clients: the accountant, DP-SGD on both SLM kinds, the budget check, the audit."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from opacus.accountants.utils import get_noise_multiplier
from safetensors.torch import load_file
from test_cli import _config
from test_client import FALLBACK, SYNTHETIC_R1
from typer.testing import CliRunner

from crosslm.cli import app
from crosslm.client import Client
from crosslm.config import ClientsConfig, ExperimentConfig, TrainConfig, check_method, load_config
from crosslm.errors import CrossLMError
from crosslm.models import training
from crosslm.models.classifier import build_classifier
from crosslm.models.training import TrainItem, per_example_loss
from crosslm.privacy import accounting, dp_training
from crosslm.privacy.accounting import DPPlan, Phase
from crosslm.privacy.audit import roc_auc, tpr_at_fpr
from crosslm.protocol import FitIns, ScoreIns
from crosslm.tasks.partition import ClientData
from crosslm.tasks.spec import Example

ROOT = Path(__file__).resolve().parents[1]

# -- the accountant ---------------------------------------------------------------------------


def test_epsilon_grows_with_rounds_and_falls_with_noise():
    round_zero, later = Phase(0.25, 40), Phase(0.25, 4)
    by_rounds = [accounting.epsilon([round_zero] + [later] * r, 1.0, 1e-5) for r in range(4)]
    assert by_rounds == sorted(by_rounds) and len(set(by_rounds)) == 4
    by_noise = [accounting.epsilon([round_zero, later], sigma, 1e-5) for sigma in (0.7, 1.0, 2.0, 4.0)]
    assert by_noise == sorted(by_noise, reverse=True) and len(set(by_noise)) == 4
    assert accounting.epsilon([], 1.0, 1e-5) == 0.0


@pytest.mark.parametrize("target", [1.0, 4.0, 8.0])
def test_planned_noise_spends_at_most_the_target(target):
    phases = [Phase(0.125, 80)]
    sigma = accounting.plan_noise(phases, target, 1e-5)
    spent = accounting.epsilon(phases, sigma, 1e-5)
    assert target - 0.011 <= spent <= target
    # one sampling rate: the same answer as Opacus's own planner
    opacus_sigma = get_noise_multiplier(target_epsilon=target, target_delta=1e-5, sample_rate=0.125,
                                        steps=80, accountant="rdp")
    assert sigma == pytest.approx(opacus_sigma, rel=0.02)
    # two sampling rates (round 0 and later rounds) compose
    two = [Phase(0.125, 80), Phase(0.5, 6)]
    assert target - 0.011 <= accounting.epsilon(two, accounting.plan_noise(two, target, 1e-5), 1e-5) <= target


def _dp_config(**privacy) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "rounds": 3,
        "privacy": privacy | {"local_training": {"lr": 1e-3, "epochs": 4, "batch_size": 8},
                              "round_training": {"lr": 1e-3, "epochs": 1, "batch_size": 8}},
        # the clients' own budgets are not what DP trains
        "clients": {"local_training": {"lr": 1e-3, "epochs": 9, "batch_size": 2}}})


def test_plan_counts_round_zero_and_every_round_and_refuses_an_unmet_target():
    config = _dp_config(target_epsilon=3.0)
    phases = accounting.planned_phases(config, n_private=64)
    assert phases == [Phase(8 / 64, 4 * 8), Phase(8 / 64, 3 * 8)]
    plan = accounting.plan(config, 64)
    assert plan.planned_epsilon <= 3.0
    assert (plan.local_training, plan.round_training) == (config.privacy.local_training,
                                                          config.privacy.round_training)
    with pytest.raises(CrossLMError, match="target_epsilon 3.0"):
        accounting.plan(_dp_config(target_epsilon=3.0, noise_multiplier=0.5), 64, "client-1")
    fixed = accounting.plan(_dp_config(noise_multiplier=0.5), 64)  # no target: accounted, not capped
    assert fixed.noise_multiplier == 0.5 and fixed.planned_epsilon > 3.0


def test_config_refuses_what_dp_would_not_cover():
    with pytest.raises(CrossLMError, match="target_epsilon or noise_multiplier"):
        load_config(None, ["privacy.delta=1e-6"])
    for setting, message in (("aggregation.weights=val_accuracy", "uniform"),
                             ("aggregation.weights=data_size", "uniform"), ("method=fedavg", "fedavg")):
        with pytest.raises(CrossLMError, match=message):
            check_method(load_config(None, ["privacy.target_epsilon=8", setting]))
    for method in ("crosslm", "local-only", "synthetic-no-feedback", "llm-zero-shot"):
        check_method(load_config(None, ["privacy.target_epsilon=8", f"method={method}"]))


# -- DP-SGD -----------------------------------------------------------------------------------


def _items(n: int) -> list[TrainItem]:
    return [TrainItem(text, label) for text, label in (FALLBACK * 4)[:n]]


@pytest.fixture(params=["encoder", "causal"])
def slm_dir(request, tiny_encoder_dir, tiny_causal_dir) -> Path:
    return tiny_encoder_dir if request.param == "encoder" else tiny_causal_dir


def test_per_example_clipping_bounds_the_update(slm_dir, task, monkeypatch):
    """Zero noise, one step over every record (q = 1), plain SGD at lr 1: the update is the mean of
    clipped per-example gradients, so its norm is at most max_grad_norm; unclipped it is far larger."""
    monkeypatch.setattr(dp_training, "make_optimizer",
                        lambda params, lr, kind: torch.optim.SGD(params, lr=lr))

    def update_norm(max_grad_norm: float) -> float:
        classifier = build_classifier(str(slm_dir), task, 2, seed=0)
        before = {k: v.clone() for k, v in classifier.trainable_state().items()}
        dp_training.train_classifier_dp(
            classifier, _items(8), [], plan=DPPlan(0.0, max_grad_norm, 1e-5, "rdp", 0.0), lr=1.0,
            epochs=1, batch_size=8, seed=0)
        after = classifier.trainable_state()
        return math.sqrt(sum(float((after[k] - before[k]).pow(2).sum()) for k in before))

    assert 0 < update_norm(1e-3) <= 1e-3 * 1.0001
    assert update_norm(1e6) > 1e-2  # the same step without effective clipping


def test_dp_step_in_length_chunks_is_the_whole_batch_step(slm_dir, task, monkeypatch):
    """Zero noise, every record in every step (q = 1), plain SGD: the update is the mean of the
    clipped per-example gradients, the same whether the batch ran in one pass or in chunks. In
    float32: in bfloat16 (dtype auto on a CPU with AMX) a different padding rounds differently."""
    monkeypatch.setattr(dp_training, "make_optimizer",
                        lambda params, lr, kind: torch.optim.SGD(params, lr=lr))
    items = [TrainItem(f"{item.text} {'and more ' * k}", item.label, weight=0.5 + k % 2)
             for k, item in enumerate(_items(8))]

    def update(rows: int) -> dict[str, torch.Tensor]:
        monkeypatch.setattr(training, "CHUNK_ROWS", rows)
        classifier = build_classifier(str(slm_dir), task, 2, seed=0, dtype="float32")
        before = {k: v.clone() for k, v in classifier.trainable_state().items()}
        dp_training.train_classifier_dp(
            classifier, items, [], plan=DPPlan(0.0, 0.05, 1e-5, "rdp", 0.0), lr=1.0, epochs=1,
            batch_size=8, seed=0)
        return {k: v - before[k] for k, v in classifier.trainable_state().items()}

    whole, chunked = update(8), update(3)
    assert any(delta.any() for delta in whole.values())
    for name, delta in whole.items():
        torch.testing.assert_close(chunked[name], delta, rtol=1e-4, atol=1e-7)


def test_dp_training_changes_only_the_encoders_head_or_the_lora_matrices(slm_dir, tiny_encoder_dir, task):
    classifier = build_classifier(str(slm_dir), task, 2, seed=0)
    before = {name: p.detach().clone() for name, p in classifier.named_parameters()}
    trainable = classifier.trainable_parameters()
    dp_training.train_classifier_dp(classifier, _items(8), [], plan=DPPlan(1.0, 1.0, 1e-5, "rdp", 0.0),
                                    lr=1e-2, epochs=1, batch_size=8, seed=0)
    changed = {name for name, p in classifier.named_parameters() if not torch.equal(before[name], p)}
    if slm_dir == tiny_encoder_dir:
        assert changed == {"head.weight", "head.bias"}
    else:
        assert changed and all("lora_" in name for name in changed)
    assert all(p.requires_grad for p in trainable)  # what was frozen for DP-SGD is trainable again


def test_dp_training_mixes_public_samples_and_accounts_only_private_ones(slm_dir, task):
    classifier = build_classifier(str(slm_dir), task, 2, seed=0)
    public = [TrainItem(t, 1, (0.2, 0.8)) for t in SYNTHETIC_R1]
    metrics, phase = dp_training.train_classifier_dp(
        classifier, _items(16), public, plan=DPPlan(1.0, 1.0, 1e-5, "rdp", 0.0), lr=1e-3, epochs=2,
        batch_size=4, seed=0, distill_weight=0.5)
    assert phase == Phase(4 / 16, 2 * 4)
    assert metrics == {"epochs_run": 2, "best_epoch": 2, "dp_steps": 8}  # no loss on private batches
    assert all(p.requires_grad for p in classifier.trainable_parameters())  # probe freezing undone
    assert classifier.predict_proba(SYNTHETIC_R1).shape == (3, 2)


def test_frozen_features_give_the_uncached_logits_and_need_a_frozen_encoder(tiny_encoder_dir, task):
    """In float32: in bfloat16 (dtype auto on a CPU with AMX) another padding rounds differently."""
    classifier = build_classifier(str(tiny_encoder_dir), task, 2, seed=0, dtype="float32").eval()
    texts = [text for text, _ in FALLBACK]
    with torch.no_grad():
        expected = classifier.label_logits(texts)
    with pytest.raises(CrossLMError, match="encoder still trains"), classifier.frozen_features():
        pass
    with dp_training._only_trained(classifier, classifier.dp_parameters()), classifier.frozen_features():
        first = classifier.label_logits(texts[::-1]).flip(0)  # another order and padding, the same rows
        assert len(classifier._features) == len(set(texts))
        classifier.encoder.embeddings.word_embeddings.weight.data.zero_()  # a cache hit ignores it
        again = classifier.label_logits(texts)
    assert torch.allclose(first, expected, atol=1e-5)
    assert torch.allclose(again, first.detach(), atol=1e-6)  # the head's rows in another order round apart
    assert classifier._features is None


def test_public_pass_trains_only_the_dp_parameters_on_the_public_samples(slm_dir, tiny_encoder_dir, task):
    """A head tipped by DP steps on skewed records is repaired by the accepted samples alone."""
    classifier = build_classifier(str(slm_dir), task, 2, seed=0)
    public = [TrainItem(text, label) for text, label in FALLBACK]

    def public_loss() -> float:
        with torch.no_grad():
            logits = classifier.label_logits([i.text for i in public])
            return float(per_example_loss(logits, public, 0.0).mean())

    before_loss = public_loss()
    before = {name: p.detach().clone() for name, p in classifier.named_parameters()}
    metrics = dp_training.train_on_public(classifier, public, budget=TrainConfig(lr=5e-2, epochs=10,
                                                                                 batch_size=4), seed=0)
    assert metrics["public_epochs"] == 10
    assert public_loss() < before_loss
    changed = {name for name, p in classifier.named_parameters() if not torch.equal(before[name], p)}
    if slm_dir == tiny_encoder_dir:
        assert changed == {"head.weight", "head.bias"}
    else:
        assert changed and all("lora_" in name for name in changed)
    assert all(p.requires_grad for p in classifier.trainable_parameters())


def test_dp_client_reports_epsilon_and_no_private_statistic(slm_dir, task, tmp_path):
    data = ClientData([Example(i.text, i.label) for i in _items(16)], [Example(*FALLBACK[0])])
    config = ClientsConfig(slm=[str(slm_dir)], lora_rank=2,
                           local_training=TrainConfig(lr=1e-3, epochs=5, batch_size=8),
                           round_training=TrainConfig(lr=1e-3, epochs=3, batch_size=8))
    # the plan's budgets train, not the clients' (under DP, docs/privacy.md)
    plan = DPPlan(1.0, 1.0, 1e-5, "rdp", 0.0, local_training=TrainConfig(lr=1e-3, epochs=2, batch_size=4),
                  round_training=TrainConfig(lr=1e-3, epochs=1, batch_size=4))

    def client(seed: int = 0) -> Client:
        return Client("c0", str(slm_dir), task, data, data.validation, tmp_path, config, seed, privacy=plan)

    fit0 = client().fit(FitIns(0))
    assert fit0.metrics["epochs_run"] == 2  # the fixed epochs: no early stopping on private data
    assert fit0.num_examples == 0 and math.isnan(fit0.val_accuracy)
    expected0 = accounting.epsilon([Phase(0.25, 8)], 1.0, 1e-5)
    assert fit0.metrics["epsilon"] == pytest.approx(expected0)
    score = client().score(ScoreIns(1, SYNTHETIC_R1))
    assert score.num_examples == 0 and math.isnan(score.val_accuracy) and score.votes == []
    with pytest.raises(CrossLMError, match="does not vote"):  # vote counts are outside the guarantee
        client().score(ScoreIns(1, SYNTHETIC_R1, votes=True))
    fit1 = client().fit(FitIns(1, SYNTHETIC_R1, [1, 0, 1], [[0.2, 0.8], [0.9, 0.1], [0.3, 0.7]]))
    expected1 = accounting.epsilon([Phase(0.25, 8), Phase(0.25, 4)], 1.0, 1e-5)
    assert fit1.metrics["epsilon"] == pytest.approx(expected1) and expected1 > expected0
    # round 1 also trained on the accepted samples alone, which spends no ε (round 0 had none)
    assert fit1.metrics["public_epochs"] == plan.public_training.epochs
    assert "public_epochs" not in fit0.metrics
    # a restarted client that runs round 1 again does not count it twice
    assert client(seed=1).fit(FitIns(1, SYNTHETIC_R1, [1, 0, 1], [[0.5, 0.5]] * 3)).metrics["epsilon"] \
        == pytest.approx(expected1)
    ledger = json.loads((tmp_path / "privacy.json").read_text())
    assert ledger == {"0": [[1.0, 0.25, 8]], "1": [[1.0, 0.25, 4]]}
    assert "train_loss" not in fit1.metrics


def test_a_dp_causal_client_trains_its_lora_at_lora_lr(slm_dir, task, tmp_path):
    """The budgets' rate (here 1e-2) trains an encoder's head; a LoRA takes ``lora_lr`` (here 1e-12,
    which AdamW turns into steps of about 1e-12) in round 0 and in the public pass of round 1."""
    data = ClientData([Example(i.text, i.label) for i in _items(16)], [Example(*FALLBACK[0])])
    budget = TrainConfig(lr=1e-2, epochs=2, batch_size=4)
    plan = DPPlan(1.0, 1.0, 1e-5, "rdp", 0.0, local_training=budget, round_training=budget,
                  public_training=budget, lora_lr=1e-12)
    client = Client("c0", str(slm_dir), task, data, data.validation, tmp_path,
                    ClientsConfig(slm=[str(slm_dir)], lora_rank=2), 0, privacy=plan)
    initial = build_classifier(str(slm_dir), task, 2, seed=0).trainable_state()
    client.fit(FitIns(0))
    client.fit(FitIns(1, SYNTHETIC_R1, [1, 0, 1], [[0.2, 0.8], [0.9, 0.1], [0.3, 0.7]]))
    after = load_file(tmp_path / "model-r1.safetensors")
    moved = max((after[name] - value).abs().max().item() for name, value in initial.items())
    if slm_dir.name.startswith("tiny-bert"):
        assert moved > 1e-3
    else:
        assert moved < 1e-9


# -- runs -------------------------------------------------------------------------------------


@pytest.fixture
def runner(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CROSSLM_DATA_DIR", str(shared_data))
    return CliRunner()


def _private_config(tmp_path: Path, llm: Path, slms: list[Path], **privacy) -> Path:
    path = _config(tmp_path, llm, slms, rounds=1)
    raw = yaml.safe_load(path.read_text())
    raw["privacy"] = privacy
    raw["evaluation"]["general_ability"] = False
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_budget_the_rounds_cannot_meet_stops_before_anything_is_written(runner, tmp_path,
                                                                           tiny_causal_dir,
                                                                           tiny_encoder_dir):
    config = _private_config(tmp_path, tiny_causal_dir, [tiny_encoder_dir], target_epsilon=1.0,
                             noise_multiplier=0.3)
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code != 0
    assert "target_epsilon 1.0" in result.output and "client-0" in result.output
    assert not (tmp_path / "run").exists()


def test_private_run_reports_epsilon_per_client_and_round_and_the_audit_scores_canaries(
        runner, tmp_path, tiny_causal_dir, tiny_encoder_dir):
    config = _private_config(tmp_path, tiny_causal_dir, [tiny_encoder_dir, tiny_causal_dir],
                             target_epsilon=8.0)
    result = runner.invoke(app, ["run", str(config), "--set", "audit.canaries=6"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    fits = [m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if m["phase"] == "C1-fit"]
    spent = {cid: [fit["clients"][cid]["metrics"]["epsilon"] for fit in fits] for cid in fits[0]["clients"]}
    assert set(spent) == {"client-0", "client-1"}
    for eps in spent.values():
        assert 0 < eps[0] < eps[1] <= 8.0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epsilon_spent_max"] == max(e[1] for e in spent.values())
    shown = runner.invoke(app, ["show", str(run)], catch_exceptions=False).output
    assert "ε spent" in shown
    report = runner.invoke(app, ["report", str(run)], catch_exceptions=False)
    assert report.exit_code == 0, report.output
    assert "client-1 ε spent" in (run / "report.html").read_text(encoding="utf-8")
    canaries = json.loads((run / "audit" / "canaries.json").read_text())
    assert len(canaries["members"]) == len(canaries["non_members"]) == 6
    audited = runner.invoke(app, ["audit", str(run)], catch_exceptions=False)
    assert audited.exit_code == 0, audited.output
    result = json.loads((run / "audit" / "result.json").read_text())
    assert json.dumps(result) in audited.output
    assert 0 <= result["mia_auc"] <= 1 and 0 <= result["mia_tpr_at_1pct_fpr"] <= 1
    assert result["canaries"] == 6 and result["after_round"] == 1


def test_tensorboard_shows_epsilon_per_client_and_round():
    from crosslm.reporting import tensorboard as tb

    record = {"round": 2, "phase": "C1-fit", "clients": {
        "client-0": {"test_accuracy": 0.5, "metrics": {"epsilon": 2.0}},
        "client-1": {"test_accuracy": 0.6, "metrics": {"epsilon": 3.0}}}}
    tags = tb.scalars(record)
    assert tags["slm/client-0/epsilon"] == 2.0 and tags["slm/client-1/epsilon"] == 3.0
    assert tags["slm/mean_epsilon"] == 2.5


# -- the audit's statistics -------------------------------------------------------------------


def test_roc_auc_known_answers():
    members, non_members = np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0, 2.0])
    assert roc_auc(members, non_members) == 1.0
    assert roc_auc(non_members, members) == 0.0
    assert roc_auc(np.ones(4), np.ones(5)) == 0.5
    assert roc_auc(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 0.5
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 30).astype(float), rng.integers(0, 5, 40).astype(float)
    pairs = [(x > y) + 0.5 * (x == y) for x in a for y in b]
    assert roc_auc(a, b) == pytest.approx(sum(pairs) / len(pairs))


def test_tpr_at_low_fpr_known_answers():
    non_members = np.arange(100, dtype=float)  # 1 % FPR: one false positive allowed, above 98
    assert tpr_at_fpr(np.array([99.5, 200.0, 98.5, 0.0]), non_members, 0.01) == 0.75
    assert tpr_at_fpr(np.array([98.0, 50.0]), non_members, 0.01) == 0.0
    assert tpr_at_fpr(np.array([1.0]), np.array([0.0, 2.0]), 0.01) == 0.0  # too few: no FP allowed


def test_privacy_benchmark_end_to_end_on_tiny_models(shared_data, monkeypatch, tmp_path, tiny_causal_dir,
                                                     tiny_encoder_dir):
    """benchmarks/privacy.py: a non-private and a DP setting, one seed, into a temp folder."""
    monkeypatch.setenv("CROSSLM_DATA_DIR", str(shared_data))
    spec = importlib.util.spec_from_file_location("privacy_bench", ROOT / "benchmarks" / "privacy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = _private_config(tmp_path, tiny_causal_dir, [tiny_encoder_dir])
    raw = yaml.safe_load(config.read_text())
    del raw["privacy"]
    config.write_text(yaml.safe_dump(raw))
    results = tmp_path / "results"
    args = ["--config", str(config), "--settings", "homogeneous", "--epsilons", "none", "8", "--seeds", "0",
            "--canaries", "4", "--root", str(tmp_path / "runs"), "--results", str(results),
            "--set", f"clients.slm=[{tiny_encoder_dir}]"]
    rows = bench.main(args)
    assert [(r["setting"], r["privacy"]) for r in rows] == [("homogeneous", "non-private"),
                                                            ("homogeneous", "dp-eps8")]
    stored = json.loads((results / "privacy.json").read_text())["rows"]
    assert stored == rows
    expected = {"setting", "privacy", "epsilon", "delta", "seeds", "slm_acc_mean", "slm_acc_std",
                "llm_acc_mean", "epsilon_spent_max", "mia_auc", "mia_tpr_at_1pct_fpr", "round_seconds_median"}
    assert all(set(r) == expected for r in rows)
    assert rows[0]["epsilon"] is None and rows[0]["epsilon_spent_max"] is None
    assert rows[1]["epsilon"] == 8.0 and 0 < rows[1]["epsilon_spent_max"] <= 8.0
    assert "| homogeneous | dp-eps8 | 8 |" in (results / "privacy.md").read_text()
    assert (results / "plots" / "privacy-utility.png").stat().st_size > 0
    # each run's figures are kept: a second call (a fresh checkout with the records) runs nothing
    shutil.rmtree(tmp_path / "runs")
    assert bench.main(args) == rows
    # a command for one level still writes every recorded row
    assert bench.main([*args[:5], "8", *args[7:]]) == rows
