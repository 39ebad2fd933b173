"""General-ability checks for the large model: WikiText-2 perplexity and ARC-Easy accuracy.

Run before and after federated training on fixed subsets, so the two results are comparable and
show whether the LLM lost general ability while it learned from the clients.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from crosslm.errors import CrossLMError
from crosslm.tasks.data import hub_rows


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question; ``label`` is the index of the gold answer in ``choices``."""

    question: str
    choices: list[str]
    label: int


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    """("file:line", row) for each non-blank line, so every error can name where it is."""
    if not path.is_file():
        raise CrossLMError(f"data file not found: {path}")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise CrossLMError(f"{where}: not valid JSON: {err.msg}") from None
            if not isinstance(row, dict):
                raise CrossLMError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


WIKITEXT_FILE = Path("wikitext2_raw") / "test.jsonl"
ARC_EASY_FOLDER = Path("arc_easy")
WIKITEXT_HUB = ("Salesforce/wikitext", "wikitext-2-raw-v1")
ARC_EASY_HUB = ("allenai/ai2_arc", "ARC-Easy")


def _hub_rows(name: str, config: str, split: str, layout: Path) -> Iterator[tuple[str, dict]]:
    """("hub:name/split:index", row) pairs, named like the local rows so errors read the same."""
    for index, row in enumerate(hub_rows(name, config, split, str(layout))):
        yield f"hub:{name}/{split}:{index}", row


def load_wikitext(data_dir: Path | None) -> str:
    """The WikiText-2 test split as one string, joined as in the Hugging Face perplexity recipe.

    From ``data_dir/wikitext2_raw/test.jsonl``, or from the hub when ``data_dir`` is None
    (the local file holds the hub's rows, so both give the same text).
    """
    rows = (_read_jsonl(Path(data_dir) / WIKITEXT_FILE) if data_dir is not None
            else _hub_rows(*WIKITEXT_HUB, "test", WIKITEXT_FILE))
    texts = []
    for where, row in rows:
        if not isinstance(row.get("text"), str):
            raise CrossLMError(f"{where}: field 'text' must be a string")
        texts.append(row["text"])
    return "\n\n".join(texts)


def _arc_row_from_hub(row: dict) -> dict:
    """The hub's {question, choices: {text, label}, answerKey} as a local row {question, choices, label}."""
    choices = row.get("choices") or {}
    texts, keys = choices.get("text"), choices.get("label") or []
    label = keys.index(row.get("answerKey")) if row.get("answerKey") in keys else None
    return {"question": row.get("question"), "choices": texts, "label": label}


def _choice_item(row: dict, where: str) -> ChoiceItem:
    """A checked item, so a bad row fails here rather than as a wrong score later."""
    question, choices, label = row.get("question"), row.get("choices"), row.get("label")
    if not isinstance(question, str) or not question.strip():
        raise CrossLMError(f"{where}: field 'question' must be a non-empty string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(
            isinstance(c, str) and c.strip() for c in choices):
        raise CrossLMError(
            f"{where}: field 'choices' must be a list of at least 2 non-empty strings")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise CrossLMError(f"{where}: field 'label' must be an integer in 0..{len(choices) - 1}, "
                           f"got {label!r}")
    return ChoiceItem(question=question, choices=list(choices), label=label)


def load_arc_easy(data_dir: Path | None, split: str = "test") -> list[ChoiceItem]:
    """ARC-Easy questions in file order, so the first n are the same subset on every run.

    From ``data_dir/arc_easy/<split>.jsonl``, or from the hub when ``data_dir`` is None
    (``dev`` is the hub's ``validation``).
    """
    if data_dir is not None:
        rows = _read_jsonl(Path(data_dir) / ARC_EASY_FOLDER / f"{split}.jsonl")
    else:
        hub_split = "validation" if split == "dev" else split
        rows = ((where, _arc_row_from_hub(row)) for where, row in
                _hub_rows(*ARC_EASY_HUB, hub_split, ARC_EASY_FOLDER / f"{split}.jsonl"))
    return [_choice_item(row, where) for where, row in rows]


@dataclass(frozen=True)
class GeneralData:
    """The general-ability sets, loaded once per run: WikiText-2 test text and ARC-Easy test items."""

    wikitext: str
    arc_easy: list[ChoiceItem]


def load_general_data(data_dir: Path | None) -> GeneralData:
    """From ``data_dir`` when it holds both sets as shared/data does, else from the hub.

    A task's data directory need not hold them (a user task brings only its own splits); offline
    without them this raises ``crosslm.tasks.data.DataUnavailable``.
    """
    local = data_dir is not None and (Path(data_dir) / WIKITEXT_FILE).is_file() and (
        Path(data_dir) / ARC_EASY_FOLDER / "test.jsonl").is_file()
    source = Path(data_dir) if local else None
    return GeneralData(wikitext=load_wikitext(source), arc_easy=load_arc_easy(source, "test"))


def _device(model) -> torch.device:
    """Where the model's weights are; inputs go there and the model is never moved."""
    return next(model.parameters()).device


@contextmanager
def _eval_mode(model) -> Iterator[None]:
    """Switch off dropout while scoring and restore the caller's mode (it may be mid-training)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _prefix(tokenizer) -> list[int]:
    """The BOS token if the tokenizer has one: models such as Gemma degrade badly without it."""
    return [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]


def perplexity(model, tokenizer, text: str, max_tokens: int, window: int = 512) -> float:
    """Token-level perplexity of the first ``max_tokens`` tokens of ``text``.

    The text is tokenised once; its tokens are cut into consecutive non-overlapping chunks and
    each window is BOS (if the tokenizer has one) + chunk, ``window`` tokens in all, so every
    window starts as the model was trained to and each text token is predicted exactly once
    (without a BOS the first token of each window is context only).
    """
    prefix = _prefix(tokenizer)
    if max_tokens < 1 or window - len(prefix) < 2:
        raise CrossLMError(f"perplexity needs max_tokens >= 1 and window >= {len(prefix) + 2}, "
                           f"got max_tokens={max_tokens}, window={window}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    step = window - len(prefix)
    windows = [prefix + ids[i:i + step] for i in range(0, len(ids), step)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise CrossLMError(f"perplexity needs at least 2 tokens of text, got {len(ids)}")
    nll, count = 0.0, 0
    with _eval_mode(model), torch.inference_mode():
        for tokens in windows:
            x = torch.tensor([tokens], device=_device(model))
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, :-1]
            nll += F.cross_entropy(logits.float(), x[0, 1:], reduction="sum").item()
            count += len(tokens) - 1
    return math.exp(nll / count)


def _pad(rows: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) padded on the tokenizer's side."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
    return ids, mask


def _head_reads_last_hidden_state(model, out) -> bool:
    """Whether the LM head applied to the last hidden state gives the model's logits: true for
    the usual causal LMs; a family that post-processes its logits (scaling, soft-capping) is not."""
    head = model.get_output_embeddings()
    return head is not None and torch.allclose(head(out.hidden_states[-1][:, -1:]).float(),
                                               out.logits[:, -1:].float(), atol=1e-4, rtol=1e-3)


def _shared_prompt_scores(model, prompts: list[list[int]], continuations: list[list[list[int]]],
                          pad_id: int) -> list[list[float]]:
    """Mean log-likelihood of each continuation after its prompt; each prompt is run once.

    The prompts (left-padded) fill a KV cache that is then copied to each of their
    continuations (right-padded), so a question is not recomputed for every choice; and
    the vocabulary-wide LM head runs only where a continuation token is predicted, not on
    the padding (where the model allows: ``_head_reads_last_hidden_state``).
    """
    device = _device(model)
    ids, mask = _pad(prompts, pad_id, "left")
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device), use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1].float().log_softmax(-1)  # predicts each continuation's first token
    head_only = _head_reads_last_hidden_state(model, out)
    owner = torch.tensor([i for i, options in enumerate(continuations) for _ in options])
    rows = [c for options in continuations for c in options]
    cache = out.past_key_values
    cache.batch_select_indices(owner.to(device))
    cont_ids, cont_mask = _pad(rows, pad_id, "right")
    positions = mask.sum(-1)[owner, None] + torch.arange(cont_ids.shape[1])
    attention = torch.cat([mask[owner], cont_mask], dim=1)
    out = model(input_ids=cont_ids.to(device), attention_mask=attention.to(device),
                position_ids=positions.to(device), past_key_values=cache, use_cache=True,
                **({"output_hidden_states": True, "logits_to_keep": 1} if head_only else {}))
    # (row, position) of every continuation token after the first, and the token it predicts
    where = [(r, p) for r, row in enumerate(rows) for p in range(len(row) - 1)]
    targets = torch.tensor([rows[r][p + 1] for r, p in where], dtype=torch.long)
    r_idx = torch.tensor([r for r, _ in where], dtype=torch.long)
    p_idx = torch.tensor([p for _, p in where], dtype=torch.long)
    if head_only:
        logits = model.get_output_embeddings()(out.hidden_states[-1][r_idx.to(device), p_idx.to(device)])
    else:
        logits = out.logits[r_idx.to(out.logits.device), p_idx.to(out.logits.device)]
    later = logits.float().log_softmax(-1).gather(1, targets.to(logits.device)[:, None]).squeeze(1).cpu()
    firsts = first.cpu()[owner, torch.tensor([row[0] for row in rows])]
    scores: list[list[float]] = [[] for _ in prompts]
    start = 0
    for r, (row, prompt) in enumerate(zip(rows, owner.tolist(), strict=True)):
        picked = torch.cat([firsts[r:r + 1], later[start:start + len(row) - 1]])
        start += len(row) - 1
        scores[prompt].append(picked.mean().item())
    return scores


def choice_scores(model, tokenizer, items: list[ChoiceItem], batch_size: int = 8
                  ) -> list[list[float]]:
    """Per item, the mean log-likelihood of " " + choice after "Question: {q}\nAnswer:"."""
    if batch_size < 1:
        raise CrossLMError(f"batch_size must be at least 1, got {batch_size}")
    prompts = [_prefix(tokenizer) + tokenizer(f"Question: {item.question}\nAnswer:",
                                              add_special_tokens=False)["input_ids"] for item in items]
    continuations = [[tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
                      for choice in item.choices] for item in items]
    pad_id = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
    order = sorted(range(len(items)), key=lambda k: len(prompts[k]))  # similar lengths pad less
    result: list[list[float]] = [[] for _ in items]
    with _eval_mode(model), torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            scores = _shared_prompt_scores(model, [prompts[k] for k in batch],
                                           [continuations[k] for k in batch], pad_id)
            for k, item_scores in zip(batch, scores, strict=True):
                result[k] = item_scores
    return result


def multiple_choice_accuracy(model, tokenizer, items: list[ChoiceItem],
                             batch_size: int = 8) -> float:
    """Share of items whose highest-scoring choice is the gold one (zero-shot, no training)."""
    if not items:
        raise CrossLMError("multiple_choice_accuracy needs at least one item")
    scores = choice_scores(model, tokenizer, items, batch_size)
    correct = sum(max(range(len(s)), key=s.__getitem__) == item.label
                  for s, item in zip(scores, items, strict=True))
    return correct / len(items)


def general_ability(model, tokenizer, data: GeneralData, wikitext_tokens: int,
                    arc_easy_questions: int) -> dict[str, float]:
    """Perplexity and ARC-Easy accuracy on fixed leading subsets, comparable before and after."""
    if arc_easy_questions < 1:
        raise CrossLMError(f"arc_easy_questions must be at least 1, got {arc_easy_questions}")
    return {
        "wikitext2_ppl": perplexity(model, tokenizer, data.wikitext, wikitext_tokens),
        "arc_easy_acc": multiple_choice_accuracy(model, tokenizer, data.arc_easy[:arc_easy_questions]),
    }


CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")


def task_accuracy(classifier, examples: list, calibrate: bool) -> dict[str, float]:
    """Accuracy of a classifier on labelled examples, raw and (optionally) content-free calibrated.

    Calibration (Zhao et al., 2021) divides each prediction by the model's label
    distribution on content-free inputs, removing a zero-shot LLM's label bias.
    """
    probs = classifier.predict_proba([ex.text for ex in examples])
    labels = torch.tensor([ex.label for ex in examples])
    result = {"accuracy": float((probs.argmax(-1) == labels).float().mean()),
              "num_examples": len(examples)}
    if calibrate:
        bias = classifier.predict_proba(list(CONTENT_FREE_INPUTS)).mean(0)
        calibrated = probs / bias
        result["accuracy_calibrated"] = float((calibrated.argmax(-1) == labels).float().mean())
    return result
