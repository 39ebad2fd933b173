"""The oracle and the embedder: the meter's instruments, which no client and no generator sees.

The oracle is an SLM trained on a label-balanced sample of the task's real training split
(``evaluation.oracle_examples``), once per (task, model, sample, seed): its weights and its own
test accuracy are cached under ``$CROSSLM_CACHE/oracles`` and later runs load them. The real
texts the synthetic sets are compared with (the reference sample, and a second real sample as
a floor) come from the same split but not from the oracle's examples; both are fixed by
``ORACLE_SEED``, the same in every run, so every run and method is measured with one instrument.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crosslm.errors import CrossLMError
from crosslm.evaluation_cache import digest
from crosslm.models.classifier import TextClassifier, build_classifier
from crosslm.models.loading import load_encoder, model_cache_dir, model_kind
from crosslm.models.training import TrainItem, accuracy, train_classifier
from crosslm.tasks.spec import Example, TaskSpec

ORACLE_SEED = 0  # the real samples and the oracle's training: fixed, so all runs share the instrument
CACHE_VERSION = 1
VALIDATION_SHARE = 0.1  # of the oracle's examples, for early stopping
TEST_MAX = 2000  # the oracle's test accuracy is measured on at most this many test examples
# MiniLM-L6 on 1,800 SST-2 examples (3 epochs): the best validation accuracy was epoch 2's, 83.0% on
# the test split; 21 min on this 2-core CPU under load (docs/data-quality.md)
TRAINING = {"lr": 1e-4, "epochs": 2, "batch_size": 32, "patience": 1, "lora_rank": 8}


@dataclass(frozen=True)
class RealSample:
    """Disjoint pieces of the real training split: the oracle's, and the texts the sets are compared with."""

    oracle_train: list[Example]
    oracle_validation: list[Example]
    reference: list[str]  # what the synthetic sets' embeddings are compared with
    probe: list[str]  # a second real sample: its distance to the reference is a perfect generator's


def real_sample(pool: list[Example], num_labels: int, oracle_examples: int, reference_texts: int,
                seed: int = ORACLE_SEED) -> RealSample:
    """A fixed shuffle of the pool: reference and probe texts first (the pool's own label mix),
    then up to ``oracle_examples // num_labels`` examples of each label for the oracle."""
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    if len(order) < 2 * reference_texts + num_labels:
        raise CrossLMError(f"evaluation.reference_texts {reference_texts}: the training split has only "
                           f"{len(order)} examples, too few for two real samples and an oracle")
    reference, probe = order[:reference_texts], order[reference_texts:2 * reference_texts]
    rest = order[2 * reference_texts:]
    per_label = max(1, oracle_examples // num_labels)
    train, validation = [], []
    for label in range(num_labels):
        mine = [ex for ex in rest if ex.label == label][:per_label]
        held = round(len(mine) * VALIDATION_SHARE) if len(mine) >= 10 else 0
        validation += mine[:held]
        train += mine[held:]
    if not train:
        raise CrossLMError("the oracle has no training examples")
    return RealSample(train, validation, [ex.text for ex in reference], [ex.text for ex in probe])


@dataclass
class Oracle:
    """A trained classifier and what it scored on the task's test split."""

    classifier: TextClassifier
    info: dict  # model, examples, test_accuracy, test_examples, train_seconds
    cached: bool  # loaded from $CROSSLM_CACHE rather than trained in this run

    def labels(self, texts: list[str]) -> list[int]:
        """The oracle's label (argmax) for each text."""
        if not texts:
            return []
        return self.classifier.predict_proba(texts).argmax(-1).tolist()


def oracle_key(model_name: str, task: TaskSpec, sample: RealSample, test: list[Example], seed: int) -> dict:
    """Everything the oracle's weights and test accuracy depend on."""
    examples = lambda items: digest([[ex.text, ex.label] for ex in items])  # noqa: E731
    return {"version": CACHE_VERSION, "model": model_name, "task": task.name, "labels": task.labels,
            "train": examples(sample.oracle_train), "validation": examples(sample.oracle_validation),
            "test": examples(test[:TEST_MAX]), "training": TRAINING, "seed": seed}


def oracle_dir(key: dict) -> Path:
    return model_cache_dir() / "oracles" / digest(key)[:32]


def _build(model_name: str, task: TaskSpec, seed: int, device: str) -> TextClassifier:
    return build_classifier(model_name, task, TRAINING["lora_rank"], seed, device=device)


def load_or_train_oracle(model_name: str, task: TaskSpec, sample: RealSample, test: list[Example], *,
                         device: str = "cpu", seed: int = ORACLE_SEED) -> Oracle:
    """The cached oracle of this key, else one trained now (and cached: written atomically)."""
    key = oracle_key(model_name, task, sample, test, seed)
    folder = oracle_dir(key)
    classifier = _build(model_name, task, seed, device)
    if (folder / "oracle.json").is_file():
        try:
            info = json.loads((folder / "oracle.json").read_text(encoding="utf-8"))["info"]
            classifier.load(folder / "oracle.safetensors")
            return Oracle(classifier, info, cached=True)
        except (OSError, ValueError, KeyError, RuntimeError):
            classifier = _build(model_name, task, seed, device)  # unreadable: train it again
    start = time.perf_counter()
    items = [TrainItem(ex.text, ex.label) for ex in sample.oracle_train]
    metrics = train_classifier(classifier, items, lr=TRAINING["lr"], epochs=TRAINING["epochs"],
                               batch_size=TRAINING["batch_size"], seed=seed,
                               validation=sample.oracle_validation or None, patience=TRAINING["patience"])
    train_seconds = time.perf_counter() - start
    test = test[:TEST_MAX]
    info = {"model": model_name, "examples": len(items), "epochs_run": metrics["epochs_run"],
            "best_epoch": metrics["best_epoch"], "train_seconds": round(train_seconds, 1),
            "test_accuracy": accuracy(classifier, test) if test else None, "test_examples": len(test)}
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    classifier.save(staging / "oracle.safetensors")
    (staging / "oracle.json").write_text(json.dumps({"key": key, "info": info}), encoding="utf-8")
    try:
        staging.rename(folder)
    except OSError:  # another run cached the same oracle first
        shutil.rmtree(staging, ignore_errors=True)
    return Oracle(classifier, info, cached=False)


class Embedder:
    """Sentence embeddings: an encoder's mean-pooled last hidden states, L2-normalised (the
    sentence-transformers pipeline of all-MiniLM-L6-v2, the packaged ``minilm-l6``)."""

    def __init__(self, model_name: str, device: str = "cpu", max_length: int = 128) -> None:
        if model_kind(model_name) != "encoder":
            raise CrossLMError(f"evaluation.embedding_model {model_name!r} is not an encoder")
        self.encoder, self.tokenizer = load_encoder(model_name, device)
        self.max_length = max_length

    @torch.inference_mode()
    def __call__(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        self.encoder.eval()
        device = next(self.encoder.parameters()).device
        rows = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length).to(device)
            out = self.encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
            hidden = out.last_hidden_state
            mask = enc.attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            rows.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, self.encoder.config.hidden_size))
