"""The messages of a round and their one encoding (plain JSON-able records).

Communication is counted as the bytes of this encoding, whichever runtime
carries it. Nothing here can hold private text: clients send back only label
distributions, aggregate metrics, with realism feedback one vote count per
synthetic text (and, in the FedAvg baseline, weights).
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only where weights are packed: a Flower node's hello stays light
    import torch


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
    """C2: the synthetic texts to judge (their intended labels stay on the server), and whether
    each private example should also vote for its nearest text (realism feedback)."""

    round: int
    texts: list[str]
    votes: bool = False


@dataclass(frozen=True)
class ScoreRes:
    """C floats per text, plus what the server may weight this client by; votes if asked (one
    count per text, summing to the private examples)."""

    round: int
    probs: list[list[float]]
    num_examples: int
    val_accuracy: float
    seconds: float = 0.0  # the client's compute: what a runtime adds on top is its overhead
    votes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class AverageIns:
    """The FedAvg baseline: start from these global weights, train on private data, send yours back."""

    round: int
    weights: str  # pack_weights()


@dataclass(frozen=True)
class AverageRes:
    round: int
    num_examples: int
    weights: str
    val_accuracy: float
    metrics: dict[str, float] = field(default_factory=dict)


MESSAGE_TYPES = {cls.__name__: cls for cls in (FitIns, FitRes, ScoreIns, ScoreRes, AverageIns, AverageRes)}
Message = FitIns | FitRes | ScoreIns | ScoreRes | AverageIns | AverageRes


def pack_weights(state: dict[str, torch.Tensor]) -> str:
    """Weights as text in a JSON message: safetensors bytes, base64 (what FedAvg really has to send)."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    return base64.b64encode(save(tensors)).decode("ascii")


def unpack_weights(packed: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(base64.b64decode(packed))


def to_record(message: Message) -> dict:
    return {"type": type(message).__name__, **asdict(message)}


def from_record(record: dict) -> Message:
    cls = MESSAGE_TYPES[record["type"]]
    return cls(**{f.name: record[f.name] for f in fields(cls)})


def encode(message: Message) -> bytes:
    return json.dumps(to_record(message), separators=(",", ":")).encode("utf-8")


def decode(data: bytes) -> Message:
    return from_record(json.loads(data))
