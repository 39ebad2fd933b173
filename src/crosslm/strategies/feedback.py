"""S3: improve the generator with the clients' feedback (the SLMs promote the LLM's data).

Every strategy trains the ``generator`` adapter on the label's plain prompt
(instruction and item prefix, no demonstrations), so one update helps every
few-shot prompt of that label:

- ``filtered-sft``: language-model loss on samples with q_j at or above a threshold.
- ``reward-weighted``: language-model loss on every sample, weighted by q_j.
- ``dpo``: per label, pair the best-scored with the worst-scored samples; DPO
  loss against the base model (adapters off) as the reference.
- ``realism-sft``: language-model loss on the samples most voted for by the
  clients' private examples (``crosslm.strategies.realism``) among those whose
  intended label the judges rank first.
- ``realism-dpo``: ``dpo``'s pairs, ranked by the votes: the most-voted samples
  the judges put on their label against the least-voted and the flips.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

from crosslm.config import TOP_LABEL, FeedbackConfig
from crosslm.models.llm import GENERATOR, ServerLLM
from crosslm.models.training import make_optimizer
from crosslm.strategies.realism import sample_rank
from crosslm.strategies.selection import acceptable
from crosslm.synthetic import ScoredSample
from crosslm.tasks.spec import TaskSpec

Batch = list[ScoredSample]
LossFn = Callable[[ServerLLM, str, Batch], torch.Tensor]


def _sft_loss(llm: ServerLLM, prompt: str, batch: Batch, stop: str, weighted: bool) -> torch.Tensor:
    logp = llm.completion_logprobs(prompt, [s.text for s in batch], stop)
    lengths = torch.tensor([len(llm.tokenizer(" " + s.text + stop, add_special_tokens=False)
                                .input_ids) for s in batch], device=logp.device)
    weights = torch.tensor([s.quality if weighted else 1.0 for s in batch], device=logp.device)
    return -(weights * logp / lengths).sum() / len(batch)


def _dpo_loss(llm: ServerLLM, prompt: str, batch: Batch, stop: str, beta: float) -> torch.Tensor:
    """Batch = chosen samples then rejected samples, pairwise."""
    half = len(batch) // 2
    texts = [s.text for s in batch]
    policy = llm.completion_logprobs(prompt, texts, stop)
    with torch.no_grad(), llm.model.disable_adapter():
        reference = llm.completion_logprobs(prompt, texts, stop)
    margin = (policy - reference)[:half] - (policy - reference)[half:]
    return -F.logsigmoid(beta * margin).mean()


def _dpo_batches(by_label: dict[int, Batch], batch_size: int, cap: int, rng: random.Random,
                 rank: Callable[[ScoredSample], object]) -> list[tuple[int, Batch]]:
    batches = []
    for label, samples in by_label.items():
        ranked = sorted(samples, key=rank)
        pairs = [(c, r) for c, r in zip(ranked[:len(ranked) // 2], ranked[::-1], strict=False)
                 if rank(c) < rank(r)][:cap // 2]
        rng.shuffle(pairs)
        for start in range(0, len(pairs), max(1, batch_size // 2)):
            chunk = pairs[start:start + max(1, batch_size // 2)]
            batches.append((label, [c for c, _ in chunk] + [r for _, r in chunk]))
    return batches


def _plain_batches(by_label: dict[int, Batch], batch_size: int, cap: int, rng: random.Random,
                   rank: Callable[[ScoredSample], object]) -> list[tuple[int, Batch]]:
    batches = []
    for label, samples in by_label.items():
        best = sorted(samples, key=rank)[:cap]
        order = rng.sample(best, len(best))
        batches += [(label, order[i:i + batch_size]) for i in range(0, len(order), batch_size)]
    return batches


def improve_generator(llm: ServerLLM, samples: list[ScoredSample], task: TaskSpec,
                      config: FeedbackConfig, seed: int, optimizer_kind: str = "adamw") -> dict[str, float]:
    """One strategy's update of the generator adapter; returns what it trained on and its loss.

    ``optimizer_kind``: adamw or adafactor (``crosslm.models.training.make_optimizer``).
    """
    stop = "\n"
    if config.strategy == "filtered-sft":
        samples = [s for s in samples if s.quality >= config.threshold]
    if config.strategy == "realism-sft":
        samples = [s for s in samples if s.votes > 0 and acceptable(s, TOP_LABEL)]
    rank = sample_rank(config.strategy)
    by_label = {y: [s for s in samples if s.label == y] for y in range(task.num_labels)}
    by_label = {y: group for y, group in by_label.items() if group}
    rng = random.Random(seed)
    torch.manual_seed(seed)  # dropout: the same draws whatever ran before (resumed runs match)
    make_batches = _dpo_batches if config.strategy in ("dpo", "realism-dpo") else _plain_batches
    loss_fn: LossFn = {
        "filtered-sft": lambda m, p, b: _sft_loss(m, p, b, stop, weighted=False),
        "reward-weighted": lambda m, p, b: _sft_loss(m, p, b, stop, weighted=True),
        "dpo": lambda m, p, b: _dpo_loss(m, p, b, stop, config.dpo_beta),
        "realism-sft": lambda m, p, b: _sft_loss(m, p, b, stop, weighted=False),
        "realism-dpo": lambda m, p, b: _dpo_loss(m, p, b, stop, config.dpo_beta),
    }[config.strategy]
    llm.model.set_adapter(GENERATOR)
    llm.model.train()
    optimizer = make_optimizer(llm.generator.parameters(), config.training.lr, optimizer_kind)
    losses, steps = [], 0
    for _ in range(config.training.epochs):
        for label, batch in make_batches(by_label, config.training.batch_size,
                                         config.max_samples_per_label, rng, rank):
            loss = loss_fn(llm, llm.generation_prompt(label, []), batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            steps += 1
    llm.model.eval()
    metrics = {"generator_samples": float(sum(min(len(g), config.max_samples_per_label)
                                              for g in by_label.values())),
               "generator_steps": float(steps)}
    return metrics | ({"generator_loss": sum(losses) / len(losses)} if losses else {})
