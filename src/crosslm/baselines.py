"""What CrossLM is compared with, on the same splits and budget (docs/experiments.md).

local-only, centralized and llm-zero-shot are round 0 of ``RoundLoop`` with one
side left out; synthetic-no-feedback is its round without C2, S2, S3 and S4.
This module holds what the others add: the union of the silos (centralized),
a few-shot prompt (llm-few-shot), FedAvg, whose round moves SLM weights
through the same federation interface, and centralized-llm, whose round is S5
on the silos' real data.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from crosslm.config import ExperimentConfig
from crosslm.models.classifier import TextClassifier
from crosslm.models.training import accuracy
from crosslm.protocol import AverageIns, AverageRes, pack_weights, unpack_weights
from crosslm.rounds import Progress, RoundLoop
from crosslm.rundir import RunDir
from crosslm.runtime.base import Federation
from crosslm.server import Server
from crosslm.synthetic import ScoredSample
from crosslm.tasks.partition import ClientData
from crosslm.tasks.spec import Example, TaskSpec


def union_of_silos(silos: list[ClientData]) -> ClientData:
    """The centralized baseline's data: every silo's private training and validation examples."""
    return ClientData([ex for s in silos for ex in s.train], [ex for s in silos for ex in s.validation])


def few_shot_task(task: TaskSpec, per_label: int, seed: int) -> TaskSpec:
    """The task with public seed demonstrations, labelled, before the text to classify."""
    rng = random.Random(seed)
    demos = [(text, label) for label, name in enumerate(task.labels)
             for text in rng.sample(task.seeds[name], min(per_label, len(task.seeds[name])))]
    rng.shuffle(demos)
    shown = "".join(task.classify_prompt(text) + task.verbalizers[label] + "\n\n" for text, label in demos)
    escaped = shown.replace("{", "{{").replace("}", "}}")
    return task.model_copy(update={"classify_template": escaped + task.classify_template})


def average(replies: dict[str, AverageRes], reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FedAvg: the clients' weights, weighted by their number of examples (integer buffers kept)."""
    states = [(unpack_weights(r.weights), r.num_examples) for r in replies.values()]
    total = sum(n for _, n in states)
    return {key: (sum(state[key].double() * n for state, n in states) / total).to(ref.dtype)
            if ref.is_floating_point() else ref
            for key, ref in reference.items()}


class FedAvgLoop(RoundLoop):
    """Rounds 0..R of FedAvg: send the global SLM, clients train, average, evaluate the average.

    Clients train the budget CrossLM's C1 has in the same round (``Client.fit_average``);
    the global model's test accuracy is logged as ``E-slm-global``.
    """

    def __init__(self, config: ExperimentConfig, federation: Federation, run: RunDir,
                 model: TextClassifier, test: list[Example], progress: Progress) -> None:
        super().__init__(config, None, federation, run, [], None, progress)
        self.model, self.test = model, test

    @property
    def last_round(self) -> int:
        return self.config.rounds

    def round_zero(self) -> None:
        self.crosslm_round(0)

    def crosslm_round(self, round_: int) -> None:
        self.round = round_
        ins = AverageIns(round_, pack_weights(self.model.trainable_state()))
        with self.phase("C1-fit") as record:
            replies: dict[str, AverageRes] = self._send(
                {cid: ins for cid in self.federation.client_ids()}, "fit")
            record["clients"] = {cid: {"num_examples": r.num_examples, "val_accuracy": r.val_accuracy,
                                       "test_accuracy": None, "metrics": r.metrics}
                                 for cid, r in replies.items()}
        with self.phase("S-average"):
            self.model.load_trainable_state(average(replies, self.model.trainable_state()))
        with self.phase("E-slm-global") as record:
            record["accuracy"] = accuracy(self.model, self.test)
        self._log_traffic()
        self.model.save(self.run.round_dir(round_) / "global-slm.safetensors")
        self.run.mark_completed(round_)

    def restore(self, done: int) -> None:
        self.model.load(self.run.round_dir(done) / "global-slm.safetensors")


class CentralizedLLMLoop(RoundLoop):
    """Rounds 0 and 1 of centralized-llm: round 1 is S5's training on the union of the silos'
    real training data (what no CrossLM server may see), then the LLM's evaluation.

    The reference CrossLM's LLM is measured against: the same adapter, loss, KL and budget as
    S5, on real instead of synthetic samples (one-hot soft labels), each seen in one round as
    S5 sees each accepted sample.
    """

    def __init__(self, config: ExperimentConfig, server: Server, run: RunDir, *, pooled: list[Example],
                 llm_test: list[Example], data_dir: Path | None, progress: Progress) -> None:
        super().__init__(config, server, None, run, llm_test=llm_test, data_dir=data_dir, progress=progress)
        labels = server.task.num_labels
        one_hot = lambda label: [float(y == label) for y in range(labels)]  # noqa: E731
        self.samples = [ScoredSample(ex.text, ex.label, quality=1.0, soft_label=one_hot(ex.label),
                                     disagreement=0.0) for ex in pooled]

    @property
    def last_round(self) -> int:
        return min(1, self.config.rounds)

    def crosslm_round(self, round_: int) -> None:
        self.round = round_
        with self.phase("S5-enhance-llm") as record:
            record |= self.server.enhance(self.samples, round_)
        self._evaluate_llm()
        self.server.save(self.run.round_dir(round_))
        self.run.mark_completed(round_)
