"""Per round: the generated set (S1, after clean-up) and the accepted set (S4), measured against
the oracle and a real sample; the clients' C2 scores measured against the oracle.

Nothing here is sent to a client or used by the generator: the meter reads what the server
already holds. Its models run in a forked torch RNG, so a run with the meter on draws the same
random numbers (and reaches the same models) as one with it off.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from crosslm.config import ExperimentConfig
from crosslm.quality import measures
from crosslm.quality.oracle import Embedder, Oracle, RealSample, load_or_train_oracle, real_sample
from crosslm.synthetic import Candidate, ScoredSample
from crosslm.tasks.data import load_split
from crosslm.tasks.spec import TaskSpec


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


class DataQualityMeter:
    """Loads (or trains) its instruments on first use; ``measure`` gives one round's record."""

    def __init__(self, config: ExperimentConfig, task: TaskSpec, data_dir: Path | None,
                 progress: Callable[[str], None] = lambda message: None) -> None:
        ev = config.evaluation
        self.task, self.data_dir, self.progress = task, data_dir, progress
        self.oracle_model = ev.oracle_model or config.clients.slm[0]
        self.embedding_model, self.device = ev.embedding_model, config.server.device
        self.oracle_examples, self.reference_texts = ev.oracle_examples, ev.reference_texts
        self._oracle: Oracle | None = None
        self._embedder: Embedder | None = None
        self._reference = self._probe = None
        self._loaded_now = False  # the oracle's provenance is logged with the first round measured

    def _instruments(self) -> None:
        if self._oracle is not None:
            return
        pool = load_split(self.task, "train", self.data_dir)
        test = load_split(self.task, "test", self.data_dir)
        sample: RealSample = real_sample(pool, self.task.num_labels, self.oracle_examples,
                                         self.reference_texts)
        self.progress(f"data quality: oracle {self.oracle_model} on {len(sample.oracle_train)} real examples")
        self._oracle = load_or_train_oracle(self.oracle_model, self.task, sample, test, device=self.device)
        self._embedder = Embedder(self.embedding_model, self.device)
        self._reference = self._embedder(sample.reference)
        self._probe = self._embedder(sample.probe)
        self._loaded_now = True

    def measure(self, generated: list[Candidate], scored: list[ScoredSample],
                accepted: list[ScoredSample]) -> dict:
        """The E-data-quality record of one round; ``scored`` carries the clients' C2 distributions
        (none for synthetic-no-feedback, whose judge accuracy is None)."""
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            self._instruments()
            texts = [c.text for c in generated]
            oracle_labels = dict(zip(texts, self._oracle.labels(texts), strict=True))
            embeddings = dict(zip(texts, self._embedder(texts), strict=True))
        record: dict = {"oracle_model": self.oracle_model,
                        "oracle_test_accuracy": self._oracle.info["test_accuracy"],
                        "oracle_examples": self._oracle.info["examples"]}
        if self._loaded_now:
            record |= {"oracle_cached": self._oracle.cached, "oracle_info": self._oracle.info}
            self._loaded_now = False
        record["generated"] = self._set_figures(generated, oracle_labels, embeddings)
        record["accepted"] = self._set_figures(accepted, oracle_labels, embeddings)
        probe = self._probe[:max(2, len(accepted))]
        record["real"] = {"n": len(probe),
                          "frechet_distance": measures.frechet_distance(probe, self._reference)}
        judged = [s for s in scored if s.client_probs and s.text in oracle_labels]
        judges = measures.judge_accuracy([s.client_probs for s in judged],
                                         [oracle_labels[s.text] for s in judged])
        record["judge_accuracy"] = judges
        record["judge_accuracy_mean"] = _mean(judges.values())
        return record

    def labelled_as_intended(self, samples: list[ScoredSample]) -> list[ScoredSample]:
        """The samples whose intended label the oracle agrees with: method oracle-filtered's S4, which
        shows how far a perfect label filter would take the round (the oracle has seen real data, so
        no federated method can do this)."""
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            self._instruments()
            labels = self._oracle.labels([s.text for s in samples])
        return [s for s, label in zip(samples, labels, strict=True) if label == s.label]

    def _set_figures(self, samples: list, oracle_labels: dict[str, int], embeddings: dict) -> dict:
        names = self.task.labels
        texts, labels = [s.text for s in samples], [s.label for s in samples]
        by_label = {n: measures.distinct_by_label(texts, labels, n) for n in (1, 2)}
        figures = {"n": len(samples),
                   "oracle_fidelity": measures.agreement([oracle_labels[t] for t in texts], labels)}
        for n in (1, 2):
            figures[f"distinct_{n}"] = _mean(by_label[n].values())
            figures[f"distinct_{n}_by_label"] = {names[y]: v for y, v in by_label[n].items()}
        figures["frechet_distance"] = (
            measures.frechet_distance([embeddings[t] for t in texts], self._reference)
            if len(texts) >= 2 else None)
        return figures
