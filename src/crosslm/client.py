"""The SLM side of a round: C1 fit, C2 score, E evaluate.

A client's state (its model after each round, the accepted sets it received,
its metrics) lives in a node-local directory, so a restarted client, or a
runtime that starts a fresh process per message, carries on where it was.
Private data is read here and never put into a reply.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from crosslm.config import ClientsConfig, TrainConfig
from crosslm.errors import CrossLMError
from crosslm.models.classifier import TextClassifier, VerbalizerClassifier, build_classifier
from crosslm.models.training import TrainItem, accuracy, logit_adjusted, prediction_figures, train_classifier
from crosslm.privacy.accounting import DPPlan, PrivacyLedger
from crosslm.protocol import (
    AverageIns,
    AverageRes,
    FitIns,
    FitRes,
    Message,
    ScoreIns,
    ScoreRes,
    pack_weights,
    unpack_weights,
)
from crosslm.rundir import write_atomic
from crosslm.strategies.realism import nearest_votes
from crosslm.tasks.partition import ClientData
from crosslm.tasks.spec import Example, TaskSpec


class Client:
    """One silo: its SLM, its private data, its state directory.

    With a ``privacy`` plan it trains with DP-SGD, keeps its spent ε in
    ``state_dir/privacy.json`` and sends no statistic of its private data but
    through the DP model (docs/privacy.md).
    """

    def __init__(self, name: str, model_name: str, task: TaskSpec, data: ClientData,
                 test: list[Example], state_dir: Path, config: ClientsConfig, seed: int,
                 privacy: DPPlan | None = None) -> None:
        self.name, self.model_name, self.task = name, model_name, task
        self.data, self.test, self.config, self.seed = data, test, config, seed
        self.privacy = privacy
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._classifier: TextClassifier | None = None
        self._classifier_round: int | None = None  # which round's snapshot is in memory

    def handle(self, message: Message) -> Message:
        if isinstance(message, FitIns):
            return self.fit(message)
        if isinstance(message, ScoreIns):
            return self.score(message)
        if isinstance(message, AverageIns):
            return self.fit_average(message)
        raise ValueError(f"client {self.name} cannot handle {type(message).__name__}")

    # -- state ------------------------------------------------------------------------------

    def _snapshot(self, round_: int) -> Path:
        return self.state_dir / f"model-r{round_}.safetensors"

    def _latest_snapshot(self, round_: int) -> Path:
        """The snapshot of ``round_``, or of the last round before it this client completed."""
        done = [r for r in range(round_, -1, -1) if self._snapshot(r).is_file()]
        if not done:
            raise FileNotFoundError(f"client {self.name} has no model from round {round_} or before")
        return self._snapshot(done[0])

    def _model_after(self, round_: int | None) -> TextClassifier:
        """The SLM as it was after ``round_`` (None: freshly initialised)."""
        if self._classifier is None:
            self._classifier = build_classifier(self.model_name, self.task, self.config.lora_rank, self.seed,
                                                device=self.config.device,
                                                lora_target_modules=self.config.lora_target_modules)
            self._classifier_round = None
            self._initial_state = {k: v.clone() for k, v in
                                   self._classifier.trainable_state().items()}
        if self._classifier_round != round_:
            if round_ is None:
                self._classifier.load_trainable_state(self._initial_state)
            else:
                self._classifier.load(self._latest_snapshot(round_))
            self._classifier_round = round_
        return self._classifier

    def _save(self, round_: int, classifier: TextClassifier, metrics: dict) -> None:
        tmp = self._snapshot(round_).with_suffix(".tmp")
        classifier.save(tmp)
        os.replace(tmp, self._snapshot(round_))
        for old in self.state_dir.glob("model-r*.safetensors"):
            if int(old.stem.removeprefix("model-r")) < round_ - 1:
                old.unlink()
        rounds = self._rounds() | {str(round_): metrics}
        write_atomic(self.state_dir / "rounds.json", json.dumps(rounds))
        with (self.state_dir / "metrics.jsonl").open("a", encoding="utf-8") as log:
            log.write(json.dumps({"round": round_, **metrics}) + "\n")

    def _rounds(self) -> dict[str, dict]:
        """Each completed round's fit metrics, by round."""
        path = self.state_dir / "rounds.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def _accepted_items(self, up_to_round: int) -> list[TrainItem]:
        items = []
        for round_ in range(1, up_to_round + 1):
            path = self.state_dir / f"accepted-r{round_}.jsonl"
            if path.is_file():
                for line in path.read_text(encoding="utf-8").splitlines():
                    row = json.loads(line)
                    items.append(TrainItem(row["text"], row["label"], tuple(row["soft_label"]),
                                           self.config.synthetic_weight))
        return items

    def _private_items(self) -> list[TrainItem]:
        """The silo's examples, with its label prior as a logit offset unless off or under DP
        (``logit_adjusted``)."""
        items = [TrainItem(ex.text, ex.label) for ex in self.data.train]
        if self.config.balance_labels and self.privacy is None:
            return logit_adjusted(items, self.task.num_labels)
        return items

    # -- phases -----------------------------------------------------------------------------

    def fit(self, ins: FitIns) -> FitRes:
        """C1: round 0 trains on private data to convergence; later rounds add the accepted sets.

        Only round 0 early-stops on the private validation split: a silo's split is
        small and, under non-IID partitions, as skewed as its training data, so later
        rounds take their fixed budget rather than let a skewed split veto the
        label-balanced accepted data.
        """
        started = time.perf_counter()
        private = self._private_items()
        if ins.round == 0:
            classifier = self._model_after(None)
            budget, validation, accepted = self._budget(0), self.data.validation, []
        else:
            rows = [{"text": t, "label": y, "soft_label": s}
                    for t, y, s in zip(ins.texts, ins.labels, ins.soft_labels, strict=True)]
            write_atomic(self.state_dir / f"accepted-r{ins.round}.jsonl",
                         "".join(json.dumps(r) + "\n" for r in rows))
            classifier = self._model_after(ins.round - 1)
            budget, validation = self._budget(ins.round), None
            accepted = self._accepted_items(ins.round)
        self._classifier_round = -1  # mid-training weights match no saved round
        if self.privacy is None:
            metrics = train_classifier(
                classifier, private + accepted, lr=budget.lr, epochs=budget.epochs,
                batch_size=budget.batch_size, seed=self.seed + ins.round,
                distill_weight=self.config.distill_weight, validation=validation,
                patience=self.config.patience)
        else:
            metrics = self._fit_private(classifier, private, accepted, budget, ins.round)
        self._classifier_round = ins.round
        start = time.perf_counter()
        test_acc, majority_share = prediction_figures(classifier, self.test) if ins.evaluate else (None, None)
        # under DP the private validation split is not read: its accuracy is not covered by ε
        val_acc = accuracy(classifier, self.data.validation) if self.privacy is None else math.nan
        metrics |= {"val_accuracy": val_acc, "num_accepted": len(accepted), "test_accuracy": test_acc,
                    "test_majority_share": majority_share, "eval_seconds": time.perf_counter() - start,
                    "seconds": time.perf_counter() - started}
        self._save(ins.round, classifier, metrics)
        num_examples = len(self.data.train) if self.privacy is None else 0  # a count is private too
        return FitRes(ins.round, num_examples, metrics["val_accuracy"], test_acc,
                      {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})

    def _budget(self, round_: int) -> TrainConfig:
        """Round 0's or a later round's C1 budget; a DP plan brings its own (docs/privacy.md)."""
        source = self.privacy if self.privacy is not None else self.config
        return source.local_training if round_ == 0 else source.round_training

    def _fit_private(self, classifier: TextClassifier, private: list[TrainItem], accepted: list[TrainItem],
                     budget: TrainConfig, round_: int) -> dict[str, float]:
        """C1 with DP-SGD: the fixed epochs (no early stopping), ε over every round so far; then, in
        later rounds, the accepted samples alone without noise (``train_on_public``)."""
        # Opacus loads here: a non-private client (one Flower ClientApp process per message) never pays for it
        from crosslm.privacy.dp_training import train_classifier_dp, train_on_public

        budget = self._with_dp_rate(classifier, budget)
        metrics, phase = train_classifier_dp(
            classifier, private, accepted, plan=self.privacy, lr=budget.lr, epochs=budget.epochs,
            batch_size=budget.batch_size, seed=self.seed + round_, distill_weight=self.config.distill_weight)
        if round_ > 0 and accepted and self.privacy.public_training is not None:
            metrics |= train_on_public(classifier, accepted,
                                       budget=self._with_dp_rate(classifier, self.privacy.public_training),
                                       seed=self.seed + round_, distill_weight=self.config.distill_weight)
        ledger = PrivacyLedger(self.state_dir / "privacy.json", self.privacy)
        return metrics | {"epsilon": ledger.record(round_, [phase]), "delta": self.privacy.delta,
                          "noise_multiplier": self.privacy.noise_multiplier}

    def _with_dp_rate(self, classifier: TextClassifier, budget: TrainConfig) -> TrainConfig:
        """A causal SLM's LoRA trains at ``privacy.lora_lr``: the budgets' rate suits an encoder's head
        (benchmarks/dp_lora.py)."""
        if isinstance(classifier, VerbalizerClassifier):
            return budget.model_copy(update={"lr": self.privacy.lora_lr})
        return budget

    def fit_average(self, ins: AverageIns) -> AverageRes:
        """The FedAvg baseline: from the global weights, the budget C1 has in the same round.

        Round 0 trains to convergence on the private validation split, later rounds
        take ``round_training``, so FedAvg gets what CrossLM's clients get.
        """
        classifier = self._model_after(None)
        classifier.load_trainable_state(unpack_weights(ins.weights))
        self._classifier_round = -1
        budget = self.config.local_training if ins.round == 0 else self.config.round_training
        metrics = train_classifier(
            classifier, self._private_items(), lr=budget.lr,
            epochs=budget.epochs, batch_size=budget.batch_size, seed=self.seed + ins.round,
            validation=self.data.validation if ins.round == 0 else None, patience=self.config.patience)
        val_acc = accuracy(classifier, self.data.validation)
        self._save(ins.round, classifier, metrics | {"val_accuracy": val_acc})
        self._classifier_round = ins.round
        return AverageRes(ins.round, len(self.data.train), pack_weights(classifier.trainable_state()),
                          val_acc, {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})

    def score(self, ins: ScoreIns) -> ScoreRes:
        """C2: this SLM's label distribution for every synthetic text, calibrated on the batch.

        S1 writes as many texts per label, so an unbiased judge's mean prediction over
        the batch is near uniform. Dividing by this SLM's mean (and renormalising) removes
        the constant lean that a label-skewed silo gives it: on SST-2 with Dirichlet(1)
        silos, raw scores put every text on the majority label, no text of the other label
        reached the selection threshold, and the label-balanced S4 accepted nothing.
        With ``ins.votes``, each private example also votes for its nearest text
        (``crosslm.strategies.realism``).
        """
        started = time.perf_counter()
        if ins.votes and self.privacy is not None:
            raise CrossLMError("a DP client does not vote: a vote count is a statistic of its private "
                               "data outside the DP guarantee (docs/privacy.md)")
        classifier = self._model_after(ins.round - 1)
        votes = (nearest_votes(private=classifier.embed([e.text for e in self.data.train]),
                               synthetic=classifier.embed(ins.texts)) if ins.votes else [])
        probs = classifier.predict_proba(ins.texts)
        probs = probs / probs.mean(0)
        probs = probs / probs.sum(-1, keepdim=True)
        scorer_round = self._latest_snapshot(ins.round - 1).stem.removeprefix("model-r")
        num_examples = len(self.data.train) if self.privacy is None else 0
        return ScoreRes(ins.round, [[round(float(p), 5) for p in row] for row in probs],
                        num_examples, self._rounds()[scorer_round]["val_accuracy"],
                        round(time.perf_counter() - started, 3), votes)
