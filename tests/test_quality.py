"""The data-quality meter (issue #29): its measures on known answers, the oracle's cache, and a
tiny experiment that logs it every round."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
from test_cli import _config
from typer.testing import CliRunner

from crosslm.cli import app
from crosslm.quality import measures
from crosslm.quality.oracle import ORACLE_SEED, load_or_train_oracle, oracle_dir, oracle_key, real_sample
from crosslm.quality.summary import HEADLINE
from crosslm.tasks.spec import Example


def test_distinct_n_known_answers():
    assert measures.distinct_n(["a b c d"], 1) == 1.0 and measures.distinct_n(["a b c d"], 2) == 1.0
    # k copies of a text whose n-grams are distinct: the floor 1/k (n-grams never cross texts)
    assert measures.distinct_n(["a b c d"] * 5, 1) == pytest.approx(1 / 5)
    assert measures.distinct_n(["a b c d"] * 5, 2) == pytest.approx(1 / 5)
    assert measures.distinct_n(["the the the"], 1) == pytest.approx(1 / 3)
    assert measures.distinct_n(["x"], 2) is None  # no bigram at all
    assert measures.distinct_n(["A b", "a B"], 2) == pytest.approx(1 / 2)  # lower-cased
    assert measures.distinct_by_label(["a b", "a b", "c d"], [0, 0, 1], 1) == {0: 0.5, 1: 1.0}


def test_frechet_distance_known_answers():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 8))
    assert measures.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # a shifted copy: the covariances cancel, the means are |shift|^2 apart
    assert measures.frechet_distance(a, a + 0.5) == pytest.approx(8 * 0.25, rel=1e-6)
    # the same value as the textbook formula with scipy's sqrtm of the product
    b = rng.normal(loc=0.3, scale=1.5, size=(60, 8))
    eps = np.eye(8) * measures.FRECHET_EPS
    cov_a, cov_b = np.cov(a, rowvar=False) + eps, np.cov(b, rowvar=False) + eps
    textbook = (np.sum((a.mean(0) - b.mean(0)) ** 2)
                + np.trace(cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real))
    assert measures.frechet_distance(a, b) == pytest.approx(textbook, rel=1e-6)
    # fewer texts than dimensions: a singular covariance still gives a finite, non-negative distance
    few = rng.normal(size=(5, 32))
    assert measures.frechet_distance(few, few) == pytest.approx(0.0, abs=1e-6)
    assert measures.frechet_distance(few, rng.normal(size=(7, 32))) > 0


def test_fidelity_and_judge_accuracy():
    intended = [0, 1, 1, 0]
    assert measures.agreement(intended, intended) == 1.0  # an oracle that always agrees
    assert measures.agreement([1, 1, 1, 1], intended) == 0.5 and measures.agreement([], []) is None
    oracle = [0, 1, 1, 0]
    same = [{"a": [0.9, 0.1], "b": [0.8, 0.2]}, {"a": [0.2, 0.8], "b": [0.1, 0.9]},
            {"a": [0.3, 0.7], "b": [0.4, 0.6]}, {"a": [0.6, 0.4], "b": [0.7, 0.3]}]
    assert measures.judge_accuracy(same, oracle) == {"a": 1.0, "b": 1.0}
    flipped = [{"a": p["a"], "b": p["b"][::-1]} for p in same]
    flipped[3] = {"a": [0.1, 0.9]}  # b did not score the last sample; a got it wrong
    assert measures.judge_accuracy(flipped, oracle) == {"a": 0.75, "b": 0.0}


def test_oracle_is_trained_once_then_loaded(tiny_encoder_dir, task):
    pool = [Example(f"{'good great fine' if k % 2 else 'bad awful poor'} film number {k}", k % 2)
            for k in range(120)]
    test = [Example("a good great film", 1), Example("a bad awful film", 0)]
    sample = real_sample(pool, task.num_labels, oracle_examples=40, reference_texts=16)
    assert len(sample.oracle_train) + len(sample.oracle_validation) == 40
    assert {ex.label for ex in sample.oracle_train} == {0, 1}
    chosen = {ex.text for ex in [*sample.oracle_train, *sample.oracle_validation]}
    assert not chosen & {*sample.reference, *sample.probe} and not set(sample.reference) & set(sample.probe)
    assert real_sample(pool, task.num_labels, 40, 16) == sample  # fixed by the seed

    first = load_or_train_oracle(str(tiny_encoder_dir), task, sample, test)
    second = load_or_train_oracle(str(tiny_encoder_dir), task, sample, test)
    assert not first.cached and second.cached and second.info == first.info
    assert 0 <= first.info["test_accuracy"] <= 1 and first.info["test_examples"] == 2
    texts = [ex.text for ex in pool[:20]]
    assert second.labels(texts) == first.labels(texts)
    key = oracle_key(str(tiny_encoder_dir), task, sample, test, ORACLE_SEED)
    assert (oracle_dir(key) / "oracle.json").is_file()
    fewer = real_sample(pool, task.num_labels, oracle_examples=30, reference_texts=16)
    assert not load_or_train_oracle(str(tiny_encoder_dir), task, fewer, test).cached  # another key


@pytest.fixture
def runner(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CROSSLM_DATA_DIR", str(shared_data))
    return CliRunner()


def _run(runner: CliRunner, config: Path, out: Path, *sets: str) -> tuple[dict, list[dict], str]:
    args = ["run", str(config), "--output-dir", str(out)]
    result = runner.invoke(app, args + [a for s in sets for a in ("--set", s)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "summary.json").read_text()), metrics, result.output


def test_experiment_measures_data_quality_every_round(runner, tmp_path, tiny_causal_dir, tiny_encoder_dir):
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir], rounds=2)
    meter = ["evaluation.data_quality=true", f"evaluation.embedding_model={tiny_encoder_dir}",
             "evaluation.oracle_examples=40", "evaluation.reference_texts=16",
             "evaluation.general_ability=false"]
    summary, metrics, output = _run(runner, config, tmp_path / "on", *meter)
    records = [m for m in metrics if m["phase"] == "E-data-quality"]
    assert [m["round"] for m in records] == [1, 2]
    assert records[0]["oracle_cached"] is False and "oracle_cached" not in records[1]
    generated = {m["round"]: m["kept"] for m in metrics if m["phase"] == "S1-generate"}
    for m in records:
        assert m["generated"]["n"] == generated[m["round"]] and 0 <= m["generated"]["oracle_fidelity"] <= 1
        assert m["generated"]["frechet_distance"] > 0 and 0 < m["accepted"]["distinct_2"] <= 1
        assert set(m["judge_accuracy"]) == {"client-0", "client-1"}
    assert all(summary[key] is not None for key in HEADLINE)
    assert [r["round"] for r in summary["data_quality_by_round"]] == [1, 2]
    assert summary["closeness_accepted"] == records[-1]["accepted"]["frechet_distance"]
    assert "label fidelity, accepted" in output and "accuracy against the oracle" in output
    shown = runner.invoke(app, ["show", str(tmp_path / "on")], catch_exceptions=False)
    assert "distinct-2" in shown.output

    # the meter changes no result: the same models as a run without it
    _, plain, _ = _run(runner, config, tmp_path / "off", "evaluation.general_ability=false")
    accuracies = lambda ms: [(m["round"], m["clients"]["client-0"]["test_accuracy"])  # noqa: E731
                             for m in ms if m["phase"] == "C1-fit"]
    assert accuracies(metrics) == accuracies(plain)

    # synthetic-no-feedback: every sample accepted, no judges; the oracle comes from the cache
    summary, metrics, _ = _run(runner, config, tmp_path / "plain", *meter, "rounds=1",
                               "method=synthetic-no-feedback")
    (record,) = [m for m in metrics if m["phase"] == "E-data-quality"]
    assert record["oracle_cached"] is True and record["judge_accuracy"] == {}
    assert summary["judge_accuracy_mean"] is None
    assert summary["oracle_fidelity_generated"] == summary["oracle_fidelity_accepted"]

    # oracle-filtered: S4 keeps exactly the samples the oracle labels as intended
    _, metrics, _ = _run(runner, config, tmp_path / "oracle", *meter, "rounds=1", "method=oracle-filtered")
    (record,) = [m for m in metrics if m["phase"] == "E-data-quality"]
    generated, accepted = record["generated"], record["accepted"]
    assert accepted["n"] == round(generated["n"] * generated["oracle_fidelity"])
    assert accepted["oracle_fidelity"] in (None, 1.0)  # None: the oracle agreed with no sample
    (fit,) = [m for m in metrics if m["phase"] == "C1-fit" and m["round"] == 1]
    assert all(c["metrics"]["num_accepted"] == accepted["n"] for c in fit["clients"].values())

    # without the meter there is no oracle to filter with: refused before anything is written
    refused = runner.invoke(app, ["run", str(config), "--output-dir", str(tmp_path / "no-meter"),
                                  "--set", "method=oracle-filtered"])
    assert refused.exit_code != 0 and "evaluation.data_quality=true" in refused.output
    assert not (tmp_path / "no-meter").exists()
