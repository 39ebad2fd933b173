"""One training loop for every classifier in the round: client SLMs (C1) and the LLM's task head (S5)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crosslm.models.classifier import TextClassifier
from crosslm.tasks.spec import Example


@dataclass(frozen=True)
class TrainItem:
    """A training text: private (hard label only) or accepted synthetic (with a soft label)."""

    text: str
    label: int
    soft_label: tuple[float, ...] | None = None
    weight: float = 1.0


def _batch_loss(logits: torch.Tensor, batch: list[TrainItem], distill_weight: float) -> torch.Tensor:
    labels = torch.tensor([item.label for item in batch])
    weights = torch.tensor([item.weight for item in batch])
    loss = F.cross_entropy(logits.float(), labels, reduction="none")
    has_soft = torch.tensor([item.soft_label is not None for item in batch])
    if distill_weight > 0 and has_soft.any():
        soft = torch.tensor([item.soft_label or [0.0] * logits.shape[-1] for item in batch])
        soft_loss = -(soft * F.log_softmax(logits.float(), dim=-1)).sum(-1)
        mixed = (1 - distill_weight) * loss + distill_weight * soft_loss
        loss = torch.where(has_soft, mixed, loss)
    return (weights * loss).sum() / weights.sum().clamp(min=1e-8)


def accuracy(classifier: TextClassifier, examples: list[Example], batch_size: int = 64) -> float:
    probs = classifier.predict_proba([ex.text for ex in examples], batch_size)
    labels = torch.tensor([ex.label for ex in examples])
    return float((probs.argmax(-1) == labels).float().mean())


def train_classifier(
    classifier: TextClassifier,
    items: list[TrainItem],
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    distill_weight: float = 0.0,
    validation: list[Example] | None = None,
    patience: int | None = None,
    regularizer: Callable[[list[str]], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Train; with ``validation``, keep the best epoch (including none) and stop after ``patience``.

    Starting the "best" at the untrained state means a round can never leave a
    client worse on its own validation data than it found it. ``regularizer``
    adds a loss on each batch's texts (the LLM's KL to its base model).
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)  # dropout: the same draws whatever ran before (resumed runs match)
    optimizer = torch.optim.AdamW(classifier.trainable_parameters(), lr=lr)
    best_acc = accuracy(classifier, validation) if validation else float("nan")
    snapshot = lambda: {k: v.detach().clone() for k, v in classifier.trainable_state().items()}  # noqa: E731
    best_state = snapshot() if validation else None
    best_epoch, losses = 0, []
    for epoch in range(1, epochs + 1):
        classifier.train()
        order = rng.sample(items, len(items))
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            texts = [item.text for item in batch]
            loss = _batch_loss(classifier.label_logits(texts), batch, distill_weight)
            if regularizer is not None:
                loss = loss + regularizer(texts)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        if validation:
            acc = accuracy(classifier, validation)
            if acc > best_acc:
                best_acc, best_epoch = acc, epoch
                best_state = snapshot()
            elif patience is not None and epoch - best_epoch >= patience:
                break
    if validation:
        classifier.load_trainable_state(best_state)
    return {"epochs_run": epoch, "best_epoch": best_epoch, "val_accuracy": best_acc,
            "train_loss": sum(losses[-10:]) / max(1, len(losses[-10:]))}
