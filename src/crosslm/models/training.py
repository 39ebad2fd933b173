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


def make_optimizer(parameters: list[torch.nn.Parameter], lr: float, kind: str = "adamw"
                   ) -> torch.optim.Optimizer:
    """AdamW, or Adafactor (factored second moments, no first moment): less optimizer memory."""
    if kind == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(parameters, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    return torch.optim.AdamW(parameters, lr=lr)


def per_example_loss(logits: torch.Tensor, batch: list[TrainItem], distill_weight: float) -> torch.Tensor:
    """Each item's loss: cross-entropy on its label, mixed with distillation to its soft label if any.

    One value per item, so DP-SGD (``crosslm.privacy.dp_training``) can clip each one's gradient.
    """
    device = logits.device
    labels = torch.tensor([item.label for item in batch], device=device)
    loss = F.cross_entropy(logits.float(), labels, reduction="none")
    has_soft = torch.tensor([item.soft_label is not None for item in batch], device=device)
    if distill_weight > 0 and has_soft.any():
        soft = torch.tensor([item.soft_label or [0.0] * logits.shape[-1] for item in batch], device=device)
        soft_loss = -(soft * F.log_softmax(logits.float(), dim=-1)).sum(-1)
        mixed = (1 - distill_weight) * loss + distill_weight * soft_loss
        loss = torch.where(has_soft, mixed, loss)
    return loss


def _batch_loss(logits: torch.Tensor, batch: list[TrainItem], distill_weight: float) -> torch.Tensor:
    weights = torch.tensor([item.weight for item in batch], device=logits.device)
    loss = per_example_loss(logits, batch, distill_weight)
    return (weights * loss).sum() / weights.sum().clamp(min=1e-8)


def _predicted_and_true(classifier: TextClassifier, examples: list[Example], batch_size: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    probs = classifier.predict_proba([ex.text for ex in examples], batch_size)
    return probs.argmax(-1), torch.tensor([ex.label for ex in examples])


def accuracy(classifier: TextClassifier, examples: list[Example], batch_size: int = 64) -> float:
    predicted, labels = _predicted_and_true(classifier, examples, batch_size)
    return float((predicted == labels).float().mean())


def balanced_accuracy(classifier: TextClassifier, examples: list[Example], batch_size: int = 64) -> float:
    """Mean recall over the labels present: a silo's skewed validation split cannot reward
    predicting its majority label (which scores 31/32 plain accuracy on such a split)."""
    predicted, labels = _predicted_and_true(classifier, examples, batch_size)
    recalls = [(predicted[labels == y] == y).float().mean() for y in labels.unique()]
    return float(torch.stack(recalls).mean())


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
    forward: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]] | None = None,
    optimizer_kind: str = "adamw",
) -> dict[str, float]:
    """Train; with ``validation``, keep the epoch of the best balanced accuracy and stop after
    ``patience`` epochs without a gain.

    The untrained model is not a candidate: its random head can score well on a
    handful of minority examples by chance and would then never be trained.
    ``forward`` gives a batch's label logits and a loss to add, from one pass (S5: the LLM's
    label logits and its KL to its base model); by default the classifier's label logits alone;
    ``optimizer_kind`` is adamw or adafactor (``make_optimizer``).
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)  # dropout: the same draws whatever ran before (resumed runs match)
    optimizer = make_optimizer(classifier.trainable_parameters(), lr, optimizer_kind)
    snapshot = lambda: {k: v.detach().clone() for k, v in classifier.trainable_state().items()}  # noqa: E731
    best_acc, best_state = float("-inf"), None
    best_epoch, losses = 0, []
    for epoch in range(1, epochs + 1):
        classifier.train()
        order = rng.sample(items, len(items))
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            texts = [item.text for item in batch]
            if forward is None:
                loss = _batch_loss(classifier.label_logits(texts), batch, distill_weight)
            else:
                logits, extra = forward(texts)
                loss = _batch_loss(logits, batch, distill_weight) + extra
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        if validation:
            acc = balanced_accuracy(classifier, validation)
            if acc > best_acc:
                best_acc, best_epoch = acc, epoch
                best_state = snapshot()
            elif patience is not None and epoch - best_epoch >= patience:
                break
    metrics = {"epochs_run": epoch, "best_epoch": best_epoch,
               "train_loss": sum(losses[-10:]) / max(1, len(losses[-10:]))}
    if best_state is not None:
        classifier.load_trainable_state(best_state)
        metrics["val_balanced_accuracy"] = best_acc
    return metrics
