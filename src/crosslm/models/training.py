"""One training loop for every classifier in the round: client SLMs (C1) and the LLM's task head (S5)."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from crosslm.models.classifier import TextClassifier
from crosslm.tasks.spec import Example

# texts per forward pass in training (``length_chunks``): fewer pad less but multiply smaller
# matrices; 8 was fastest for MiniLM, 4-8 for SmolLM2 (docs/performance.md)
CHUNK_ROWS = 8
# τ of a skewed silo's logit-adjusted loss (``logit_adjusted``): at the Bayes-consistent 1, silos
# with 2-3 examples of a label still predicted one label; 3 did not (benchmarks/label_skew.py)
LOGIT_ADJUSTMENT = 3.0
# devices where torch.optim.AdamW has a fused kernel (PyTorch 2.4 and later)
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class TrainItem:
    """A training text: private (hard label only) or accepted synthetic (with a soft label).

    ``prior_offset``: added to the logits in the cross-entropy on ``label`` (``logit_adjusted``).
    """

    text: str
    label: int
    soft_label: tuple[float, ...] | None = None
    weight: float = 1.0
    prior_offset: tuple[float, ...] | None = None


def make_optimizer(parameters: list[torch.nn.Parameter], lr: float, kind: str = "adamw"
                   ) -> torch.optim.Optimizer:
    """AdamW, or Adafactor (factored second moments, no first moment): less optimizer memory.

    AdamW runs fused (one kernel for all tensors) on CPUs and CUDA GPUs: PyTorch's default on a
    CPU updates tensor by tensor, 72 ms a step for MiniLM's 22.7M parameters against 16 ms fused,
    a third of a client's training time (``benchmarks/optimizer_step.py``).
    """
    parameters = list(parameters)
    if kind == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(parameters, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    fused = bool(parameters) and all(p.device.type in FUSED_ADAMW_DEVICES for p in parameters)
    return torch.optim.AdamW(parameters, lr=lr, fused=fused or None)


def per_example_loss(logits: torch.Tensor, batch: list[TrainItem], distill_weight: float) -> torch.Tensor:
    """Each item's loss: cross-entropy on its label (its logits shifted by its ``prior_offset``),
    mixed with distillation to its soft label if any.

    One value per item, so DP-SGD (``crosslm.privacy.dp_training``) can clip each one's gradient.
    """
    device = logits.device
    labels = torch.tensor([item.label for item in batch], device=device)
    adjusted = logits.float()
    if any(item.prior_offset is not None for item in batch):
        adjusted = adjusted + torch.tensor([item.prior_offset or [0.0] * logits.shape[-1] for item in batch],
                                           device=device)
    loss = F.cross_entropy(adjusted, labels, reduction="none")
    has_soft = torch.tensor([item.soft_label is not None for item in batch], device=device)
    if distill_weight > 0 and has_soft.any():
        soft = torch.tensor([item.soft_label or [0.0] * logits.shape[-1] for item in batch], device=device)
        soft_loss = -(soft * F.log_softmax(logits.float(), dim=-1)).sum(-1)
        mixed = (1 - distill_weight) * loss + distill_weight * soft_loss
        loss = torch.where(has_soft, mixed, loss)
    return loss


def length_chunks(batch: list[TrainItem], rows: int) -> list[list[TrainItem]]:
    """The batch's items, shortest first, in chunks of at most ``rows``.

    A batch is padded to its longest text: 16 random SST-2 training sentences compute 2.8
    times their real tokens under MiniLM's tokenizer, 2 chunks of 8 sorted ones 1.8 times
    (``benchmarks/training_chunks.py``). The batch, and so the gradient, stay what the shuffle drew.
    """
    ordered = sorted(batch, key=lambda item: len(item.text))
    return [ordered[start:start + rows] for start in range(0, len(ordered), rows)]


def backward_in_chunks(classifier: TextClassifier, batch: list[TrainItem], distill_weight: float,
                       forward: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]] | None) -> float:
    """Backpropagate the batch's loss chunk by chunk (``length_chunks``); the batch's loss.

    Each chunk's share is scaled to the whole batch: its items' weighted losses over the
    batch's total weight, and ``forward``'s added loss (a mean over texts) by its share of texts.
    """
    total_weight = max(sum(item.weight for item in batch), 1e-8)
    batch_loss = 0.0
    for chunk in length_chunks(batch, CHUNK_ROWS):
        texts = [item.text for item in chunk]
        logits, extra = (classifier.label_logits(texts), 0.0) if forward is None else forward(texts)
        weights = torch.tensor([item.weight for item in chunk], device=logits.device)
        loss = ((weights * per_example_loss(logits, chunk, distill_weight)).sum() / total_weight
                + extra * len(chunk) / len(batch))
        loss.backward()
        batch_loss += loss.item()
    return batch_loss


def _predicted_and_true(classifier: TextClassifier, examples: list[Example], batch_size: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    probs = classifier.predict_proba([ex.text for ex in examples], batch_size)
    return probs.argmax(-1), torch.tensor([ex.label for ex in examples])


def accuracy(classifier: TextClassifier, examples: list[Example], batch_size: int = 64) -> float:
    return prediction_figures(classifier, examples, batch_size)[0]


def prediction_figures(classifier: TextClassifier, examples: list[Example], batch_size: int = 64
                       ) -> tuple[float, float]:
    """(accuracy, majority share): the share of predictions on the most predicted label, which
    is at least 0.95 for a collapsed model that predicts one label for (almost) everything."""
    predicted, labels = _predicted_and_true(classifier, examples, batch_size)
    majority_share = float(predicted.bincount().max()) / len(predicted)
    return float((predicted == labels).float().mean()), majority_share


def logit_adjusted(items: list[TrainItem], num_labels: int, tau: float = LOGIT_ADJUSTMENT
                   ) -> list[TrainItem]:
    """The items with their silo's label prior as a logit offset: a logit-adjusted loss.

    A silo's labels are skewed under non-IID partitions. Weighting the loss by inverse label
    frequency stops mattering once a fine-tuned encoder fits its few minority examples, and
    the model then predicts the majority label for everything else; training on
    ``logits + tau * log prior`` (Menon et al. 2021, "Long-tail learning via logit
    adjustment") asks for a margin on the rare labels that fitting them does not remove, and
    the plain logits then predict as if the labels were balanced. The prior comes from the
    silo's own label counts (a missing label counts one half) and is sent nowhere.
    """
    counts = Counter(item.label for item in items)
    offset = tuple(tau * math.log(max(counts.get(y, 0), 0.5) / len(items)) for y in range(num_labels))
    return [replace(item, prior_offset=offset) for item in items]


def balanced_accuracy(classifier: TextClassifier, examples: list[Example], batch_size: int = 64) -> float:
    """Mean recall over the labels present: a silo's skewed validation split cannot reward
    predicting its majority label (which scores 31/32 plain accuracy on such a split)."""
    predicted, labels = _predicted_and_true(classifier, examples, batch_size)
    recalls = [(predicted[labels == y] == y).float().mean() for y in labels.unique()]
    return float(torch.stack(recalls).mean())


class EpochSelector:
    """Early stopping on balanced validation accuracy that does not lock onto a collapsed model.

    A model that predicts one label scores exactly chance (1 / the labels present). While
    the best epoch is at chance, a later epoch at chance replaces it and patience does
    not run: a skewed silo's first epoch is often such a model, and with plain
    "stop after ``patience`` epochs without a gain" it was kept whenever no later epoch
    beat it by chance.
    """

    def __init__(self, validation: list[Example] | None, patience: int | None) -> None:
        labels = {ex.label for ex in validation or []}
        # a split with one label scores a one-label model perfectly: it cannot choose, so the last
        # epoch is kept (a silo of 126 positives and 2 negatives had 32 positives to validate on)
        self.informative = len(labels) > 1
        # float32 rounding: the mean of the recalls [1, 0, 0] is 1/3 + 3e-8
        self.chance = 1 / len(labels) + 1e-6 if labels else 0.0
        self.patience, self.best, self.best_epoch = patience, float("-inf"), 0

    def keep(self, epoch: int, balanced_acc: float) -> bool:
        """Whether this epoch's weights are the ones to keep so far."""
        if not self.informative:
            self.best, self.best_epoch = balanced_acc, epoch
            return True
        at_chance = self.best <= self.chance and balanced_acc <= self.chance
        if balanced_acc > self.best or (at_chance and balanced_acc >= self.best - 1e-6):
            self.best, self.best_epoch = balanced_acc, epoch
            return True
        return False

    def stop(self, epoch: int) -> bool:
        return (self.patience is not None and self.best > self.chance
                and epoch - self.best_epoch >= self.patience)


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
    handful of minority examples by chance and would then never be trained; nor is a
    model at chance a place to stop (``EpochSelector``).
    ``forward`` gives a batch's label logits and a loss to add, from one pass (S5: the LLM's
    label logits and its KL to its base model); by default the classifier's label logits alone;
    ``optimizer_kind`` is adamw or adafactor (``make_optimizer``).
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)  # dropout: the same draws whatever ran before (resumed runs match)
    optimizer = make_optimizer(classifier.trainable_parameters(), lr, optimizer_kind)
    snapshot = lambda: {k: v.detach().clone() for k, v in classifier.trainable_state().items()}  # noqa: E731
    selector = EpochSelector(validation, patience)
    best_state, losses = None, []
    for epoch in range(1, epochs + 1):
        classifier.train()
        order = rng.sample(items, len(items))
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            losses.append(backward_in_chunks(classifier, batch, distill_weight, forward))
            optimizer.step()
            optimizer.zero_grad()
        if validation:
            if selector.keep(epoch, balanced_accuracy(classifier, validation)):
                best_state = snapshot()
            elif selector.stop(epoch):
                break
    metrics = {"epochs_run": epoch, "best_epoch": selector.best_epoch,
               "train_loss": sum(losses[-10:]) / max(1, len(losses[-10:]))}
    if best_state is not None:
        classifier.load_trainable_state(best_state)
        metrics["val_balanced_accuracy"] = selector.best
    return metrics
