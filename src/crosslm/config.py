"""Experiment configuration: one validated tree, loaded from YAML with ``--set`` overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crosslm.errors import CrossLMError, read_yaml
from crosslm.methods import ENHANCEMENT, LLM_TRAINING, METHOD_NAMES, METHODS, method_spec


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainConfig(_Section):
    """An optimisation budget; used by client SLM training and the server's LoRA phases."""

    lr: float = Field(gt=0, description="learning rate of the AdamW (or Adafactor) optimizer")
    epochs: int = Field(ge=1, description="passes over the training examples (an upper bound where "
                                          "early stopping applies)")
    batch_size: int = Field(default=16, ge=1, description="examples per optimizer step")


DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"
DEVICE_DESCRIPTION = ("auto (a GPU when there is one, else the CPU), cpu, cuda or cuda:N; bfloat16 on GPUs "
                      "that support it when dtype is auto")
LoraTargetModules = list[str] | Literal["all-linear"] | None


class ClientsConfig(_Section):
    """The silos: how the task's training split is dealt to them, their SLMs and how those train."""

    num_clients: int = Field(default=4, ge=1, description="silos, one client (SLM) each")
    examples_per_client: int = Field(default=128, ge=1, description="private training examples per silo, "
                                                                    "disjoint, from the train split")
    validation_per_client: int = Field(default=32, ge=1, description="private validation examples per silo "
                                                                     "(early stopping, val_accuracy weights)")
    partition: Literal["iid", "dirichlet"] = Field(
        default="dirichlet", description="iid: every silo has the split's label mix; dirichlet: each silo's "
                                         "label mix is drawn from Dir(dirichlet_alpha) (non-IID)")
    dirichlet_alpha: float = Field(default=1.0, gt=0, description="partition dirichlet: smaller is more "
                                                                  "skewed (0.1: mostly one label per silo)")
    slm: list[str] = Field(
        default=["minilm-l6"], min_length=1,
        description="model per client, cycled over clients: an alias, hub id or local directory",
    )
    # 2e-4: at 5e-5, silos of 128 SST-2 examples often never beat predicting their majority label
    local_training: TrainConfig = Field(
        default=TrainConfig(lr=2e-4, epochs=20, batch_size=16),
        description="round 0 (C1): each SLM trained on its private data, stopped by patience")
    patience: int = Field(default=3, ge=1, description="epochs without validation gain before stopping")
    balance_labels: bool = Field(
        default=True,
        description="train on a logit-adjusted loss with the silo's own label prior, so a skewed silo's "
                    "model does not collapse onto its majority label; off under privacy (the prior would "
                    "make one record's loss depend on other records' labels)",
    )
    round_training: TrainConfig = Field(
        default=TrainConfig(lr=5e-5, epochs=1, batch_size=16),
        description="rounds 1..R (C1): each SLM trained on its private data and the accepted samples "
                    "(fedavg: one local pass before averaging)")
    synthetic_weight: float = Field(default=1.0, ge=0, description="loss weight of accepted samples")
    distill_weight: float = Field(
        default=0.5, ge=0, le=1,
        description="share of the accepted samples' loss that matches the aggregated soft label",
    )
    lora_rank: int = Field(default=8, ge=1, description="LoRA rank for causal-LM SLMs")
    lora_target_modules: LoraTargetModules = Field(
        default=None, description="modules LoRA adapts in causal-LM SLMs: module names or all-linear; None: "
                                  "PEFT's default for the architecture (encoders are fine-tuned whole)")
    device: str = Field(default="auto", pattern=DEVICE_PATTERN,
                        description=f"where each SLM runs: {DEVICE_DESCRIPTION}; a Flower SuperNode's "
                                    "'device' node config overrides it for its silo")
    reply_timeout: float | None = Field(
        default=None, gt=0,
        description="Flower engines: seconds to wait for replies; a client that misses it sits the "
                    "phase out (None: wait until every client replies or fails)")
    min_replies: int = Field(default=1, ge=1, description="fewer client replies than this fail the round")


class ServerConfig(_Section):
    """The server's LLM: which model, where it runs and how its LoRA adapters train (S3, S5)."""

    llm: str = Field(default="gemma3-270m", description="the LLM: an alias, hub id or local directory "
                                                        "of a causal LM")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="weights' dtype; auto: bfloat16 on GPUs that support it and on CPUs "
                                    "with AMX, else float32")
    device: str = Field(default="auto", pattern=DEVICE_PATTERN,
                        description=f"where the LLM runs: {DEVICE_DESCRIPTION}; auto shards an LLM that "
                                    "fits no single GPU over several (device_map=auto)")
    lora_rank: int = Field(default=8, ge=1, description="rank of the LLM's LoRA adapters (generator and "
                                                        "classifier)")
    lora_target_modules: LoraTargetModules = Field(
        default=None, description="modules the LLM's LoRA adapters adapt: module names or all-linear; "
                                  "None: PEFT's default for the architecture")
    gradient_checkpointing: bool = Field(
        default=False, description="S3/S5: recompute activations in the backward pass; less GPU memory "
                                   "for a large LLM's adapter training, about a third more time")
    optimizer: Literal["adamw", "adafactor"] = Field(
        default="adamw", description="S3/S5 optimizer of the LLM's adapters; adafactor keeps less state")
    # at lr 5e-4 x 1, round 2 of S5 could undo round 1 (docs/experiments.md, "Ablations")
    classifier_training: TrainConfig = Field(
        default=TrainConfig(lr=1e-4, epochs=2, batch_size=8),
        description="S5: the LLM's classifier adapter trained on each round's accepted samples")
    classifier_loss: Literal["label", "distill"] = Field(
        default="label", description="S5's target: label, the sample's intended label; distill, the SLMs' "
                                     "aggregated soft label")
    kl_weight: float = Field(
        default=1.0, ge=0, description="S5: weight of KL(base || adapted) that keeps general ability")
    kl_positions: int = Field(default=8, ge=1, description="S5: prompt positions the KL covers")


class GenerationConfig(_Section):
    """S1: how the LLM writes each round's labelled synthetic texts."""

    samples_per_label: int = Field(default=48, ge=1, description="texts the LLM writes per label and round "
                                                                 "(before degenerate ones are dropped)")
    num_demonstrations: int = Field(default=4, ge=0, description="example texts shown in each prompt: the "
                                                                 "task's seeds, later the best accepted")
    max_new_tokens: int = Field(default=40, ge=1, description="longest text, in tokens; sampling also "
                                                              "stops at the prompt's delimiter")
    temperature: float = Field(default=1.0, gt=0, description="sampling temperature; higher is more varied")
    top_k: int = Field(default=50, ge=1, description="sample from the k likeliest tokens (then top_p)")
    top_p: float = Field(default=0.95, gt=0, le=1, description="nucleus sampling: the likeliest tokens "
                                                               "whose probabilities sum to this")
    batch_size: int = Field(default=32, ge=1, description="prompts sampled together (memory vs speed; "
                                                          "changes which random draws a text gets, not "
                                                          "their distribution)")
    min_words: int = Field(default=3, ge=1, description="shorter texts are dropped as degenerate")
    prompt_format: Literal["completion", "chat"] = Field(
        default="completion", description="completion: few-shot text for a base LLM; chat: S1 and the LLM's "
                                          "classifier prompt through its tokenizer's chat template "
                                          "(instruction-tuned LLMs)")


REALISM_STRATEGIES = ("realism-sft", "realism-dpo")  # they ask the clients for votes (strategies/realism.py)


class FeedbackConfig(_Section):
    """S3: how the SLMs' judgements (q_j) improve the LLM's generator adapter."""

    strategy: Literal["filtered-sft", "reward-weighted", "dpo", "realism-sft", "realism-dpo"] = Field(
        default="filtered-sft", description="filtered-sft: train on samples with q_j >= threshold; "
                                            "reward-weighted: on all, weighted by q_j; dpo: prefer high-q "
                                            "over low-q samples of a label; realism-sft: on the samples "
                                            "the clients' private examples vote nearest; realism-dpo: "
                                            "prefer those to the least-voted and the label flips (the "
                                            "realism strategies not under privacy)")
    threshold: float = Field(default=0.7, ge=0, le=1, description="filtered-sft: minimum q_j")
    dpo_beta: float = Field(default=0.1, gt=0, description="dpo: strength of the pull towards the "
                                                           "reference model (DPO's beta)")
    max_samples_per_label: int = Field(
        default=24, ge=2, description="best samples per label the generator trains on per round")
    training: TrainConfig = Field(default=TrainConfig(lr=2e-4, epochs=1, batch_size=8),
                                  description="S3's optimisation budget of the generator adapter")
    demonstrations_from_feedback: int = Field(
        default=2, ge=0, description="best accepted samples per label kept for next round's prompts; "
                                     "each prompt shows up to half its demonstrations from them, drawn "
                                     "at random when there are more",
    )


TOP_LABEL = "top-label"


class SelectionConfig(_Section):
    """S4: which judged samples are accepted for S5 and the clients' next C1."""

    # every sample whose intended label the SLMs, together, rank first: on TREC's six labels q >= 0.5
    # starved S4 (4.3 SLM points lower); capping at the top half cost 3 points on SST-2
    # (docs/experiments.md, "Ablations")
    threshold: float | Literal["top-label"] = Field(
        default=TOP_LABEL, description="S4 keeps samples with q_j >= this; top-label: samples whose "
                                 "intended label is first in the aggregated soft label")
    top_fraction: float = Field(default=1.0, gt=0, le=1, description="per label, at most this share of "
                                                                     "its samples (best q_j first)")
    balance: bool = Field(default=True, description="every label keeps as many samples as the label with "
                                                    "the fewest accepted")
    flips: Literal["drop", "relabel"] = Field(
        default="drop", description="a sample under the threshold: drop it, or relabel it with the label "
                                    "the judges rank first and keep it (every text stays)")

    @field_validator("threshold", mode="before")
    @classmethod
    def _number_or_top_label(cls, value: object) -> object:
        """One message for both forms (a union would report each member's error)."""
        if value == TOP_LABEL or (isinstance(value, int | float) and not isinstance(value, bool)
                                  and 0 <= value <= 1):
            return value
        raise ValueError(f"should be a number from 0 to 1 or '{TOP_LABEL}'")


class AggregationConfig(_Section):
    """S2: how the clients' label distributions combine into q_j and the soft label."""

    weights: Literal["uniform", "data_size", "val_accuracy"] = Field(
        default="uniform", description="weight w_k of client k: equal, its private example count, or its "
                                       "SLM's validation accuracy (uniform only, under DP)")


class EvaluationConfig(_Section):
    """E: what is measured after round 0 and the rounds, and on how much data."""

    slm_test_size: int | None = Field(default=None, ge=1, description="SLM accuracy on the first this many "
                                                                      "test examples; None: all of them")
    llm_test_size: int | None = Field(default=None, ge=1, description="LLM task accuracy on the first this "
                                                                      "many test examples; None: all")
    calibrate: bool = Field(default=True, description="also report the LLM's content-free calibrated "
                                                      "accuracy; the summary takes the better of the two")
    llm_task_every_round: bool = Field(
        default=False, description="LLM task accuracy after every round, not only first and last")
    wikitext_tokens: int = Field(default=2048, ge=64, description="general ability: WikiText-2 tokens the "
                                                                  "LLM's perplexity is measured on")
    arc_easy_questions: int = Field(default=200, ge=1, description="general ability: ARC-Easy questions "
                                                                   "(multiple choice accuracy)")
    general_ability: bool = Field(default=True, description="measure the LLM's general ability (WikiText-2, "
                                                            "ARC-Easy) before and after the rounds")
    cache: bool = Field(
        default=True, description="reuse the LLM's evaluations of an identical model on identical data "
                                  "and settings from $CROSSLM_CACHE/evaluations (the untrained LLM's)")
    few_shot_per_label: int = Field(default=2, ge=1, description="llm-few-shot: seed demos per label")
    data_quality: bool = Field(
        default=False,
        description="measure each round's generated and accepted sets without the judges: label fidelity "
                    "to an oracle SLM trained on real data, distinct-n, Fréchet distance to real texts, and "
                    "each judge's accuracy against the oracle (crosslm and synthetic-no-feedback; "
                    "docs/data-quality.md)")
    oracle_model: str | None = Field(
        default=None, description="data_quality: the oracle's model; None: the clients' first SLM")
    oracle_examples: int = Field(
        default=1000, ge=2, description="data_quality: real training examples the oracle learns from, "
                                        "label-balanced (trained once, cached under $CROSSLM_CACHE/oracles)")
    reference_texts: int = Field(
        default=256, ge=2, description="data_quality: real training texts the synthetic sets' embeddings "
                                       "are compared with")
    embedding_model: str = Field(
        default="minilm-l6", description="data_quality: the encoder whose mean-pooled embeddings the "
                                         "Fréchet distance compares")


# DP-SGD trains few parameters (an encoder's head, a causal SLM's LoRA): a larger step and batch
# than fine-tuning; on held-out SST-2 training texts a DP head on MiniLM reached 73.4 % at ε = 8 with
# these, a DP fine-tune of the whole encoder stayed at chance (docs/privacy.md)
DP_LOCAL_TRAINING = TrainConfig(lr=1e-2, epochs=20, batch_size=64)
DP_ROUND_TRAINING = TrainConfig(lr=1e-2, epochs=1, batch_size=64)
# after a later round's DP steps: the same parameters on the accepted synthetic samples alone (public)
DP_PUBLIC_TRAINING = TrainConfig(lr=1e-2, epochs=5, batch_size=32)
# a causal SLM's LoRA: at 1e-2 the noise-free public pass tipped SmolLM2-135M onto one label (held-out
# training texts 53.5 %), at 1e-3 it reached 86.5 %, at 2e-4 84.0 % (benchmarks/dp_lora.py, ε = 8)
DP_LORA_LR = 1e-3


class PrivacyConfig(_Section):
    """DP-SGD at every client (docs/privacy.md): per-example clipping and Gaussian noise, accounted."""

    target_epsilon: float | None = Field(
        default=None, gt=0, description="ε each client may spend over round 0 and all rounds; the noise "
                                        "is planned to spend at most this (unless noise_multiplier is set)")
    noise_multiplier: float | None = Field(
        default=None, ge=0, description="Gaussian noise std / max_grad_norm; None: planned from "
                                        "target_epsilon")
    delta: float = Field(default=1e-5, gt=0, lt=1, description="δ of the (ε, δ) guarantee, per client; "
                                                                "well below 1 / records per silo")
    max_grad_norm: float = Field(default=1.0, gt=0, description="per-example gradient clipping norm")
    accountant: Literal["rdp", "prv"] = Field(default="rdp", description="Opacus accountant that composes "
                                                                         "the steps into ε")
    local_training: TrainConfig = Field(
        default=DP_LOCAL_TRAINING, description="round 0 under DP, in place of clients.local_training (no "
                                               "early stopping: every epoch is trained and accounted)")
    round_training: TrainConfig = Field(default=DP_ROUND_TRAINING,
                                        description="rounds 1..R (C1) under DP, in place of "
                                                    "clients.round_training")
    public_training: TrainConfig | None = Field(
        default=DP_PUBLIC_TRAINING,
        description="rounds 1..R under DP: after the DP-SGD steps, train the same parameters on the "
                    "accepted synthetic samples alone, without noise (public data: post-processing, "
                    "not accounted); null: off")
    lora_lr: float = Field(
        default=DP_LORA_LR, gt=0,
        description="the learning rate of a causal-LM SLM's LoRA in all three budgets above, in place of "
                    "their lr, which suits an encoder's head (benchmarks/dp_lora.py)")

    @model_validator(mode="after")
    def _noise_or_target(self) -> PrivacyConfig:
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise ValueError("set target_epsilon or noise_multiplier (or both: the run is refused when "
                             "that noise would exceed the target)")
        return self


class AuditConfig(_Section):
    """A membership-inference audit of client-0 (crosslm audit; docs/privacy.md), with or without DP."""

    canaries: int = Field(default=0, ge=0, description="plant this many canary records (unused pool texts "
                                                       "with random labels) in client-0's training data "
                                                       "and keep as many matched non-members; 0: no audit")


Method = Literal[METHOD_NAMES]  # the names of crosslm.methods.METHODS, in their order


class ExperimentConfig(_Section):
    """One experiment: the task, the method, the rounds and every section's settings."""

    task: str = Field(default="sst2", description="a built-in task name (sst2, ag_news, trec, ...) or the "
                                                  "path of a task YAML file")
    method: Method = Field(
        default="crosslm",
        description="crosslm, or a baseline to compare it with on the same splits (docs/experiments.md)")
    data_dir: str | None = Field(default=None, description="local data; default $CROSSLM_DATA_DIR")
    seed: int = Field(default=0, description="seeds the partition, every model's initialisation and "
                                             "sampling; client k uses seed + k")
    rounds: int = Field(default=3, ge=0, description="rounds after round 0 (local training and the LLM "
                                                     "before enhancement); 0: round 0 only")
    engine: Literal["in-process", "flower-sim", "flower"] = Field(
        default="in-process", description="in-process: one process; flower-sim: Flower's Simulation Engine "
                                          "on this machine; flower: a running SuperLink (docs/flower.md)")
    output_dir: str = Field(default="runs/sst2-default", description="the run directory: config, metrics, "
                                                                     "samples, checkpoints, summary")
    clients: ClientsConfig = Field(default=ClientsConfig(), description=ClientsConfig.__doc__)
    server: ServerConfig = Field(default=ServerConfig(), description=ServerConfig.__doc__)
    generation: GenerationConfig = Field(default=GenerationConfig(), description=GenerationConfig.__doc__)
    feedback: FeedbackConfig = Field(default=FeedbackConfig(), description=FeedbackConfig.__doc__)
    selection: SelectionConfig = Field(default=SelectionConfig(), description=SelectionConfig.__doc__)
    aggregation: AggregationConfig = Field(default=AggregationConfig(), description=AggregationConfig.__doc__)
    evaluation: EvaluationConfig = Field(default=EvaluationConfig(), description=EvaluationConfig.__doc__)
    privacy: PrivacyConfig | None = Field(
        default=None, description="DP-SGD at every client, accounted per client (docs/privacy.md); "
                                  "None: no differential privacy")
    audit: AuditConfig = Field(default=AuditConfig(), description=AuditConfig.__doc__)


# S1's settings but the prompt format, which the LLM's classifier reads too (round 0, zero-shot)
SAMPLING_SETTINGS = tuple(f"generation.{name}" for name in GenerationConfig.model_fields
                          if name != "prompt_format")
ENHANCEMENT_SETTINGS = (*SAMPLING_SETTINGS, "feedback", "selection", "aggregation")  # S1-S4
LLM_TRAINING_SETTINGS = ("server.classifier_training", "server.classifier_loss",  # S5 (and S3's optimizer)
                         "server.kl_weight", "server.kl_positions", "server.optimizer",
                         "server.gradient_checkpointing")


SETTING_GROUPS = {ENHANCEMENT: ENHANCEMENT_SETTINGS, LLM_TRAINING: LLM_TRAINING_SETTINGS}


def settings_not_read(method: Method) -> tuple[str, ...]:
    """Dotted settings ``method`` never reads, so changing them cannot change its results."""
    return tuple(setting for entry in method_spec(method).not_read
                 for setting in SETTING_GROUPS.get(entry, (entry,)))


def without_settings(tree: dict, dotted: tuple[str, ...]) -> dict:
    """A copy of a config dump without the given dotted settings."""
    kept = copy.deepcopy(tree)
    for key in dotted:
        *parents, leaf = key.split(".")
        node = kept
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return kept


def settings_read(tree: dict, method: Method) -> dict:
    """A config dump without the settings ``method`` never reads: what decides whether a stored
    run still matches a new config (the bench's cell status and ``--resume`` compare this)."""
    return without_settings(tree, settings_not_read(method))


def _apply_override(raw: dict, assignment: str) -> None:
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise CrossLMError(f"--set {assignment!r}: expected key=value, e.g. rounds=2")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise CrossLMError(f"--set {assignment!r}: '{part}' is not a section")
    node[leaf] = yaml.safe_load(value)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"])
        lines.append(f"  {field}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def merge_sections(base: dict, update: dict) -> dict:
    """``update`` over ``base``, section by section, so a partly given section keeps its defaults."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_from_layers(raw: dict) -> ExperimentConfig:
    """The defaults with ``raw`` merged over them, validated (a ValidationError names the fields)."""
    return ExperimentConfig.model_validate(merge_sections(ExperimentConfig().model_dump(), raw))


def check_method(config: ExperimentConfig) -> None:
    """Refuse a method that cannot run on this config, before anything is written."""
    method = method_spec(config.method)
    if method.one_slm and len(set(config.clients.slm)) > 1:
        raise CrossLMError(f"method {method.name} averages weights, so every client needs the same SLM; "
                           f"clients.slm is {config.clients.slm}")
    if method.oracle_filtered and not config.evaluation.data_quality:
        raise CrossLMError(f"method {method.name} filters with the data-quality meter's oracle; set "
                           "evaluation.data_quality=true")
    if config.engine not in method.engines:
        raise CrossLMError(f"method {method.name} runs {' or '.join(method.engines)} only; "
                           f"engine is {config.engine}")
    if config.privacy is not None:
        check_private(config)


def check_private(config: ExperimentConfig) -> None:
    """Refuse what would send private-data statistics outside the DP guarantee (docs/privacy.md)."""
    if not method_spec(config.method).private:  # the LLM-only baselines have no clients: privacy is moot
        private = [m.name for m in METHODS if m.private and m.clients]
        raise CrossLMError(f"privacy: method {config.method} is not trained with DP (fedavg sends weights "
                           "every round, centralized pools the silos, oracle-filtered filters with a model "
                           f"of real training data); {', '.join(private[:-1])} and {private[-1]} are")
    if config.feedback.strategy in REALISM_STRATEGIES:
        raise CrossLMError(f"privacy: feedback.strategy {config.feedback.strategy} asks each client for "
                           "vote counts of its private examples, which DP does not cover; use "
                           "filtered-sft, reward-weighted or dpo")
    if config.aggregation.weights != "uniform":
        raise CrossLMError(f"privacy: aggregation.weights {config.aggregation.weights} would send each "
                           "silo's private example count or validation accuracy; use uniform under DP")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        raw = read_yaml(Path(path), "config file")[1] or {}
        if not isinstance(raw, dict):
            raise CrossLMError(f"{path}: the top level must be a mapping of settings")
    for assignment in overrides:
        _apply_override(raw, assignment)
    try:
        return config_from_layers(raw)
    except ValidationError as err:
        raise CrossLMError(_format_errors(err, source)) from None
