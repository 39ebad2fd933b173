"""The task's prompts as an LLM reads them: completion text, or through its chat template.

A base model continues completion prompts (``TaskSpec.generation_prompt`` and
``classify_prompt``). An instruction-tuned model answers better inside its own
chat template: the instruction and demonstrations go in a user turn, and the
assistant turn is opened with the text the completion prompt ends with (the
item prefix, or the classification prefix such as ``Sentiment:``). So the next
token is still the sample's first token or the label's verbalizer, and
sampling, scoring and training read chat prompts exactly as completion prompts.
"""

from __future__ import annotations

from typing import Literal

from crosslm.errors import CrossLMError
from crosslm.tasks.spec import TaskSpec

PromptFormat = Literal["completion", "chat"]


def check_prompt_format(prompt_format: PromptFormat, tokenizer, model_name: str) -> None:
    """``chat`` needs a chat template: a base model's tokenizer usually has none."""
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise CrossLMError(f"generation.prompt_format is chat but the tokenizer of {model_name} has no "
                           "chat template (a base model?); use generation.prompt_format=completion")


def _chat(tokenizer, user: str, answer_start: str) -> str:
    """A one-turn chat whose assistant turn starts with ``answer_start``, as text to tokenize."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("").input_ids[:1] == [tokenizer.bos_token_id]
    if adds_bos and rendered.startswith(bos):  # the tokenizer adds it again when encoding the prompt
        rendered = rendered[len(bos):]
    return rendered + answer_start


def classify_prompt(task: TaskSpec, text: str, prompt_format: PromptFormat, tokenizer) -> str:
    """The prompt whose next token is the label's verbalizer.

    In chat format the template's last line (e.g. ``Sentiment:``) opens the assistant
    turn; a one-line template goes whole into the user turn.
    """
    if prompt_format == "completion":
        return task.classify_prompt(text)
    body, _, answer_start = task.classify_template.rpartition("\n")
    if not body or "{text}" in answer_start:
        body, answer_start = task.classify_template, ""
    answers = ", ".join(v.strip() for v in task.verbalizers)
    user = f"{body.format(text=text.strip())}\n\nAnswer with one of: {answers}."
    return _chat(tokenizer, user, answer_start.format())


def generation_prompt(task: TaskSpec, label: int, demonstrations: list[str], prompt_format: PromptFormat,
                      tokenizer) -> str:
    """The prompt the LLM continues with one new sample of ``label``.

    In chat format the instruction and demonstrations form the user turn and the
    assistant turn opens with the item prefix, so the sample ends where a line ends.
    """
    completion = task.generation_prompt(label, demonstrations)
    if prompt_format == "completion":
        return completion
    shown = completion.removesuffix(task.item_prefix).rstrip("\n")
    user = f"{shown}\n\nWrite one more, on one line."
    return _chat(tokenizer, user, task.item_prefix)
