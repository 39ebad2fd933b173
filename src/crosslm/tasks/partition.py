"""Splitting one training pool into client silos, IID or non-IID by a Dirichlet over labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from crosslm.errors import CrossLMError
from crosslm.tasks.spec import Example


@dataclass(frozen=True)
class ClientData:
    """A silo's private data: what it trains on and what it early-stops on."""

    train: list[Example]
    validation: list[Example]


def partition(
    pool: list[Example],
    num_labels: int,
    num_clients: int,
    train_per_client: int,
    validation_per_client: int,
    scheme: Literal["iid", "dirichlet"] = "dirichlet",
    alpha: float = 1.0,
    seed: int = 0,
) -> list[ClientData]:
    """Disjoint client partitions of fixed size; non-IID draws each client's label mix from Dir(alpha)."""
    per_client = train_per_client + validation_per_client
    if train_per_client < 1:
        raise CrossLMError("clients.examples_per_client must be at least 1: a client needs data")
    if per_client * num_clients > len(pool):
        raise CrossLMError(
            f"clients ask for {num_clients} x ({train_per_client} train + {validation_per_client} "
            f"validation) = {per_client * num_clients} private examples, but the training pool "
            f"has only {len(pool)}"
        )
    rng = np.random.default_rng(seed)
    by_label = [list(rng.permutation([i for i, ex in enumerate(pool) if ex.label == y]))
                for y in range(num_labels)]
    clients = []
    for _ in range(num_clients):
        if scheme == "dirichlet":
            mix = rng.dirichlet(np.full(num_labels, alpha))
        else:  # IID: the label mix of the pool itself
            mix = np.array([len(ids) for ids in by_label], dtype=float)
        chosen = []
        for _ in range(per_client):
            weights = mix * np.array([len(ids) > 0 for ids in by_label])
            if weights.sum() == 0:  # the mix only covers exhausted labels: fall back to any left
                weights = np.array([len(ids) > 0 for ids in by_label], dtype=float)
            label = rng.choice(num_labels, p=weights / weights.sum())
            chosen.append(pool[by_label[label].pop()])
        order = rng.permutation(per_client)
        examples = [chosen[i] for i in order]
        clients.append(ClientData(examples[:train_per_client], examples[train_per_client:]))
    return clients
