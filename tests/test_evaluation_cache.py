"""The evaluation cache: a hit gives what recomputing gives; anything a figure depends on misses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_cli import _config
from typer.testing import CliRunner

from crosslm.cli import app
from crosslm.evaluation_cache import EvaluationCache, model_fingerprint
from crosslm.models.llm import CLASSIFIER, GENERATOR, ServerLLM


def test_a_key_is_computed_once_and_read_back_after(tmp_path: Path) -> None:
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"accuracy": 0.75, "num_examples": 4}

    cache = EvaluationCache(tmp_path)
    assert cache.get_or_compute({"model": "a"}, compute) == ({"accuracy": 0.75, "num_examples": 4}, False)
    assert cache.get_or_compute({"model": "a"}, compute) == ({"accuracy": 0.75, "num_examples": 4}, True)
    assert len(calls) == 1
    assert cache.get_or_compute({"model": "b"}, compute)[1] is False
    assert len(calls) == 2
    assert EvaluationCache(tmp_path, enabled=False).get_or_compute({"model": "a"}, compute)[1] is False
    assert len(calls) == 3


def test_an_unreadable_entry_is_recomputed(tmp_path: Path) -> None:
    cache = EvaluationCache(tmp_path)
    cache.get_or_compute({"model": "a"}, lambda: {"x": 1.0})
    (entry,) = tmp_path.glob("*.json")
    entry.write_text("{not json")
    assert cache.get_or_compute({"model": "a"}, lambda: {"x": 2.0}) == ({"x": 2.0}, False)
    assert cache.get_or_compute({"model": "a"}, lambda: {"x": 3.0}) == ({"x": 2.0}, True)


def _randomise(llm: ServerLLM, adapter: str, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in llm.model.named_parameters():
            if f".{adapter}." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def test_the_fingerprint_follows_what_the_classifier_computes(tiny_causal_dir: Path, task) -> None:
    llm = ServerLLM(str(tiny_causal_dir), task, lora_rank=4, seed=0)
    untrained = llm.classifier_fingerprint()
    # another seed draws other LoRA A weights, but B is zero: the same model, the same evaluations
    assert ServerLLM(str(tiny_causal_dir), task, lora_rank=4, seed=1).classifier_fingerprint() == untrained
    _randomise(llm, GENERATOR, seed=1)  # the generator adapter is not evaluated
    assert llm.classifier_fingerprint() == untrained
    _randomise(llm, CLASSIFIER, seed=2)
    trained = llm.classifier_fingerprint()
    assert trained != untrained
    with torch.no_grad():
        llm.model.get_base_model().lm_head.weight[0, 0] += 1.0  # one base weight, inside the sample
    assert llm.classifier_fingerprint() != trained


def test_the_fingerprint_sees_a_change_in_any_tensor_it_does_not_skip() -> None:
    layer = torch.nn.Linear(4, 3)
    before, without_bias = model_fingerprint(layer), model_fingerprint(layer, skip=lambda n: n == "bias")
    with torch.no_grad():
        layer.bias[1] += 1e-3
    assert model_fingerprint(layer) != before
    assert model_fingerprint(layer, skip=lambda n: n == "bias") == without_bias


def _llm_records(out: Path) -> dict[tuple[int, str], dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {(r["round"], r["phase"]): r for r in rows if r["phase"] in ("E-llm-task", "E-llm-general")}


def _figures(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("seconds", "cached")}


def test_a_second_run_reads_the_untrained_llms_evaluations(shared_data: Path, tmp_path: Path,
                                                           tiny_causal_dir: Path, tiny_encoder_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSLM_DATA_DIR", str(shared_data))
    monkeypatch.setenv("CROSSLM_CACHE", str(tmp_path / "cache"))  # an empty cache for this test
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir], rounds=1)
    runner = CliRunner()

    def run(out: str, *sets: str) -> dict[tuple[int, str], dict]:
        args = ["run", str(config), "--output-dir", str(tmp_path / out)]
        result = runner.invoke(app, args + [a for s in sets for a in ("--set", s)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return _llm_records(tmp_path / out)

    first = run("first")
    assert not any(r["cached"] for r in first.values())
    second = run("second", "seed=1")
    for phase in ("E-llm-task", "E-llm-general"):
        assert second[0, phase]["cached"] and _figures(second[0, phase]) == _figures(first[0, phase])
        assert not second[1, phase]["cached"]  # after a round the LLM is another model
    # a changed test set or setting misses
    changed = run("changed", "evaluation.wikitext_tokens=256", "evaluation.llm_test_size=10")
    assert not changed[0, "E-llm-task"]["cached"] and not changed[0, "E-llm-general"]["cached"]
    assert changed[0, "E-llm-task"]["num_examples"] == 10
    off = run("off", "evaluation.cache=false")
    assert not any(r["cached"] for r in off.values())
    assert _figures(off[0, "E-llm-general"]) == _figures(first[0, "E-llm-general"])
