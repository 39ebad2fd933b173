"""The wire messages, the byte accounting of ``Federation.send`` and the in-process runtime."""

from __future__ import annotations

import json

import pytest

from crosslm.protocol import FitIns, FitRes, Message, ScoreIns, ScoreRes, decode, encode
from crosslm.runtime.base import Federation
from crosslm.runtime.in_process import InProcessFederation

MESSAGES = [
    FitIns(0),
    FitIns(3, ["un film « réussi » 🎬", 'with "quotes" and \\ and\nnewline'], [1, 0],
           [[0.25, 0.75], [0.9, 0.1]], evaluate=False),
    FitRes(2, 128, 0.8125, None),
    FitRes(1, 7, 0.5, 0.625, {"epochs_run": 3.0, "train_loss": 0.123456789}),
    ScoreIns(1, []),
    ScoreIns(4, ["a gripping drama .", "ünïcödé", ""]),
    ScoreRes(1, [[0.1, 0.9], [0.33333, 0.66667]], 64, 0.75),
    ScoreRes(2, [], 1, 0.0),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_encode_decode_round_trip(message: Message):
    data = encode(message)
    assert isinstance(data, bytes)
    assert json.loads(data)["type"] == type(message).__name__
    back = decode(data)
    assert type(back) is type(message)
    assert back == message
    assert encode(back) == data


def test_every_message_type_is_covered():
    assert {type(m).__name__ for m in MESSAGES} == {"FitIns", "FitRes", "ScoreIns", "ScoreRes"}


class ScoringClient:
    """A stand-in silo that answers a ScoreIns with a fixed distribution per text."""

    def __init__(self, num_examples: int) -> None:
        self.num_examples = num_examples
        self.received: list[Message] = []

    def handle(self, message: Message) -> Message:
        self.received.append(message)
        return ScoreRes(message.round, [[0.25, 0.75] for _ in message.texts], self.num_examples, 0.5)


class BrokenClient:
    def handle(self, message: Message) -> Message:
        raise RuntimeError("disk full on silo")


def test_send_counts_the_encoded_bytes_per_client_and_direction():
    clients = {"a": ScoringClient(10), "b": ScoringClient(20000)}
    delivered = []
    federation = InProcessFederation(clients, on_deliver=lambda cid, kind: delivered.append((cid, kind)))
    messages = {"a": ScoreIns(2, ["one text"]), "b": ScoreIns(2, ["a longer text", "and another"])}

    replies, failures = federation.send(messages)

    assert failures == {}
    assert replies == {"a": ScoreRes(2, [[0.25, 0.75]], 10, 0.5),
                       "b": ScoreRes(2, [[0.25, 0.75], [0.25, 0.75]], 20000, 0.5)}
    assert clients["a"].received == [messages["a"]]
    assert sorted(delivered) == [("a", "ScoreIns"), ("b", "ScoreIns")]
    got = {(t.client, t.direction): (t.round, t.kind, t.bytes) for t in federation.transfers}
    assert got == {
        ("a", "down"): (2, "ScoreIns", len(encode(messages["a"]))),
        ("b", "down"): (2, "ScoreIns", len(encode(messages["b"]))),
        ("a", "up"): (2, "ScoreRes", len(encode(replies["a"]))),
        ("b", "up"): (2, "ScoreRes", len(encode(replies["b"]))),
    }
    assert len(federation.transfers) == 4


def test_transfers_accumulate_over_sends():
    federation = InProcessFederation({"a": ScoringClient(1)})
    federation.send({"a": ScoreIns(1, ["x"])})
    federation.send({"a": ScoreIns(2, ["x", "y"])})
    assert [(t.round, t.direction) for t in federation.transfers] == [
        (1, "down"), (1, "up"), (2, "down"), (2, "up")]


def test_a_failing_client_is_reported_and_left_out():
    federation = InProcessFederation({"ok": ScoringClient(5), "bad": BrokenClient(),
                                      "ok2": ScoringClient(6)})
    messages = {cid: ScoreIns(1, ["some text"]) for cid in ("ok", "bad", "ok2")}

    replies, failures = federation.send(messages)

    assert set(replies) == {"ok", "ok2"}
    assert set(failures) == {"bad"}
    assert "RuntimeError" in failures["bad"] and "disk full on silo" in failures["bad"]
    # The message to the failing client went down; nothing came back up from it.
    assert [(t.client, t.direction) for t in federation.transfers if t.client == "bad"] == [("bad", "down")]


class DroppingFederation(Federation):
    """A runtime where one client never answers (as if it timed out)."""

    def __init__(self, silent: str) -> None:
        super().__init__()
        self.silent = silent

    def client_ids(self) -> list[str]:
        return ["a", "b"]

    def _exchange(self, payloads: dict[str, bytes], timeout: float | None) -> dict[str, bytes | str]:
        return {cid: encode(ScoreRes(decode(p).round, [], 1, 0.5))
                for cid, p in payloads.items() if cid != self.silent}


def test_a_client_without_reply_is_a_failure():
    federation = DroppingFederation(silent="b")
    replies, failures = federation.send({"a": ScoreIns(1, []), "b": ScoreIns(1, [])}, timeout=1.0)
    assert set(replies) == {"a"}
    assert set(failures) == {"b"} and "timeout" in failures["b"]
