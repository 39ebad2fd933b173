"""Task specs: what a classification task is, independent of any model or data file.

A spec names the labels, the verbalizer words an LLM scores to classify, the
classification prompt, and the completion-style generation prompt with public
seed demonstrations. Built-in specs live in ``builtin/*.yaml``; a user task is
the same YAML format (examples/tasks/ in the repository has one).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from crosslm.errors import CrossLMError, yaml_line


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
    # e.g. refs/convert/parquet: the hub's Parquet export of a dataset that has a loading script,
    # which datasets>=4 no longer runs
    revision: str | None = None
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
    folder: str | None = Field(default=None, description="sub-folder of the data directory; default: name")
    data_folder: str | None = Field(
        default=None, description="this task's own folder of split files, relative to the task YAML; "
                                  "when given, the data directory is not used for the task's splits")
    splits: SplitFiles = SplitFiles()
    hub: HubSource | None = None

    # Field validators (labels is validated first), so an error carries the field's place in the YAML.
    @field_validator("verbalizers")
    @classmethod
    def _one_verbalizer_per_label(cls, verbalizers: list[str], info: ValidationInfo) -> list[str]:
        labels = info.data.get("labels")
        if labels is not None and len(verbalizers) != len(labels):
            raise ValueError(f"verbalizers has {len(verbalizers)} entries, labels has {len(labels)}")
        return verbalizers

    @field_validator("classify_template")
    @classmethod
    def _has_text_slot(cls, template: str) -> str:
        if "{text}" not in template:
            raise ValueError("classify_template must contain '{text}'")
        return template

    @field_validator("generate_instruction", "seeds")
    @classmethod
    def _one_entry_per_label(cls, value: dict, info: ValidationInfo) -> dict:
        labels = info.data.get("labels")
        if labels is None:  # labels itself is invalid, and reported
            return value
        missing, extra = set(labels) - set(value), set(value) - set(labels)
        if missing or extra:
            raise ValueError(f"{info.field_name} must have one entry per label; missing {sorted(missing)}, "
                             f"unknown {sorted(extra)}")
        return value

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
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CrossLMError(f"{path}: not valid YAML: {err}") from err
    try:
        spec = TaskSpec.model_validate(raw)
    except ValidationError as err:
        problems = [f"  {_where(path, text, item['loc'])}: {_problem(item)}" for item in err.errors()]
        raise CrossLMError("\n".join([f"{path}: invalid task spec", *problems])) from None
    if spec.data_folder is None:
        return spec
    folder = (path.parent / Path(spec.data_folder).expanduser()).resolve()
    return spec.model_copy(update={"data_folder": str(folder)})


def _problem(item: dict) -> str:
    """One validation error in words that name the field."""
    field = ".".join(str(part) for part in item["loc"])
    if item["type"] == "missing":
        return f"missing field '{field}'"
    if item["type"] == "extra_forbidden":
        return f"unknown field '{field}'"
    if item["type"] == "value_error":  # our validators' messages name the field themselves
        return str(item["ctx"]["error"])
    if not field:
        return f"{item['msg']}: the file must be a mapping of the fields of a task"
    return f"{field}: {item['msg']} (got {item.get('input')!r})"


def _where(path: Path, text: str, loc: tuple) -> str:
    """``file:line`` of the deepest key of ``loc`` the YAML has (the file alone if it has none)."""
    line = yaml_line(yaml.compose(text), loc)
    return f"{path}:{line}" if line is not None else str(path)
