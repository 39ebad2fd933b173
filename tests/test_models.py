"""Sampling, classifiers, their training loop, the server LLM and the S3 feedback strategies.

Everything runs on the tiny random models of ``tiny_models.py``, loaded by directory
through the project's own loaders.
"""

from __future__ import annotations

import math
import string
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crosslm.config import FeedbackConfig, TrainConfig, load_config
from crosslm.models import training
from crosslm.models.classifier import EncoderClassifier, VerbalizerClassifier, build_classifier
from crosslm.models.llm import CLASSIFIER, GENERATOR, ServerLLM
from crosslm.models.loading import load_causal_lm
from crosslm.models.sampling import SamplingParams, _pick, sample_completions
from crosslm.models.training import (
    EpochSelector,
    TrainItem,
    accuracy,
    backward_in_chunks,
    balanced_accuracy,
    length_chunks,
    logit_adjusted,
    make_optimizer,
    per_example_loss,
    prediction_figures,
    train_classifier,
)
from crosslm.server import Server
from crosslm.strategies.feedback import improve_generator
from crosslm.strategies.realism import sample_rank
from crosslm.synthetic import ScoredSample
from crosslm.tasks.spec import Example, TaskSpec

NEVER = "§"  # a stop string the tiny model does not produce: generation runs to max_new_tokens


@pytest.fixture(scope="module")
def causal(tiny_causal_dir: Path):
    """(model, left-padding tokenizer), read-only."""
    return load_causal_lm(str(tiny_causal_dir))


@pytest.fixture(scope="module")
def contextual(tiny_causal_dir: Path):
    """The tiny LM with its (tied) embeddings scaled down, so that what it writes depends on the
    whole context rather than mostly on the last token: padding or cache mistakes then show."""
    model, tokenizer = load_causal_lm(str(tiny_causal_dir))
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(0.1)
    return model, tokenizer


def clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Recorder(nn.Module):
    """The real model, with the batch size of every forward call recorded."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.batch_sizes = model, []

    def forward(self, **kwargs):
        self.batch_sizes.append(kwargs["input_ids"].shape[0])
        return self.model(**kwargs)


class Forced(nn.Module):
    """The real model, with the greedy choice of step i forced to ``tokens[i]`` (a logit bias)."""

    def __init__(self, model: nn.Module, tokens: list[int]) -> None:
        super().__init__()
        self.model, self.tokens, self.step = model, tokens, 0

    def forward(self, **kwargs):
        out = self.model(**kwargs)
        out.logits[:, -1, self.tokens[self.step]] += 1e4
        self.step += 1
        return out


# -- sampling ----------------------------------------------------------------------------------


def prompts_of_different_lengths(task: TaskSpec) -> list[str]:
    return [task.generation_prompt(0, task.seeds["negative"][:3]), task.generation_prompt(1, []),
            "Review:", task.generation_prompt(1, task.seeds["positive"][:1])]


def test_one_completion_per_prompt_without_the_stop(causal, task):
    model, tokenizer = causal
    prompts = prompts_of_different_lengths(task)
    for seed in range(3):
        long = sample_completions(model, tokenizer, prompts, SamplingParams(20, stop=NEVER), seeded(seed))
        cut = sample_completions(model, tokenizer, prompts, SamplingParams(20, stop="e"), seeded(seed))
        assert len(cut) == len(long) == len(prompts)
        assert all(isinstance(text, str) and "e" not in text for text in cut)
        assert any("e" in text for text in long)  # so the stop did cut something


def test_the_stop_cuts_the_same_sample(causal, task):
    model, tokenizer = causal
    prompt = [task.generation_prompt(1, [])]
    for seed in range(4):
        long = sample_completions(model, tokenizer, prompt, SamplingParams(20, stop=NEVER), seeded(seed))[0]
        cut = sample_completions(model, tokenizer, prompt, SamplingParams(20, stop="e"), seeded(seed))[0]
        assert cut == long.split("e")[0].strip()


def test_sampling_is_deterministic_per_seed_and_differs_across_seeds(causal, task):
    model, tokenizer = causal
    prompts = prompts_of_different_lengths(task)
    params = SamplingParams(max_new_tokens=10, stop=NEVER)
    runs = [sample_completions(model, tokenizer, prompts, params, seeded(s)) for s in (0, 0, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2] and runs[2] != runs[3] and runs[0] != runs[3]


def test_max_new_tokens_is_respected(causal, task):
    model, tokenizer = causal
    prompts = prompts_of_different_lengths(task)
    by_budget = {}
    for budget in (1, 3, 6):
        recorder = Recorder(model)
        by_budget[budget] = sample_completions(recorder, tokenizer, prompts,
                                               SamplingParams(budget, stop=NEVER), seeded(7))
        assert len(recorder.batch_sizes) <= budget + 1  # the prompt pass, then one per new token
    one_token = {tokenizer.decode([i]).strip() for i in range(len(tokenizer))}
    assert all(text in one_token for text in by_budget[1])
    for shorter, longer in ((1, 3), (3, 6)):
        assert all(b.startswith(a) for a, b in zip(by_budget[shorter], by_budget[longer], strict=True))
    assert by_budget[3] != by_budget[6]


def test_max_new_tokens_counts_tokens(causal):
    model, tokenizer = causal
    ids = tokenizer(" the film was long and the plot was thin", add_special_tokens=False).input_ids
    for budget in (1, 4, 7):
        forced = Forced(model, ids)
        text = sample_completions(forced, tokenizer, ["Review:"], SamplingParams(budget, top_k=1),
                                  seeded(0))
        assert text == [tokenizer.decode(ids[:budget]).strip()]


def test_greedy_batched_equals_alone_with_left_padding_and_pruning(contextual, task):
    model, tokenizer = contextual
    prompts = prompts_of_different_lengths(task)
    greedy = dict(max_new_tokens=12, top_k=1)
    runs = [sample_completions(model, tokenizer, [p], SamplingParams(**greedy, stop=NEVER), seeded(0))[0]
            for p in prompts]
    assert len(set(runs)) == len(runs)
    # A stop letter some completions contain and others do not: those rows finish early.
    stop = next(c for c in string.ascii_lowercase
                if 0 < sum(c in text for text in runs) < len(runs))
    params = SamplingParams(**greedy, stop=stop)
    alone = [sample_completions(model, tokenizer, [p], params, seeded(0))[0] for p in prompts]
    recorder = Recorder(model)
    batched = sample_completions(recorder, tokenizer, prompts, params, seeded(1))
    assert batched == alone
    assert recorder.batch_sizes[0] == len(prompts)
    assert min(recorder.batch_sizes) < len(prompts)  # finished rows left the batch (and the cache)
    assert len(recorder.batch_sizes) >= greedy["max_new_tokens"]  # while others went on


def test_a_character_split_over_tokens_is_decoded_whole(causal):
    model, tokenizer = causal
    ids = tokenizer("café", add_special_tokens=False).input_ids
    assert tokenizer.decode(ids[-2:]) == "é" and "\ufffd" in tokenizer.decode(ids[-1:])
    newline = tokenizer("\n", add_special_tokens=False).input_ids
    forced = Forced(model, ids + newline)
    texts = sample_completions(forced, tokenizer, ["Review:"], SamplingParams(10, top_k=1), seeded(0))
    assert texts == ["café"]


def test_pick_stays_inside_the_top_k():
    logits = torch.randn(6, 50, generator=seeded(0))
    allowed = torch.topk(logits, 5, dim=-1).indices
    generator = seeded(1)
    for _ in range(200):
        token = _pick(logits, SamplingParams(top_k=5, top_p=1.0), generator)
        assert (allowed == token[:, None]).any(-1).all()


def test_pick_with_tiny_top_p_or_top_k_one_is_the_argmax():
    logits = torch.randn(6, 50, generator=seeded(2))
    generator = seeded(3)
    for _ in range(50):
        assert torch.equal(_pick(logits, SamplingParams(top_k=50, top_p=1e-6), generator),
                           logits.argmax(-1))
        assert torch.equal(_pick(logits, SamplingParams(top_k=1, top_p=0.95), generator),
                           logits.argmax(-1))


def test_pick_top_p_keeps_the_smallest_prefix_reaching_p():
    logits = torch.tensor([[0.6, 0.3, 0.1]]).log()
    generator = seeded(4)
    draws = {int(_pick(logits, SamplingParams(top_k=3, top_p=0.7), generator)) for _ in range(300)}
    assert draws == {0, 1}
    draws = {int(_pick(logits, SamplingParams(top_k=3, top_p=0.5), generator)) for _ in range(100)}
    assert draws == {0}


# -- classifiers and training -----------------------------------------------------------------

SUBJECTS = ["the film", "this movie", "the plot", "the acting", "the script", "the ending",
            "the cast", "the music"]
SENTIMENT = [TrainItem(f"{s} was {word}", label) for s in SUBJECTS
             for word, label in (("bad", 0), ("good", 1))]
SENTIMENT_EXAMPLES = [Example(i.text, i.label) for i in SENTIMENT]
# Learning rate and epochs that fit SENTIMENT with each kind of tiny model.
BUDGET = {"encoder": dict(lr=3e-3, epochs=8), "causal": dict(lr=1e-2, epochs=8)}


@pytest.fixture(params=["encoder", "causal"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def model_dir(kind, tiny_encoder_dir, tiny_causal_dir) -> str:
    return str(tiny_encoder_dir if kind == "encoder" else tiny_causal_dir)


def test_build_classifier_on_an_encoder(tiny_encoder_dir, task):
    classifier = build_classifier(str(tiny_encoder_dir), task, lora_rank=4, seed=0)
    assert isinstance(classifier, EncoderClassifier)
    probs = classifier.predict_proba(["a fine film", "a dreadful , boring film"])
    assert probs.shape == (2, 2)
    assert torch.allclose(probs.sum(-1), torch.ones(2))
    assert len(classifier.trainable_parameters()) == len(list(classifier.parameters()))


def test_an_encoder_computing_in_bfloat16_predicts_as_in_float32(tiny_encoder_dir, task):
    """Mixed precision (what dtype auto picks on a CPU with AMX or a bf16 GPU) changes the
    encoder's arithmetic, not what a trained classifier predicts; its weights stay float32."""
    classifier = build_classifier(str(tiny_encoder_dir), task, lora_rank=4, seed=0, dtype="float32")
    assert classifier.compute_dtype is torch.float32
    train_classifier(classifier, SENTIMENT, batch_size=8, seed=0, **BUDGET["encoder"])
    texts = [i.text for i in SENTIMENT]
    exact = classifier.predict_proba(texts)
    classifier.compute_dtype = torch.bfloat16
    mixed = classifier.predict_proba(texts)
    assert mixed.dtype is torch.float32 and (mixed - exact).abs().max() < 0.05
    assert torch.equal(mixed.argmax(-1), exact.argmax(-1))
    assert not torch.equal(mixed, exact)  # bfloat16 did run
    assert all(p.dtype is torch.float32 for p in classifier.parameters())
    bf16 = build_classifier(str(tiny_encoder_dir), task, lora_rank=4, seed=0, dtype="bfloat16")
    assert bf16.compute_dtype is torch.bfloat16


def test_the_fused_adamw_step_trains_as_the_per_tensor_one(tiny_encoder_dir, task, monkeypatch):
    """make_optimizer's fused AdamW (one kernel for all tensors, on a CPU or a CUDA GPU) is a
    faster step, not another optimizer: the same training ends at the same weights."""
    def trained(fused: bool) -> dict[str, torch.Tensor]:
        monkeypatch.setattr(training, "FUSED_ADAMW_DEVICES", ("cpu", "cuda") if fused else ())
        classifier = build_classifier(str(tiny_encoder_dir), task, lora_rank=4, seed=0, dtype="float32")
        assert make_optimizer(classifier.trainable_parameters(), 1e-3).defaults["fused"] is (fused or None)
        train_classifier(classifier, SENTIMENT, batch_size=8, seed=0, **BUDGET["encoder"])
        return clone_state(classifier.trainable_state())

    fused, per_tensor = trained(fused=True), trained(fused=False)
    # within 1/30 of a step (lr 3e-3): most tensors agree to 1e-7; attention's key biases, whose
    # gradient is rounding noise (softmax ignores them), move apart by about 1e-5
    assert all(torch.allclose(fused[k], per_tensor[k], atol=1e-4) for k in fused)
    assert not same_state(fused, clone_state(build_classifier(
        str(tiny_encoder_dir), task, lora_rank=4, seed=0).trainable_state()))  # it did train


def test_build_classifier_on_a_causal_lm_trains_only_lora(tiny_causal_dir, task):
    classifier = build_classifier(str(tiny_causal_dir), task, lora_rank=4, seed=0)
    assert isinstance(classifier, VerbalizerClassifier)
    trainable = {id(p) for p in classifier.trainable_parameters()}
    names = {n for n, p in classifier.named_parameters() if id(p) in trainable}
    assert names and all("lora_" in n for n in names)
    assert {n for n, p in classifier.named_parameters() if p.requires_grad} == names
    assert all(p.shape[0] == 4 or p.shape[1] == 4 for p in classifier.trainable_parameters())

    base = clone_state({n: p for n, p in classifier.named_parameters() if "lora_" not in n})
    lora = clone_state(classifier.trainable_state())
    train_classifier(classifier, SENTIMENT, batch_size=8, seed=0, **BUDGET["causal"])
    after = {n: p for n, p in classifier.named_parameters() if "lora_" not in n}
    assert same_state(base, clone_state(after))
    assert not same_state(lora, classifier.trainable_state())


def test_training_fits_a_separable_task(model_dir, kind, task):
    classifier = build_classifier(model_dir, task, lora_rank=4, seed=0)
    with torch.no_grad():
        logits = classifier.label_logits([i.text for i in SENTIMENT])
    labels = torch.tensor([i.label for i in SENTIMENT])
    loss_before = float(torch.nn.functional.cross_entropy(logits, labels))
    metrics = train_classifier(classifier, SENTIMENT, batch_size=8, seed=0, **BUDGET[kind])
    assert metrics["epochs_run"] == BUDGET[kind]["epochs"]
    assert metrics["train_loss"] < loss_before
    assert accuracy(classifier, SENTIMENT_EXAMPLES) >= 0.9


def test_length_chunks_keep_the_batch_shortest_first():
    batch = [TrainItem("a" * n, 0) for n in (9, 2, 7, 4, 1)]
    chunks = length_chunks(batch, 2)
    assert [[len(item.text) for item in chunk] for chunk in chunks] == [[1, 2], [4, 7], [9]]


def _gradients(classifier) -> list[torch.Tensor]:
    """Each trained parameter's gradient, zero for one the loss does not reach (e.g. a pooler)."""
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone()
             for p in classifier.trainable_parameters()]
    classifier.zero_grad(set_to_none=True)
    return grads


def test_backward_in_chunks_gives_the_whole_batch_gradient(model_dir, task):
    """Chunking changes only how the batch is padded: the gradient (weights, soft labels and an
    added per-text loss included) is the one the whole batch gives in one pass. In float32: in
    bfloat16 (dtype auto on a CPU with AMX) a different padding rounds differently."""
    classifier = build_classifier(model_dir, task, lora_rank=4, seed=0, dtype="float32")
    classifier.eval()  # no dropout: both passes see the same function
    batch = [TrainItem(f"{i.text} {'and so on ' * (k % 4)}", i.label, (0.3, 0.7) if k % 3 else None,
                       weight=0.5 + k % 2) for k, i in enumerate(SENTIMENT[:10])]
    texts = [item.text for item in batch]
    extra_of = lambda logits: logits.logsumexp(-1).mean()  # noqa: E731
    logits = classifier.label_logits(texts)
    weights = torch.tensor([item.weight for item in batch])
    whole = (weights * per_example_loss(logits, batch, 0.5)).sum() / weights.sum() + extra_of(logits)
    whole.backward()
    expected = _gradients(classifier)

    def forward(chunk_texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        chunk_logits = classifier.label_logits(chunk_texts)
        return chunk_logits, extra_of(chunk_logits)

    loss = backward_in_chunks(classifier, batch, 0.5, forward)
    assert loss == pytest.approx(whole.item(), rel=1e-5)
    assert any(want.any() for want in expected)
    for got, want in zip(_gradients(classifier), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_training_keeps_the_weights_of_its_best_validation_epoch(tiny_encoder_dir, task):
    classifier = build_classifier(str(tiny_encoder_dir), task, lora_rank=4, seed=1)
    # Validation labels contradict the training labels: later epochs only get worse on it.
    # (This seed's balanced accuracies are 0.5 x 3, 0.56 x 3: the best is epoch 4, in the middle.)
    inverted = [Example(ex.text, 1 - ex.label) for ex in SENTIMENT_EXAMPLES]
    metrics = train_classifier(classifier, SENTIMENT, lr=3e-4, epochs=6, batch_size=8, seed=1,
                               validation=inverted)
    assert 1 < metrics["best_epoch"] < 6
    assert metrics["val_balanced_accuracy"] == pytest.approx(balanced_accuracy(classifier, inverted))
    # The same seed trained for exactly best_epoch epochs, without validation, ends in the same state.
    replay = build_classifier(str(tiny_encoder_dir), task, lora_rank=4, seed=1)
    train_classifier(replay, SENTIMENT, lr=3e-4, epochs=int(metrics["best_epoch"]), batch_size=8, seed=1)
    assert same_state(replay.trainable_state(), classifier.trainable_state())


def test_balanced_accuracy_does_not_reward_predicting_the_majority_label(tiny_encoder_dir, task):
    classifier = build_classifier(str(tiny_encoder_dir), task, lora_rank=4, seed=0)
    always_good = [TrainItem(i.text, 1) for i in SENTIMENT]
    train_classifier(classifier, always_good, batch_size=8, seed=0, **BUDGET["encoder"])
    goods = [ex for ex in SENTIMENT_EXAMPLES if ex.label == 1]
    skewed = goods[:7] + [next(ex for ex in SENTIMENT_EXAMPLES if ex.label == 0)]
    assert accuracy(classifier, skewed) == pytest.approx(7 / 8)
    assert balanced_accuracy(classifier, skewed) == pytest.approx(0.5)


def test_logit_adjusted_offsets_each_item_by_its_silos_label_prior():
    items = [TrainItem("a", 0), TrainItem("b", 0), TrainItem("c", 0), TrainItem("d", 1, weight=2.0)]
    adjusted = logit_adjusted(items, num_labels=3, tau=2.0)
    # counts 3, 1 and (missing) 0 -> one half, over 4 items
    expected = (2 * math.log(3 / 4), 2 * math.log(1 / 4), 2 * math.log(0.5 / 4))
    assert all(item.prior_offset == pytest.approx(expected) for item in adjusted)
    assert [(i.text, i.label, i.weight) for i in adjusted] == [(i.text, i.label, i.weight) for i in items]


def test_the_cross_entropy_shifts_the_logits_by_the_prior_offset_and_distillation_does_not():
    logits = torch.tensor([[0.3, -0.2], [1.0, 0.5]])
    offset = (math.log(0.9), math.log(0.1))
    batch = [TrainItem("a", 1, prior_offset=offset), TrainItem("b", 0, soft_label=(0.2, 0.8))]
    loss = per_example_loss(logits, batch, distill_weight=0.5)
    shifted = logits[0] + torch.tensor(offset)
    assert loss[0] == pytest.approx(float(F.cross_entropy(shifted[None], torch.tensor([1]))))
    soft_part = -(torch.tensor([0.2, 0.8]) * F.log_softmax(logits[1], -1)).sum()
    hard_part = F.cross_entropy(logits[1][None], torch.tensor([0]))
    assert loss[1] == pytest.approx(float(0.5 * hard_part + 0.5 * soft_part))


def test_epoch_selector_does_not_lock_onto_a_collapsed_first_epoch():
    validation = [Example("x", 0), Example("y", 1), Example("z", 2)]
    selector = EpochSelector(validation, patience=2)
    chance = float(torch.tensor([1.0, 0.0, 0.0]).mean())  # how balanced_accuracy computes it: float32
    # epochs at chance: each replaces the last and patience does not run
    assert [selector.keep(e, chance) for e in (1, 2, 3, 4)] == [True] * 4
    assert not selector.stop(4)
    assert selector.keep(5, 0.6) and selector.best_epoch == 5
    assert not selector.keep(6, chance) and not selector.stop(6)
    assert not selector.keep(7, 0.55) and selector.stop(7)  # above chance: patience runs


def test_epoch_selector_keeps_the_last_epoch_when_validation_has_one_label():
    selector = EpochSelector([Example("x", 1), Example("y", 1)], patience=1)
    assert [selector.keep(e, acc) for e, acc in ((1, 1.0), (2, 0.5), (3, 0.9))] == [True] * 3
    assert selector.best_epoch == 3 and not selector.stop(3)


def test_epoch_selector_keeps_the_first_of_equal_epochs_above_chance():
    selector = EpochSelector([Example("x", 0), Example("y", 1)], patience=None)
    assert selector.keep(1, 0.75) and not selector.keep(2, 0.75) and selector.best_epoch == 1


def test_test_figures_measure_the_majority_share(tiny_encoder_dir, task):
    classifier = build_classifier(str(tiny_encoder_dir), task, lora_rank=4, seed=0)
    train_classifier(classifier, [TrainItem(i.text, 1) for i in SENTIMENT], batch_size=8, seed=0,
                     **BUDGET["encoder"])
    acc, share = prediction_figures(classifier, SENTIMENT_EXAMPLES)
    assert share == 1.0  # trained on one label only: collapsed
    assert acc == pytest.approx(sum(ex.label == 1 for ex in SENTIMENT_EXAMPLES) / len(SENTIMENT_EXAMPLES))


def test_training_with_patience_stops_early(tiny_encoder_dir, task):
    classifier = build_classifier(str(tiny_encoder_dir), task, lora_rank=4, seed=1)
    inverted = [Example(ex.text, 1 - ex.label) for ex in SENTIMENT_EXAMPLES]
    metrics = train_classifier(classifier, SENTIMENT, lr=3e-4, epochs=20, batch_size=8, seed=1,
                               validation=inverted, patience=2)
    assert metrics["epochs_run"] <= metrics["best_epoch"] + 2 < 20


def test_save_load_round_trip(model_dir, kind, task, tmp_path):
    trained = build_classifier(model_dir, task, lora_rank=4, seed=0)
    train_classifier(trained, SENTIMENT, batch_size=8, seed=0, lr=BUDGET[kind]["lr"], epochs=2)
    trained.save(tmp_path / "model.safetensors")
    texts = [i.text for i in SENTIMENT] + ["an unseen text about a film"]
    expected = trained.predict_proba(texts)

    fresh = build_classifier(model_dir, task, lora_rank=4, seed=1)
    assert not torch.allclose(fresh.predict_proba(texts), expected, atol=1e-4)
    fresh.load(tmp_path / "model.safetensors")
    assert torch.allclose(fresh.predict_proba(texts), expected, atol=1e-6)


def test_full_distillation_pulls_predictions_towards_the_soft_labels(tiny_encoder_dir, task):
    classifier = build_classifier(str(tiny_encoder_dir), task, lora_rank=4, seed=0)
    soft = (0.3, 0.7)
    # The hard label says 0 everywhere; with distill_weight=1 only the soft label counts.
    items = [TrainItem(i.text, 0, soft_label=soft) for i in SENTIMENT]
    texts = [i.text for i in items]
    target = torch.tensor(soft)
    gap_before = (classifier.predict_proba(texts) - target).abs().max()
    train_classifier(classifier, items, lr=3e-3, epochs=10, batch_size=8, seed=0, distill_weight=1.0)
    probs = classifier.predict_proba(texts)
    assert (probs - target).abs().max() < min(0.1, float(gap_before))


def test_a_long_text_is_still_scored_after_the_end_of_the_prompt(tiny_causal_dir, task):
    classifier = build_classifier(str(tiny_causal_dir), task, lora_rank=4, seed=0)
    long_text = " ".join(["the film was long and the plot was thin"] * 60)
    seen = []
    classifier.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True)
    classifier.label_logits([long_text])
    prompt_ids = classifier.tokenizer(task.classify_prompt(long_text)).input_ids
    assert len(prompt_ids) > classifier.max_length
    assert seen[0].shape[1] <= classifier.max_length
    assert seen[0][0, -1].item() == prompt_ids[-1]


# -- the server LLM -----------------------------------------------------------------------------


@pytest.fixture
def llm(tiny_causal_dir, task) -> ServerLLM:
    return ServerLLM(str(tiny_causal_dir), task, lora_rank=4, seed=0)


def randomise(llm: ServerLLM, adapter: str, seed: int) -> None:
    """Give an adapter non-zero weights, so that it changes what the model computes."""
    generator = seeded(seed)
    with torch.no_grad():
        for name, param in llm.model.named_parameters():
            if f".{adapter}." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def brute_force_logprob(llm: ServerLLM, prompt: str, completion: str, stop: str) -> float:
    prompt_ids = llm.tokenizer(prompt).input_ids
    ids = prompt_ids + llm.tokenizer(" " + completion + stop, add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = llm.model(input_ids=torch.tensor([ids])).logits.float().log_softmax(-1)[0]
    return sum(float(logp[i - 1, ids[i]]) for i in range(len(prompt_ids), len(ids)))


def test_completion_logprobs_equal_a_brute_force_computation(llm, task):
    randomise(llm, GENERATOR, seed=0)
    llm.model.set_adapter(GENERATOR)
    llm.model.eval()
    prompt = task.generation_prompt(0, task.seeds["negative"][:2])
    completions = ["a dull film .", "the worst movie i have seen in years , truly a waste", "bad"]
    with torch.no_grad():
        got = llm.completion_logprobs(prompt, completions, "\n")
    expected = [brute_force_logprob(llm, prompt, c, "\n") for c in completions]
    assert got.tolist() == pytest.approx(expected, rel=1e-4, abs=1e-3)
    with torch.no_grad(), llm.model.disable_adapter():
        base = llm.completion_logprobs(prompt, completions, "\n")
    assert not torch.allclose(got, base)  # the active adapter is the one scored


def test_adapters_are_independent(llm):
    generator_state = clone_state(llm.generator.state())
    classifier_state = clone_state(llm.classifier.trainable_state())
    train_classifier(llm.classifier, SENTIMENT[:8], lr=1e-2, epochs=1, batch_size=4, seed=0)
    assert not same_state(classifier_state, llm.classifier.trainable_state())
    assert same_state(generator_state, llm.generator.state())


def test_save_and_load_adapters(llm, task, tiny_causal_dir, tmp_path):
    randomise(llm, GENERATOR, seed=1)
    randomise(llm, CLASSIFIER, seed=2)
    llm.save_adapters(tmp_path / "adapters")
    texts = ["a fine film", "a dull film"]
    prompt = task.generation_prompt(1, [])

    other = ServerLLM(str(tiny_causal_dir), task, lora_rank=4, seed=0)
    other.load_adapters(tmp_path / "adapters")
    assert same_state(llm.generator.state(), other.generator.state())
    assert same_state(llm.classifier.trainable_state(), other.classifier.trainable_state())
    assert torch.allclose(other.classifier.predict_proba(texts), llm.classifier.predict_proba(texts))
    with torch.no_grad():
        for model in (llm, other):
            model.model.set_adapter(GENERATOR)
        assert torch.allclose(other.completion_logprobs(prompt, texts, "\n"),
                              llm.completion_logprobs(prompt, texts, "\n"))


# -- S3: improve the generator --------------------------------------------------------------------

GOOD = {0: ["a dull , lifeless film .", "the plot is a tedious mess ."],
        1: ["a warm and funny film .", "the acting is superb ."]}
BAD = {0: ["a warm and charming film .", "great music and a fine cast ."],
       1: ["a boring and ugly film .", "nothing in it works ."]}


def feedback_samples() -> list[ScoredSample]:
    samples = []
    for label in (0, 1):
        for text, quality, votes in zip(GOOD[label] + BAD[label], [0.9, 0.8, 0.2, 0.1], [3, 1, 2, 0],
                                        strict=True):
            soft = [quality, 1 - quality] if label == 0 else [1 - quality, quality]
            samples.append(ScoredSample(text, label, quality, soft, 0.1, votes=votes))
    return samples


def generator_logprobs(llm: ServerLLM, task: TaskSpec, label: int, texts: list[str]) -> torch.Tensor:
    llm.model.set_adapter(GENERATOR)
    with torch.no_grad():
        return llm.completion_logprobs(task.generation_prompt(label, []), texts, "\n")


@pytest.mark.parametrize("strategy", ["filtered-sft", "reward-weighted", "dpo", "realism-sft", "realism-dpo"])
def test_improve_generator_trains_only_the_generator(llm, task, strategy):
    base = clone_state({n: p for n, p in llm.model.named_parameters() if "lora_" not in n})
    generator_state = clone_state(llm.generator.state())
    classifier_state = clone_state(llm.classifier.trainable_state())
    config = FeedbackConfig(strategy=strategy, threshold=0.5,
                            training=TrainConfig(lr=1e-3, epochs=1, batch_size=4))
    metrics = improve_generator(llm, feedback_samples(), task, config, seed=0)
    # realism-sft: the voted samples whose label the judges rank first (a voted flip is left out)
    expected_samples = 4 if strategy in ("filtered-sft", "realism-sft") else 8
    assert metrics["generator_samples"] == expected_samples
    assert metrics["generator_steps"] >= 2
    assert metrics["generator_loss"] == metrics["generator_loss"]  # not NaN
    assert not same_state(generator_state, llm.generator.state())
    assert same_state(classifier_state, llm.classifier.trainable_state())
    after = {n: p for n, p in llm.model.named_parameters() if "lora_" not in n}
    assert same_state(base, clone_state(after))


def test_filtered_sft_raises_the_likelihood_of_the_good_samples(llm, task):
    before = {y: generator_logprobs(llm, task, y, GOOD[y]) for y in (0, 1)}
    config = FeedbackConfig(strategy="filtered-sft", threshold=0.5,
                            training=TrainConfig(lr=1e-2, epochs=4, batch_size=4))
    improve_generator(llm, feedback_samples(), task, config, seed=0)
    for y in (0, 1):
        after = generator_logprobs(llm, task, y, GOOD[y])
        assert (after > before[y] + 1.0).all(), (y, before[y], after)


def test_prompts_draw_their_feedback_demonstrations_from_the_pool(llm, task):
    config = load_config(None, ["feedback.demonstrations_from_feedback=12", "generation.samples_per_label=8"])
    server = Server(config, task, llm)
    pool = [f"pooled sample {letter} ." for letter in "abcdefghijkl"]
    server.feedback_demos = {0: pool, 1: pool[:2]}  # a full pool, and one no larger than half of 4 demos
    prompts, labels = server.generation_prompts(round_=1)
    shown = [tuple(t for t in pool if t in prompt) for prompt in prompts]
    of_label = {y: [s for s, label in zip(shown, labels, strict=True) if label == y] for y in (0, 1)}
    assert all(len(s) == 2 for s in of_label[0]) and len(set(of_label[0])) > 4  # 2 of 12, varying
    assert set(of_label[1]) == {tuple(pool[:2])}  # both in every prompt, as before pools


def test_realism_dpo_prefers_the_voted_samples_the_judges_keep_on_their_label():
    label_0 = [s for s in feedback_samples() if s.label == 0]
    ranked = sorted(label_0, key=sample_rank("realism-dpo"))
    # the flip with 2 votes ranks below both kept samples: it is never a chosen answer
    assert [s.text for s in ranked] == GOOD[0] + BAD[0]
    assert [s.text for s in sorted(label_0, key=sample_rank("realism-sft"))][:2] == [GOOD[0][0], BAD[0][0]]


@pytest.mark.parametrize("strategy", ["dpo", "realism-dpo"])
def test_dpo_widens_the_chosen_minus_rejected_margin(llm, task, strategy):
    def margin() -> float:
        total = 0.0
        for y in (0, 1):
            policy = generator_logprobs(llm, task, y, GOOD[y] + BAD[y])
            with llm.model.disable_adapter():
                reference = generator_logprobs(llm, task, y, GOOD[y] + BAD[y])
            gain = policy - reference
            total += float(gain[:2].sum() - gain[2:].sum())
        return total

    start = margin()
    config = FeedbackConfig(strategy=strategy, dpo_beta=0.1,
                            training=TrainConfig(lr=1e-2, epochs=3, batch_size=4))
    improve_generator(llm, feedback_samples(), task, config, seed=0)
    assert margin() > start + 1.0


def test_the_kl_to_base_is_zero_until_the_classifier_adapter_moves(llm):
    texts = ["a fine film .", "a dull , long and pointless movie ."]
    assert llm.label_logits_and_kl(texts, 4, {})[1].item() == pytest.approx(0.0, abs=1e-6)
    randomise(llm, "generator", seed=1)  # the generator adapter is not what the KL watches
    assert llm.label_logits_and_kl(texts, 4, {})[1].item() == pytest.approx(0.0, abs=1e-6)
    randomise(llm, "classifier", seed=2)
    kl = llm.label_logits_and_kl(texts, 4, {})[1]
    assert kl.item() > 0
    kl.backward()
    grads = [p.grad for p in llm.classifier.trainable_parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_the_kl_regulariser_keeps_the_llm_closer_to_its_base(tiny_causal_dir, task):
    items = [TrainItem(text, label) for text, label in
             [("a fine film .", 1), ("a dull movie .", 0), ("great fun .", 1), ("so boring .", 0)]]
    drift = {}
    for weight in (0.0, 5.0):
        llm = ServerLLM(str(tiny_causal_dir), task, lora_rank=4, seed=0)
        forward = llm.kl_regularised_forward(4, weight) if weight else None
        train_classifier(llm.classifier, items, lr=5e-2, epochs=5, batch_size=4, seed=0, forward=forward)
        drift[weight] = llm.label_logits_and_kl([i.text for i in items], 4, {})[1].item()
    assert drift[5.0] < drift[0.0]


def test_one_pass_gives_the_classifiers_label_logits_and_a_cached_kl_equal_to_a_fresh_one(llm):
    texts = ["a fine film .", "a dull , long and pointless movie .", "great fun ."]
    randomise(llm, "classifier", seed=3)
    cache: dict = {}
    logits, kl = llm.label_logits_and_kl(texts, 4, cache)
    assert set(cache) == set(texts)
    torch.testing.assert_close(logits, llm.classifier.label_logits(texts), atol=1e-5, rtol=1e-4)
    # a second pass over a different batch reads the cache and gives the same KL
    _, kl_cached = llm.label_logits_and_kl(texts[::-1], 4, cache)
    torch.testing.assert_close(kl_cached, kl, atol=1e-3, rtol=1e-3)
    _, kl_fresh = llm.label_logits_and_kl(texts[:2], 4, {})
    _, kl_partly_cached = llm.label_logits_and_kl(texts[:2], 4, cache)
    torch.testing.assert_close(kl_partly_cached, kl_fresh, atol=1e-3, rtol=1e-3)
