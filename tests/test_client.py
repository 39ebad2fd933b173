"""A client silo through its rounds: fit, score, state on disk, restart, and what leaves it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch

from crosslm.client import Client
from crosslm.config import ClientsConfig, TrainConfig
from crosslm.models.classifier import build_classifier
from crosslm.protocol import FitIns, FitRes, Message, ScoreIns, ScoreRes, encode
from crosslm.runtime.in_process import InProcessFederation
from crosslm.tasks.data import load_split
from crosslm.tasks.partition import ClientData, partition
from crosslm.tasks.spec import Example

FALLBACK = [
    ("a gripping , beautifully shot drama with a terrific lead performance .", 1),
    ("the plot is thin and the dialogue is painfully slow .", 0),
    ("an uneven but often funny comedy about growing up .", 1),
    ("nothing in this film works , from the script to the score .", 0),
    ("the best animated feature of the year , full of wit and warmth .", 1),
    ("a forgettable thriller that runs out of ideas halfway through .", 0),
    ("a sweet , touching story told with real care .", 1),
    ("the jokes are stale and the cast looks bored .", 0),
    ("smart , funny and surprisingly moving .", 1),
    ("two hours of noise with nothing to say .", 0),
    ("the performances alone make it worth seeing .", 1),
    ("a lazy sequel that repeats every mistake of the first .", 0),
]

SYNTHETIC_R1 = ["a lovely , heartfelt film .", "a dreary and pointless movie .", "what a joy to watch ."]
SYNTHETIC_R2 = ["the script is clumsy and dull .", "a bright , clever comedy ."]


@pytest.fixture(scope="module")
def silo(request, task) -> tuple[ClientData, list[Example]]:
    """(a small SST-2 partition, a small test set); hand-written examples without the shared data."""
    try:
        data_dir = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        examples = [Example(text, label) for text, label in FALLBACK]
        return ClientData(examples[:8], examples[8:]), examples[8:]
    pool = load_split(task, "train", data_dir)[:2000]
    [data] = partition(pool, task.num_labels, num_clients=1, train_per_client=48,
                       validation_per_client=24, scheme="iid", seed=0)
    return data, load_split(task, "test", data_dir)[:16]


@pytest.fixture(scope="module")
def config(tiny_encoder_dir) -> ClientsConfig:
    return ClientsConfig(slm=[str(tiny_encoder_dir)],
                         local_training=TrainConfig(lr=2e-3, epochs=5, batch_size=8), patience=2,
                         round_training=TrainConfig(lr=2e-3, epochs=2, batch_size=8))


@dataclass
class Rounds:
    """Everything a client did and sent over two rounds, then after a restart."""

    state_dir: Path
    data: ClientData
    replies: list[Message]
    fit0: FitRes
    score1: ScoreRes
    fit1: FitRes
    score2: ScoreRes
    restarted_score1: ScoreRes
    restarted_score2: ScoreRes
    fit2: FitRes


def make_client(state_dir: Path, silo, task, config, seed: int = 0) -> Client:
    data, test = silo
    return Client("c0", config.slm[0], task, data, test, state_dir, config, seed=seed)


@pytest.fixture(scope="module")
def rounds(tmp_path_factory, silo, task, config) -> Rounds:
    state_dir = tmp_path_factory.mktemp("client-state")
    federation = InProcessFederation({"c0": make_client(state_dir, silo, task, config)})
    replies: list[Message] = []

    def send(message: Message) -> Message:
        answer, failures = federation.send({"c0": message})
        assert failures == {}
        replies.append(answer["c0"])
        return answer["c0"]

    fit0 = send(FitIns(0))
    score1 = send(ScoreIns(1, SYNTHETIC_R1))
    fit1 = send(FitIns(1, SYNTHETIC_R1, [1, 0, 1], [[0.2, 0.8], [0.9, 0.1], [0.3, 0.7]]))
    score2 = send(ScoreIns(2, SYNTHETIC_R1 + SYNTHETIC_R2))

    # A restart: a new Client object (an empty process) on the same state directory. Its seed
    # differs, so that a client which ignored its saved state would score differently.
    federation.clients["c0"] = make_client(state_dir, silo, task, config, seed=1)
    restarted_score2 = send(ScoreIns(2, SYNTHETIC_R1 + SYNTHETIC_R2))
    restarted_score1 = send(ScoreIns(1, SYNTHETIC_R1))
    fit2 = send(FitIns(2, SYNTHETIC_R2, [0, 1], [[0.8, 0.2], [0.1, 0.9]], evaluate=False))
    return Rounds(state_dir, silo[0], replies, fit0, score1, fit1, score2, restarted_score1,
                  restarted_score2, fit2)


def test_fit_round_zero(rounds: Rounds):
    fit = rounds.fit0
    assert isinstance(fit, FitRes) and fit.round == 0
    assert fit.num_examples == len(rounds.data.train)
    assert 0.0 <= fit.val_accuracy <= 1.0 and 0.0 <= fit.test_accuracy <= 1.0
    assert fit.metrics["num_accepted"] == 0
    assert 1 <= fit.metrics["epochs_run"] <= 5


def test_score_gives_a_distribution_per_text(rounds: Rounds):
    for score, texts in ((rounds.score1, SYNTHETIC_R1), (rounds.score2, SYNTHETIC_R1 + SYNTHETIC_R2)):
        assert isinstance(score, ScoreRes)
        assert len(score.probs) == len(texts)
        for row in score.probs:
            assert len(row) == 2 and all(0.0 <= p <= 1.0 for p in row)
            assert sum(row) == pytest.approx(1.0, abs=1e-4)
        assert score.num_examples == len(rounds.data.train)
    assert rounds.score1.round == 1 and rounds.score1.val_accuracy == rounds.fit0.val_accuracy
    assert rounds.score2.round == 2 and rounds.score2.val_accuracy == rounds.fit1.val_accuracy


def test_fit_with_an_accepted_set_keeps_it_and_snapshots_the_model(rounds: Rounds):
    assert rounds.fit1.round == 1
    assert rounds.fit1.metrics["num_accepted"] == 3
    # later rounds train their fixed budget; only round 0 early-stops on validation
    assert rounds.fit1.metrics["epochs_run"] == 2
    assert 0.0 <= rounds.fit1.val_accuracy <= 1.0
    rows = [json.loads(line) for line in
            (rounds.state_dir / "accepted-r1.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows == [{"text": t, "label": y, "soft_label": s} for t, y, s in zip(
        SYNTHETIC_R1, [1, 0, 1], [[0.2, 0.8], [0.9, 0.1], [0.3, 0.7]], strict=True)]
    snapshots = {p.name for p in rounds.state_dir.glob("model-r*.safetensors")}
    # After round 2, round 0's snapshot is no longer needed; rounds 1 and 2 are kept.
    assert snapshots == {"model-r1.safetensors", "model-r2.safetensors"}


def test_snapshots_after_round_one(tmp_path, silo, task, config):
    client = make_client(tmp_path, silo, task, config)
    client.fit(FitIns(0, evaluate=False))
    assert (tmp_path / "model-r0.safetensors").is_file()
    client.fit(FitIns(1, SYNTHETIC_R1[:1], [1], [[0.1, 0.9]], evaluate=False))
    assert {p.name for p in tmp_path.glob("model-r*.safetensors")} == {
        "model-r0.safetensors", "model-r1.safetensors"}
    assert (tmp_path / "accepted-r1.jsonl").is_file()
    rounds = json.loads((tmp_path / "rounds.json").read_text(encoding="utf-8"))
    assert set(rounds) == {"0", "1"} and rounds["1"]["num_accepted"] == 1


def test_scores_are_calibrated_on_the_batch(tmp_path, silo, task, config):
    data, test = silo
    positives, negatives = ([ex for ex in data.train if ex.label == y] for y in (1, 0))
    skewed = ClientData(positives + negatives[:2], data.validation)
    client = Client("c0", config.slm[0], task, skewed, test, tmp_path, config, seed=0)
    client.fit(FitIns(0, evaluate=False))
    texts = SYNTHETIC_R1 + SYNTHETIC_R2
    reply = torch.tensor(client.score(ScoreIns(1, texts)).probs)

    trained = build_classifier(config.slm[0], task, config.lora_rank, seed=0)
    trained.load(tmp_path / "model-r0.safetensors")
    raw = trained.predict_proba(texts)
    lean = raw.mean(0)
    # Each text's odds move by the same factor: the SLM's mean lean over the batch is divided out.
    assert torch.allclose(reply[:, 1] / reply[:, 0], raw[:, 1] / raw[:, 0] * lean[0] / lean[1], rtol=1e-3)
    assert abs(float(reply[:, 1].mean()) - 0.5) < abs(float(lean[1]) - 0.5)


def test_state_survives_a_restart(rounds: Rounds, task, config):
    # What the restarted client (seed 1) would say without its state...
    fresh = build_classifier(config.slm[0], task, config.lora_rank, seed=1)
    assert not torch.allclose(torch.tensor(rounds.score1.probs), fresh.predict_proba(SYNTHETIC_R1),
                              atol=1e-3)
    # ...but it picks up where the old client was.
    assert rounds.restarted_score2.probs == rounds.score2.probs
    assert rounds.restarted_score1.probs == rounds.score1.probs
    # The restarted client trains round 2 on both rounds' accepted sets, read back from disk.
    assert rounds.fit2.round == 2 and rounds.fit2.metrics["num_accepted"] == 5
    assert rounds.fit2.test_accuracy is None


def test_replies_never_contain_private_text(rounds: Rounds):
    private = [ex.text for ex in rounds.data.train + rounds.data.validation]
    assert len(rounds.replies) == 7
    for reply in rounds.replies:
        data = encode(reply)
        for text in private:
            assert json.dumps(text).encode() not in data  # as a JSON string value
            if len(text) >= 12:
                assert text.encode() not in data and text.strip().encode() not in data


def test_a_non_private_encoder_client_loads_neither_peft_nor_opacus(rounds: Rounds, tmp_path, silo, config):
    """On Flower every message starts a fresh ClientApp process; an encoder silo without
    ``privacy:`` must not pay for importing PEFT and Opacus (3.7 s of CPU together each time,
    benchmarks/clientapp_start.py)."""
    state = tmp_path / "state"
    shutil.copytree(rounds.state_dir, state)
    data, test = silo
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"config": config.model_dump(mode="json"), "state": str(state),
                                  "train": [asdict(ex) for ex in data.train],
                                  "validation": [asdict(ex) for ex in data.validation],
                                  "test": [asdict(ex) for ex in test]}))
    script = """
import json, sys
from crosslm.client import Client
from crosslm.config import ClientsConfig
from crosslm.protocol import FitIns, ScoreIns
from crosslm.tasks.partition import ClientData
from crosslm.tasks.spec import Example, load_task
raw = json.load(open(sys.argv[1]))
examples = {key: [Example(**ex) for ex in raw[key]] for key in ("train", "validation", "test")}
config = ClientsConfig.model_validate(raw["config"])
client = Client("c0", config.slm[0], load_task("sst2"), ClientData(examples["train"], examples["validation"]),
                examples["test"], raw["state"], config, seed=0)
client.handle(ScoreIns(3, ["a clever film ."]))
client.handle(FitIns(3, ["a clever film ."], [1], [[0.3, 0.7]]))
print(json.dumps(sorted(name for name in ("peft", "opacus") if name in sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", script, str(inputs)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
