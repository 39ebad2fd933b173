"""The LLM side of a round: S1 generate, S2 aggregate, S3 improve, S4 select, S5 enhance, E."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

from crosslm.config import ExperimentConfig
from crosslm.models.llm import ServerLLM
from crosslm.models.sampling import SamplingParams
from crosslm.models.training import TrainItem, train_classifier
from crosslm.protocol import ScoreRes
from crosslm.strategies.aggregation import aggregate
from crosslm.strategies.feedback import improve_generator
from crosslm.strategies.realism import sample_rank
from crosslm.strategies.selection import select
from crosslm.synthetic import Candidate, ScoredSample, clean
from crosslm.tasks.spec import TaskSpec


class Server:
    """Holds the LLM and the in-context demonstrations between rounds."""

    def __init__(self, config: ExperimentConfig, task: TaskSpec, llm: ServerLLM) -> None:
        self.config, self.task, self.llm = config, task, llm
        self.feedback_demos: dict[int, list[str]] = {y: [] for y in range(task.num_labels)}

    def _rng(self, round_: int, salt: int) -> random.Random:
        return random.Random(f"{self.config.seed}-{round_}-{salt}")

    def _demonstrations(self, label: int, rng: random.Random) -> list[str]:
        """In-context feedback (best accepted samples) for up to half the demonstrations, public
        seeds for the rest. A pool larger than that half is sampled per prompt, so that a larger pool
        shows the prompts different samples instead of the same best two."""
        want = self.config.generation.num_demonstrations
        pool, from_feedback = self.feedback_demos[label], math.ceil(want / 2)
        chosen = pool[:] if len(pool) <= from_feedback else rng.sample(pool, from_feedback)
        seeds = self.task.seeds[self.task.labels[label]]
        chosen += rng.sample(seeds, min(len(seeds), want - len(chosen)))
        rng.shuffle(chosen)
        return chosen

    def generation_prompts(self, round_: int) -> tuple[list[str], list[int]]:
        """S1's prompts and their intended labels: ``samples_per_label`` few-shot prompts per label."""
        rng = self._rng(round_, 1)
        prompts, labels = [], []
        for label in range(self.task.num_labels):
            for _ in range(self.config.generation.samples_per_label):
                prompts.append(self.llm.generation_prompt(label, self._demonstrations(label, rng)))
                labels.append(label)
        return prompts, labels

    def sampling_params(self) -> SamplingParams:
        gen = self.config.generation
        return SamplingParams(gen.max_new_tokens, gen.temperature, gen.top_k, gen.top_p)

    def generate(self, round_: int) -> tuple[list[Candidate], dict[str, int]]:
        """S1: label-conditioned few-shot sampling, then drop degenerate samples and duplicates."""
        gen = self.config.generation
        prompts, labels = self.generation_prompts(round_)
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + round_)
        texts = self.llm.generate(prompts, self.sampling_params(), generator, gen.batch_size)
        shown = [d for ds in self.task.seeds.values() for d in ds]
        shown += [d for ds in self.feedback_demos.values() for d in ds]
        return clean([Candidate(t, y) for t, y in zip(texts, labels, strict=True)],
                     gen.min_words, shown)

    def aggregate(self, candidates: list[Candidate], replies: dict[str, ScoreRes]
                  ) -> list[ScoredSample]:
        """S2."""
        return aggregate(candidates, replies, self.config.aggregation.weights)

    def improve_generator(self, scored: list[ScoredSample], round_: int) -> dict[str, float]:
        """S3."""
        return improve_generator(self.llm, scored, self.task, self.config.feedback,
                                 self.config.seed + round_, optimizer_kind=self.config.server.optimizer)

    def select(self, scored: list[ScoredSample]) -> list[ScoredSample]:
        """S4, and the in-context feedback for the next round's prompts: a pool of the best accepted
        samples per label (most voted for, with realism feedback)."""
        sel = self.config.selection
        accepted = select(scored, self.task.num_labels, sel.threshold, sel.top_fraction,
                          sel.balance, sel.flips)
        keep = self.config.feedback.demonstrations_from_feedback
        rank = sample_rank(self.config.feedback.strategy)
        for label in range(self.task.num_labels):
            best = sorted((s for s in accepted if s.label == label), key=rank)
            if best:
                self.feedback_demos[label] = [s.text for s in best[:keep]]
        return accepted

    def accept_unjudged(self, candidates: list[Candidate]) -> list[ScoredSample]:
        """The synthetic-no-feedback baseline: every sample is accepted with its intended label."""
        one_hot = lambda label: [float(y == label) for y in range(self.task.num_labels)]  # noqa: E731
        return [ScoredSample(c.text, c.label, 1.0, one_hot(c.label), 0.0) for c in candidates]

    def enhance(self, accepted: list[ScoredSample], round_: int) -> dict[str, float]:
        """S5: continue training the LLM's classifier adapter on this round's accepted set.

        The adapter carries what earlier rounds taught it, so each sample is trained on in one round
        only: retraining on every sample accepted so far overfit it to the first rounds' texts.
        """
        if not accepted:
            return {"llm_train_samples": 0.0}
        budget = self.config.server.classifier_training
        items = [TrainItem(s.text, s.label, tuple(s.soft_label)) for s in accepted]
        distill = 1.0 if self.config.server.classifier_loss == "distill" else 0.0
        weight, positions = self.config.server.kl_weight, self.config.server.kl_positions
        forward = self.llm.kl_regularised_forward(positions, weight) if weight else None
        metrics = train_classifier(self.llm.classifier, items, lr=budget.lr, epochs=budget.epochs,
                                   batch_size=budget.batch_size, seed=self.config.seed + round_,
                                   distill_weight=distill, forward=forward,
                                   optimizer_kind=self.config.server.optimizer)
        return {"llm_train_samples": float(len(items)), "llm_train_loss": metrics["train_loss"]}

    # -- state between rounds, for resuming ---------------------------------------------------

    def save(self, directory: Path) -> None:
        self.llm.save_adapters(directory / "adapters")
        state = {"feedback_demos": self.feedback_demos}
        (directory / "server_state.json").write_text(json.dumps(state), encoding="utf-8")

    def load(self, directory: Path) -> None:
        self.llm.load_adapters(directory / "adapters")
        state = json.loads((directory / "server_state.json").read_text(encoding="utf-8"))
        self.feedback_demos = {int(k): v for k, v in state["feedback_demos"].items()}
