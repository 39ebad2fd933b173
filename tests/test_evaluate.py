"""Exactness checks for the general-ability evaluation, on a tiny model built here (no download)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from crosslm.errors import CrossLMError
from crosslm.evaluate import (
    ChoiceItem,
    choice_scores,
    general_ability,
    load_arc_easy,
    load_general_data,
    load_wikitext,
    multiple_choice_accuracy,
    perplexity,
)

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
FALLBACK_LINES = [
    f"The {a} {b} of the {c} was {d} in {y} ."
    for a in ("old", "new", "great", "small")
    for b in ("church", "river", "album", "army", "song")
    for c in ("city", "band", "king", "valley")
    for d in ("built", "released", "destroyed", "named")
    for y in (1890, 1944, 2003)
]


def _require_data() -> None:
    if not DATA_DIR.is_dir():
        pytest.skip(f"benchmark data not found at {DATA_DIR}")


def _corpus() -> list[str]:
    """A few hundred lines of WikiText when available, else synthetic lines."""
    path = DATA_DIR / "wikitext2_raw" / "test.jsonl"
    if not path.is_file():
        return FALLBACK_LINES
    with path.open(encoding="utf-8") as handle:
        lines = [json.loads(line)["text"] for line in handle]
    return [line for line in lines if line.strip()][:400]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def _llama(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=512, initializer_range=0.2,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


def _gpt2(tokenizer) -> GPT2LMHeadModel:
    """Absolute position embeddings: left padding is only right if positions come from the mask."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=512,
                        initializer_range=0.2, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def model(tokenizer) -> LlamaForCausalLM:
    return _llama(tokenizer)


@pytest.fixture(scope="module")
def items() -> list[ChoiceItem]:
    lines = [line.strip() for line in _corpus() if len(line.strip()) > 20]
    words = " ".join(lines).split()
    result = []
    for i in range(12):
        question = " ".join(words[i * 13:i * 13 + 9]) + "?"
        count = 2 + i % 4  # 2..5 choices, and continuations of different lengths
        choices = [" ".join(words[500 + i * 7 + j:500 + i * 7 + j + 1 + (i + j) % 4])
                   for j in range(count)]
        result.append(ChoiceItem(question=question, choices=choices, label=0))
    return result


def _independent_scores(model, tokenizer, items: list[ChoiceItem]) -> list[list[float]]:
    """The scoring rule computed the plain way: one unpadded sequence, full log-softmax."""
    bos = [tokenizer.bos_token_id]
    scores = []
    with torch.no_grad():
        for item in items:
            prompt = bos + tokenizer(f"Question: {item.question}\nAnswer:",
                                     add_special_tokens=False)["input_ids"]
            row = []
            for choice in item.choices:
                cont = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([prompt + cont])
                log_probs = model(input_ids=ids).logits[0].log_softmax(-1)
                picked = [log_probs[p - 1, ids[0, p]].item()
                          for p in range(len(prompt), ids.shape[1])]
                row.append(sum(picked) / len(picked))
            scores.append(row)
    return scores


def _relabel(items: list[ChoiceItem], scores: list[list[float]], pick) -> list[ChoiceItem]:
    return [ChoiceItem(item.question, item.choices, pick(range(len(s)), key=s.__getitem__))
            for item, s in zip(items, scores, strict=True)]


# --- perplexity ---------------------------------------------------------------------------


def test_perplexity_matches_hf_loss_in_one_window(model, tokenizer) -> None:
    text = " ".join(_corpus()[:20])
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"][:200]
    x = torch.tensor([ids])
    with torch.no_grad():
        expected = math.exp(model(input_ids=x, labels=x).loss.item())
    got = perplexity(model, tokenizer, text, max_tokens=200, window=512)
    assert math.isfinite(got) and got > 1
    assert got == pytest.approx(expected, rel=1e-5)


def test_perplexity_windows_each_start_with_bos_and_cover_every_token(model, tokenizer) -> None:
    text = " ".join(_corpus()[:20])
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"][:100]
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, 100, 15):  # window 16 = BOS + 15 text tokens
            x = torch.tensor([[tokenizer.bos_token_id] + tokens[start:start + 15]])
            nll += model(input_ids=x, labels=x).loss.item() * (x.shape[1] - 1)
            count += x.shape[1] - 1
    assert count == 100
    got = perplexity(model, tokenizer, text, max_tokens=100, window=16)
    assert got == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_perplexity_restores_training_mode_and_rejects_bad_sizes(tokenizer) -> None:
    model = _llama(tokenizer).train()
    perplexity(model, tokenizer, "a short text of some words", max_tokens=8)
    assert model.training
    with pytest.raises(CrossLMError):
        perplexity(model, tokenizer, "some text", max_tokens=0)
    with pytest.raises(CrossLMError):
        perplexity(model, tokenizer, "some text", max_tokens=10, window=2)


# --- multiple choice ----------------------------------------------------------------------


class _ScaledLogits(torch.nn.Module):
    """A causal LM whose logits are post-processed after its head (as some families' are)."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits = out.logits * 2.0
        return out


@pytest.mark.parametrize("post_processed", [False, True], ids=["head-only", "post-processed-logits"])
def test_scores_equal_the_independent_computation(post_processed, model, tokenizer, items) -> None:
    """Sharing each question's KV cache among its choices and running the head only where a choice
    token is predicted (or, where the model post-processes its logits, reading its full logits)
    gives what scoring each row alone gives."""
    scored = _ScaledLogits(model) if post_processed else model
    expected = _independent_scores(scored, tokenizer, items)
    tokenizer.padding_side = "left"
    try:
        got = choice_scores(scored, tokenizer, items, batch_size=16)
    finally:
        tokenizer.padding_side = "right"
    for row_got, row_expected in zip(got, expected, strict=True):
        assert row_got == pytest.approx(row_expected, abs=1e-4)
    if post_processed:  # the scaling matters: scoring from the head alone would miss it
        assert got != choice_scores(model, tokenizer, items)


def test_accuracy_is_one_for_argmax_labels_and_zero_for_argmin(model, tokenizer, items) -> None:
    scores = _independent_scores(model, tokenizer, items)
    assert multiple_choice_accuracy(model, tokenizer, _relabel(items, scores, max)) == 1.0
    assert multiple_choice_accuracy(model, tokenizer, _relabel(items, scores, min)) == 0.0


@pytest.mark.parametrize("build", [_llama, _gpt2], ids=["llama-rope", "gpt2-absolute"])
def test_padding_side_and_batch_size_do_not_change_results(build, tokenizer, items) -> None:
    model = build(tokenizer)
    labelled = _relabel(items, _independent_scores(model, tokenizer, items), max)
    results = {}
    for side in ("left", "right"):
        tokenizer.padding_side = side
        for batch_size in (1, 16):
            scores = choice_scores(model, tokenizer, labelled, batch_size)
            accuracy = multiple_choice_accuracy(model, tokenizer, labelled, batch_size)
            results[side, batch_size] = (scores, accuracy)
    tokenizer.padding_side = "right"
    reference_scores, _ = results["right", 1]
    for scores, accuracy in results.values():
        assert accuracy == 1.0
        for row, reference in zip(scores, reference_scores, strict=True):
            assert row == pytest.approx(reference, abs=1e-4)


def test_peft_wrapped_model_scores_like_its_base_at_init(model, tokenizer, items) -> None:
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(_llama(tokenizer), peft.LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    tokenizer.padding_side = "left"
    try:
        got = choice_scores(wrapped, tokenizer, items)
    finally:
        tokenizer.padding_side = "right"
    for row, reference in zip(got, choice_scores(model, tokenizer, items), strict=True):
        assert row == pytest.approx(reference, abs=1e-4)


def test_accuracy_needs_items(model, tokenizer) -> None:
    with pytest.raises(CrossLMError):
        multiple_choice_accuracy(model, tokenizer, [])


# --- loading and the whole evaluation -----------------------------------------------------


def _write_jsonl(path: Path, rows: list[object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


ARC_ROW = {"id": "q1", "question": "Which is a metal?", "choices": ["iron", "wood", "glass"],
           "choice_labels": ["A", "B", "C"], "label": 0}


def test_load_arc_easy_reads_the_real_test_split() -> None:
    _require_data()
    items = load_arc_easy(DATA_DIR)
    assert len(items) == 2376
    assert all(len(item.choices) >= 2 and 0 <= item.label < len(item.choices) for item in items)
    assert items[0].question.startswith("Which statement best explains why photosynthesis")


def test_load_wikitext_joins_rows_like_the_hf_recipe() -> None:
    _require_data()
    text = load_wikitext(DATA_DIR)
    assert text.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is an English")


def test_malformed_arc_line_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "arc_easy" / "test.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps(ARC_ROW) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(CrossLMError, match=f"{path}:2: not valid JSON"):
        load_arc_easy(tmp_path)


@pytest.mark.parametrize("change", [{"label": 3}, {"label": True}, {"choices": ["only"]},
                                    {"question": 7}])
def test_invalid_arc_row_names_file_and_line(tmp_path, change) -> None:
    path = tmp_path / "arc_easy" / "dev.jsonl"
    _write_jsonl(path, [ARC_ROW, ARC_ROW, {**ARC_ROW, **change}])
    with pytest.raises(CrossLMError, match=f"{path}:3: field"):
        load_arc_easy(tmp_path, split="dev")


def test_malformed_wikitext_and_missing_file(tmp_path) -> None:
    _write_jsonl(tmp_path / "wikitext2_raw" / "test.jsonl", [{"text": "a"}, {"txt": "b"}])
    with pytest.raises(CrossLMError, match=r"test\.jsonl:2: field 'text'"):
        load_wikitext(tmp_path)
    with pytest.raises(CrossLMError, match="not found"):
        load_arc_easy(tmp_path)


def test_general_ability_on_a_small_data_dir(model, tokenizer, tmp_path) -> None:
    _write_jsonl(tmp_path / "wikitext2_raw" / "test.jsonl",
                 [{"text": line} for line in _corpus()[:30]])
    _write_jsonl(tmp_path / "arc_easy" / "test.jsonl", [ARC_ROW] * 5)
    result = general_ability(model, tokenizer, load_general_data(tmp_path), wikitext_tokens=300,
                             arc_easy_questions=3)
    assert set(result) == {"wikitext2_ppl", "arc_easy_acc"}
    assert math.isfinite(result["wikitext2_ppl"]) and result["wikitext2_ppl"] > 1
    assert result["arc_easy_acc"] in (0.0, 1.0)  # three copies of one question
