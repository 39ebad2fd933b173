"""DP-SGD for any client SLM: Opacus per-example gradients, clipping and Gaussian noise.

What is trained is what ``TextClassifier.trainable_parameters`` names: the whole
encoder and head of an ``EncoderClassifier`` (its Embedding, LayerNorm and Linear
layers have Opacus grad samplers), the LoRA matrices (Linear) of a
``VerbalizerClassifier`` (the frozen base model, RMSNorm included, needs none).
A trainable layer without a grad sampler falls back to Opacus's functorch
sampler (``strict=False``, which also admits BERT's position-id buffers: they do
not mix examples). Parameters that get no gradient at all (BERT's unused pooler)
are frozen while training, as the optimizer would skip them anyway; so are those
whose input is one buffer shared by the batch (BERT's position embeddings), which
have no per-example gradient. The word-embedding table is frozen too, by choice: its
per-example gradient is a [batch, vocabulary, hidden] tensor (750 MB a step for MiniLM at
16 examples), three times the step's time, and noising its 11.7M coordinates, most of
which no example touches, costs accuracy for a layer fine-tuning barely needs.

Sampling is Poisson, as the accountant assumes: each step includes every private
record independently with probability q = batch_size / n_private (Opacus's
``UniformWithReplacementSampler``). Accepted synthetic samples are public (the
server sent them): each step adds a fixed share of them, drawn without looking at
private data, so they change the gradient but not the accounting.
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
from transformers import PreTrainedModel

from crosslm.models.classifier import TextClassifier
from crosslm.models.training import TrainItem, make_optimizer, per_example_loss
from crosslm.privacy.accounting import DPPlan, Phase, sample_rate, steps_per_epoch

PROBE = ["a probe text", "another, longer probe text"]  # two texts: a shared input shows as a batch of one


def _word_embeddings(classifier: TextClassifier) -> list[nn.Parameter]:
    """The trainable token-embedding tables (an encoder's; a LoRA SLM trains none)."""
    tables = {id(m.get_input_embeddings().weight): m.get_input_embeddings().weight
              for m in classifier.modules() if isinstance(m, PreTrainedModel)}
    return [w for w in tables.values() if w.requires_grad]


@contextmanager
def _frozen_without_per_example_grads(classifier: TextClassifier, probe: list[str]):
    """Freeze the word embeddings and the parameters that cannot get a per-example gradient.

    The latter are found on a probe batch. Two kinds: those no gradient reaches (BERT's
    pooler: the classifier pools itself), and those whose input is shared by the whole batch
    (BERT's position embeddings read a [1, T] buffer, so Opacus would see a batch of one).
    The probe texts are fixed, not private records: what is frozen depends on the
    architecture only.
    """
    frozen = _word_embeddings(classifier)
    for p in frozen:
        p.requires_grad_(False)
    try:
        params = classifier.trainable_parameters()
        classifier.train()  # Opacus captures activations in training mode only
        probe_model = GradSampleModule(classifier, batch_first=True, loss_reduction="sum", strict=False)
        try:
            classifier.label_logits(probe).sum().backward()
            no_grad_sample = [p for p in params if getattr(p, "grad_sample", None) is None
                              or p.grad_sample.shape[0] != len(probe)]
        finally:
            probe_model.remove_hooks()
            for p in params:
                p.grad, p.grad_sample = None, None
        for p in no_grad_sample:
            p.requires_grad_(False)
        frozen += no_grad_sample
        yield [p for p in params if p.requires_grad]
    finally:
        for p in frozen:
            p.requires_grad_(True)


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
    with _frozen_without_per_example_grads(classifier, PROBE) as params:
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
                    logits = classifier.label_logits([item.text for item in batch])
                    weights = torch.tensor([item.weight for item in batch], device=logits.device)
                    loss = (weights * per_example_loss(logits, batch, distill_weight)).mean()
                    loss.backward()
                else:  # an empty Poisson draw is still a step: noise only
                    for p in params:
                        p.grad_sample = torch.zeros(0, *p.shape, dtype=p.dtype, device=p.device)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        finally:
            model.remove_hooks()
    return {"epochs_run": epochs, "best_epoch": epochs, "dp_steps": phase.steps}, phase
