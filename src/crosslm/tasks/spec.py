"""Task specs: what a classification task is, independent of any model or data file.

A spec names the labels, the verbalizer words an LLM scores to classify, the
classification prompt, and the completion-style generation prompt with public
seed demonstrations. Built-in specs live in ``builtin/*.yaml``; a user task is
the same YAML format.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from crosslm.errors import CrossLMError


@dataclass(frozen=True)
class Example:
    """One labelled text."""

    text: str
    label: int


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitFiles(_Strict):
    """File stems (``<stem>.jsonl|.csv|.parquet``) of a task's splits under its data folder."""

    train: str = "train"
    test: str = "test"


class HubSource(_Strict):
    """Where the task lives on the Hugging Face hub, for users who are online."""

    name: str
    config: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    text_column: str = "text"
    label_column: str = "label"


class TaskSpec(_Strict):
    """Everything the round needs to know about a task."""

    name: str
    labels: list[str] = Field(min_length=2)
    verbalizers: list[str]
    classify_template: str
    generate_instruction: dict[str, str]
    item_prefix: str
    seeds: dict[str, list[str]]
    folder: str | None = None
    splits: SplitFiles = SplitFiles()
    hub: HubSource | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if len(self.verbalizers) != len(self.labels):
            raise ValueError(
                f"verbalizers has {len(self.verbalizers)} entries, labels has {len(self.labels)}"
            )
        for field in ("generate_instruction", "seeds"):
            missing = set(self.labels) - set(getattr(self, field))
            extra = set(getattr(self, field)) - set(self.labels)
            if missing or extra:
                raise ValueError(
                    f"{field} must have one entry per label; missing {sorted(missing)}, "
                    f"unknown {sorted(extra)}"
                )
        if "{text}" not in self.classify_template:
            raise ValueError("classify_template must contain '{text}'")
        return self

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def classify_prompt(self, text: str) -> str:
        """The prompt whose next token is the label's verbalizer."""
        return self.classify_template.format(text=text.strip())

    def generation_prompt(self, label: int, demonstrations: list[str]) -> str:
        """A completion-style few-shot prompt; the LLM continues after the last item prefix."""
        lines = [self.generate_instruction[self.labels[label]]]
        lines += [f"{self.item_prefix} {demo.strip()}" for demo in demonstrations]
        lines.append(self.item_prefix)
        return "\n".join(lines)


BUILTIN_DIR = files("crosslm.tasks").joinpath("builtin")


def builtin_task_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in BUILTIN_DIR.iterdir() if p.name.endswith(".yaml"))


def load_task(name_or_path: str) -> TaskSpec:
    """A built-in task by name, or a task YAML file by path."""
    path = Path(name_or_path)
    if name_or_path in builtin_task_names():
        path = Path(str(BUILTIN_DIR.joinpath(f"{name_or_path}.yaml")))
    elif not path.is_file():
        raise CrossLMError(
            f"unknown task '{name_or_path}': not a built-in task "
            f"({', '.join(builtin_task_names())}) and not a YAML file"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise CrossLMError(f"{path}: not valid YAML: {err}") from err
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as err:
        raise CrossLMError(f"{path}: invalid task spec:\n{err}") from err
