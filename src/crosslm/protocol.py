"""The messages of a round and their one encoding (plain JSON-able records).

Communication is counted as the bytes of this encoding, whichever runtime
carries it. Nothing here can hold private text: clients send back only label
distributions and aggregate metrics.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class FitIns:
    """C1 (and E): train on private data plus the accepted set, then evaluate if asked.

    Round 0 carries no accepted set: it is local training to convergence.
    """

    round: int
    texts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    soft_labels: list[list[float]] = field(default_factory=list)
    evaluate: bool = True


@dataclass(frozen=True)
class FitRes:
    round: int
    num_examples: int
    val_accuracy: float
    test_accuracy: float | None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreIns:
    """C2: the synthetic texts to judge (their intended labels stay on the server)."""

    round: int
    texts: list[str]


@dataclass(frozen=True)
class ScoreRes:
    """C floats per text, plus what the server may weight this client by."""

    round: int
    probs: list[list[float]]
    num_examples: int
    val_accuracy: float


MESSAGE_TYPES = {cls.__name__: cls for cls in (FitIns, FitRes, ScoreIns, ScoreRes)}
Message = FitIns | FitRes | ScoreIns | ScoreRes


def to_record(message: Message) -> dict:
    return {"type": type(message).__name__, **asdict(message)}


def from_record(record: dict) -> Message:
    cls = MESSAGE_TYPES[record["type"]]
    return cls(**{f.name: record[f.name] for f in fields(cls)})


def encode(message: Message) -> bytes:
    return json.dumps(to_record(message), separators=(",", ":")).encode("utf-8")


def decode(data: bytes) -> Message:
    return from_record(json.loads(data))
