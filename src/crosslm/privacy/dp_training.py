"""DP-SGD for any client SLM: Opacus per-example gradients, clipping and Gaussian noise.

What is trained is what ``TextClassifier.dp_parameters`` names: an
``EncoderClassifier``'s head (a linear probe on the frozen encoder), a
``VerbalizerClassifier``'s LoRA matrices. The noise is added to every trained
coordinate while the clipped signal is bounded, so fewer coordinates is the whole
game: fine-tuning all of MiniLM's 11M non-embedding parameters at ε = 8 left every
client at chance on SST-2, a DP head on the same encoder reaches 73.4 % on held-out
training texts (docs/privacy.md). Everything else is frozen while DP-SGD runs, so
an encoder's pooled features are computed once per text (``frozen_features``).

Sampling is Poisson, as the accountant assumes: each step includes every private
record independently with probability q = batch_size / n_private (Opacus's
``UniformWithReplacementSampler``). Accepted synthetic samples are public (the
server sent them): each step adds a fixed share of them, drawn without looking at
private data, so they change the gradient but not the accounting.

A later round's few DP steps (one expected pass over the private records) cannot
repair a head that a label-skewed silo tipped to one label in round 0: the clipped,
noised gradients of the label-balanced synthetic samples are too few. So after them
``train_on_public`` trains the same parameters on the accepted samples alone,
without noise: a function of the DP model and public data, post-processing that
spends no ε.
"""

from __future__ import annotations

import math
import random
import secrets
from contextlib import contextmanager

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn

from crosslm.config import TrainConfig
from crosslm.models import training
from crosslm.models.classifier import TextClassifier
from crosslm.models.training import (
    TrainItem,
    length_chunks,
    make_optimizer,
    per_example_loss,
    train_classifier,
)
from crosslm.privacy.accounting import DPPlan, Phase, sample_rate, steps_per_epoch


@contextmanager
def _only_trained(classifier: TextClassifier, trained: list[nn.Parameter]):
    """Freeze every parameter but ``trained`` for the duration (Opacus hooks only trained layers)."""
    keep = {id(p) for p in trained}
    frozen = [p for p in classifier.parameters() if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _per_example_gradients(classifier: TextClassifier, batch: list[TrainItem], distill_weight: float,
                           params: list[nn.Parameter]) -> None:
    """Each item's weighted-loss gradient into Opacus's ``grad_sample``, chunk by chunk
    (``length_chunks``: less padding).

    Opacus keeps a list of per-example gradients per backward pass and would take the passes
    for accumulated batches (dividing the step by their number); one batch's chunks are one
    batch, so their lists are joined, and the clipping and the noise see the batch as if it
    had run in one pass.
    """
    for chunk in length_chunks(batch, training.CHUNK_ROWS):
        logits = classifier.label_logits([item.text for item in chunk])
        weights = torch.tensor([item.weight for item in chunk], device=logits.device)
        # a mean, as GradSampleModule(loss_reduction="mean") expects: it multiplies by the chunk's size
        (weights * per_example_loss(logits, chunk, distill_weight)).mean().backward()
    for p in params:
        if isinstance(p.grad_sample, list):
            p.grad_sample = torch.cat(p.grad_sample)


def train_classifier_dp(classifier: TextClassifier, private: list[TrainItem], public: list[TrainItem], *,
                        plan: DPPlan, lr: float, epochs: int, batch_size: int, seed: int,
                        distill_weight: float = 0.0, optimizer_kind: str = "adamw"
                        ) -> tuple[dict[str, float], Phase]:
    """Train ``epochs`` expected passes over ``private`` with DP-SGD; (metrics, the steps to account).

    No early stopping: choosing the epoch on private validation data is not covered by ε.
    Nor is the training loss, a statistic of private batches: the metrics hold only
    counts fixed before training.
    """
    n = len(private)
    q, per_epoch = sample_rate(batch_size, n), steps_per_epoch(batch_size, n)
    phase = Phase(q, epochs * per_epoch)
    public_per_step = math.ceil(len(public) / per_epoch)
    rng = random.Random(seed)  # the public samples' order
    torch.manual_seed(seed)  # dropout
    # Poisson draws and noise from OS entropy: the run's seed is in the shared config, and a server
    # that knew it could replay the noise and the batches, which would void the guarantee
    generator = torch.Generator().manual_seed(secrets.randbits(63))
    sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=q, generator=generator,
                                            steps=phase.steps)
    classifier.train()
    params = classifier.dp_parameters()
    with _only_trained(classifier, params), classifier.frozen_features():
        model = GradSampleModule(classifier, batch_first=True, loss_reduction="mean", strict=False)
        optimizer = DPOptimizer(make_optimizer(params, lr, optimizer_kind),
                                noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
                                expected_batch_size=round(q * n) + public_per_step, loss_reduction="mean",
                                generator=generator)
        try:
            public_order: list[TrainItem] = []
            for step, indices in enumerate(sampler):
                if step % per_epoch == 0:
                    public_order = rng.sample(public, len(public))
                start = (step % per_epoch) * public_per_step
                batch = [private[i] for i in indices] + public_order[start:start + public_per_step]
                optimizer.zero_grad(set_to_none=True)
                if batch:
                    _per_example_gradients(classifier, batch, distill_weight, params)
                else:  # an empty Poisson draw is still a step: noise only
                    for p in params:
                        p.grad_sample = torch.zeros(0, *p.shape, dtype=p.dtype, device=p.device)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        finally:
            model.remove_hooks()
    return {"epochs_run": epochs, "best_epoch": epochs, "dp_steps": phase.steps}, phase


def train_on_public(classifier: TextClassifier, public: list[TrainItem], *, budget: TrainConfig, seed: int,
                    distill_weight: float = 0.0) -> dict[str, float]:
    """Train ``dp_parameters`` on public samples alone, without noise (no private record is read)."""
    with _only_trained(classifier, classifier.dp_parameters()), classifier.frozen_features():
        metrics = train_classifier(classifier, public, lr=budget.lr, epochs=budget.epochs,
                                   batch_size=budget.batch_size, seed=seed, distill_weight=distill_weight)
    return {"public_epochs": metrics["epochs_run"], "public_train_loss": metrics["train_loss"]}
