"""Realism feedback: private examples vote for their nearest synthetic text (strategies/realism.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_cli import _config
from test_client import FALLBACK, SYNTHETIC_R1
from typer.testing import CliRunner

from crosslm.cli import app
from crosslm.client import Client
from crosslm.config import ClientsConfig, TrainConfig, check_method, load_config
from crosslm.errors import CrossLMError
from crosslm.models.classifier import build_classifier
from crosslm.protocol import FitIns, ScoreIns, ScoreRes
from crosslm.strategies.aggregation import aggregate
from crosslm.strategies.realism import nearest_votes, realism_rank
from crosslm.synthetic import Candidate, ScoredSample
from crosslm.tasks.partition import ClientData
from crosslm.tasks.spec import Example


def unit(rows: list[list[float]]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_each_private_row_votes_once_for_its_nearest():
    synthetic = unit([[1, 0], [0, 1], [-1, 0]])
    private = unit([[0.9, 0.1], [1, -0.2], [0.1, 1], [-1, -0.1]])
    assert nearest_votes(private, synthetic) == [2, 1, 1]
    assert nearest_votes(private, synthetic[:0]) == []
    assert nearest_votes(private[:0], synthetic) == [0, 0, 0]


def test_votes_are_summed_over_clients_and_rank_before_quality():
    candidates = [Candidate("a", 0), Candidate("b", 1)]
    replies = {"x": ScoreRes(1, [[0.9, 0.1], [0.2, 0.8]], 4, 0.5, votes=[3, 1]),
               "y": ScoreRes(1, [[0.6, 0.4], [0.4, 0.6]], 4, 0.5, votes=[0, 4])}
    a, b = aggregate(candidates, replies, "uniform")
    assert (a.votes, b.votes) == (3, 5)
    no_votes = aggregate(candidates, {"x": ScoreRes(1, [[0.9, 0.1], [0.2, 0.8]], 4, 0.5)}, "uniform")
    assert [s.votes for s in no_votes] == [0, 0]
    ranked = sorted([ScoredSample("p", 0, 0.9, [0.9, 0.1], 0.0, votes=1),
                     ScoredSample("q", 0, 0.6, [0.6, 0.4], 0.0, votes=2),
                     ScoredSample("r", 0, 0.7, [0.7, 0.3], 0.0, votes=1)], key=realism_rank)
    assert [s.text for s in ranked] == ["q", "p", "r"]


@pytest.fixture(params=["encoder", "causal"])
def slm_dir(request, tiny_encoder_dir, tiny_causal_dir) -> Path:
    return tiny_encoder_dir if request.param == "encoder" else tiny_causal_dir


def test_embeddings_are_unit_length_and_in_input_order(slm_dir, task):
    """In float32: in bfloat16 (dtype auto on a CPU with AMX) another padding rounds differently."""
    classifier = build_classifier(str(slm_dir), task, 2, seed=0, dtype="float32")
    texts = ["short .", "a much longer text than the first one , with more words .", "mid length text ."]
    together = classifier.embed(texts, batch_size=2)  # batched by length, returned in input order
    one_by_one = torch.cat([classifier.embed([t]) for t in texts])
    assert together.shape[0] == 3
    assert torch.allclose(together.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(together, one_by_one, atol=1e-4)


def test_the_vote_space_is_the_pretrained_one_whatever_training_does(slm_dir, task):
    classifier = build_classifier(str(slm_dir), task, 2, seed=0)
    texts = [text for text, _ in FALLBACK[:4]]
    before_embed, before_pooled = classifier.embed(texts), classifier.pooled(texts).detach()
    with torch.no_grad():
        for parameter in classifier.trainable_parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))  # as far as any training moves them
    assert not torch.allclose(classifier.pooled(texts), before_pooled, atol=1e-3)  # training shows...
    assert torch.allclose(classifier.embed(texts), before_embed, atol=1e-5)  # ...not in the votes' space


def test_a_client_votes_with_each_private_example_for_its_copy(slm_dir, task, tmp_path):
    private = [Example(text, label) for text, label in FALLBACK[:6]]
    data = ClientData(private, [Example(*FALLBACK[6])])
    config = ClientsConfig(slm=[str(slm_dir)], lora_rank=2,
                           local_training=TrainConfig(lr=1e-3, epochs=1, batch_size=4))
    client = Client("c0", str(slm_dir), task, data, data.validation, tmp_path, config, 0)
    client.fit(FitIns(0, evaluate=False))
    batch = SYNTHETIC_R1 + [e.text for e in private]  # each private text's copy is its nearest
    reply = client.score(ScoreIns(1, batch, votes=True))
    assert reply.votes == [0] * len(SYNTHETIC_R1) + [1] * len(private)
    assert client.score(ScoreIns(1, batch)).votes == []  # not asked, not sent


@pytest.mark.parametrize("strategy", ["realism-sft", "realism-dpo"])
def test_realism_feedback_is_refused_under_privacy(strategy):
    config = load_config(None, [f"feedback.strategy={strategy}", "privacy.target_epsilon=8"])
    with pytest.raises(CrossLMError, match=f"{strategy} asks each client for vote counts"):
        check_method(config)


def test_a_realism_run_sends_votes_and_demonstrates_the_most_voted(shared_data, monkeypatch, tmp_path,
                                                                   tiny_causal_dir, tiny_encoder_dir):
    monkeypatch.setenv("CROSSLM_DATA_DIR", str(shared_data))
    config = _config(tmp_path, tiny_causal_dir, [tiny_encoder_dir], rounds=1)
    out = tmp_path / "realism"
    result = CliRunner().invoke(app, ["run", str(config), "--output-dir", str(out),
                                      "--set", "feedback.strategy=realism-sft"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    samples = [json.loads(line) for line in (out / "rounds/001/samples.jsonl").read_text().splitlines()]
    assert sum(s["votes"] for s in samples) == 2 * 24  # every private example of both silos voted once
    demos = json.loads((out / "rounds/001/server_state.json").read_text())["feedback_demos"]
    for label, texts in demos.items():
        accepted = sorted((s for s in samples if s["accepted"] and s["label"] == int(label)),
                          key=lambda s: (-s["votes"], -s["quality"]))
        assert texts == [s["text"] for s in accepted[:len(texts)]] and texts
