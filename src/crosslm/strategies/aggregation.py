"""S2: combine the clients' label distributions into a quality score and a soft label per sample."""

from __future__ import annotations

import numpy as np

from crosslm.protocol import ScoreRes
from crosslm.synthetic import Candidate, ScoredSample


def client_weights(scheme: str, replies: dict[str, ScoreRes]) -> dict[str, float]:
    """w_k: uniform, by private data size, or by private validation accuracy; they sum to one."""
    raw = {
        "uniform": {cid: 1.0 for cid in replies},
        "data_size": {cid: float(r.num_examples) for cid, r in replies.items()},
        "val_accuracy": {cid: max(r.val_accuracy, 1e-6) for cid, r in replies.items()},
    }[scheme]
    total = sum(raw.values())
    return {cid: w / total for cid, w in raw.items()}


def aggregate(candidates: list[Candidate], replies: dict[str, ScoreRes], scheme: str
              ) -> list[ScoredSample]:
    """q_j = sum_k w_k p_k(y_j | x_j); s_j = sum_k w_k p_k(. | x_j); disagreement = std_k p_k(y_j);
    votes_j = sum_k votes_k(x_j) (unweighted: each private example votes once)."""
    weights = client_weights(scheme, replies)
    clients = sorted(replies)
    probs = np.array([replies[cid].probs for cid in clients])  # [K, N, C]
    w = np.array([weights[cid] for cid in clients])[:, None, None]
    soft = (w * probs).sum(0)
    voted = [replies[cid].votes for cid in clients if replies[cid].votes]
    votes = np.array(voted).sum(0) if voted else np.zeros(len(candidates), dtype=int)
    scored = []
    for j, cand in enumerate(candidates):
        on_label = probs[:, j, cand.label]
        scored.append(ScoredSample(
            text=cand.text, label=cand.label, quality=float(soft[j, cand.label]),
            soft_label=[float(p) for p in soft[j]], disagreement=float(on_label.std()), votes=int(votes[j]),
            client_probs={cid: list(replies[cid].probs[j]) for cid in clients}))
    return scored
