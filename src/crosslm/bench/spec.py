"""The bench spec: a matrix of tasks x settings x methods x seeds, expanded into validated cells.

Each cell's config is the defaults, then ``base``, then the setting, then the method, then the
cell's own task, seed and output directory, merged section by section exactly as ``crosslm run``
merges a config file over the defaults. Errors name the spec file, the field and its line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError

from crosslm.config import ExperimentConfig, check_method, merge_sections
from crosslm.errors import CrossLMError, read_yaml, yaml_line
from crosslm.tasks.spec import load_task

Label = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
# A config subtree; an empty YAML entry (``crosslm:``) means "no changes".
Layer = Annotated[dict[str, Any], BeforeValidator(lambda value: {} if value is None else value)]
CELL_KEYS = ("task", "seed", "output_dir")  # set per cell by the runner, never by a layer
RUNNABLE_ENGINES = ("in-process", "flower-sim")


class BenchSpec(BaseModel):
    """What ``crosslm bench`` runs; see docs/experiments.md."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    output_dir: str = Field(min_length=1, description="cells go under <output_dir>/<task>/<setting>/"
                                                      "<method>/seed-<s>")
    base: Layer = {}
    tasks: list[str] = Field(min_length=1, description="built-in task names or task YAML paths")
    settings: dict[Label, Layer] = Field(default={"default": {}}, min_length=1)
    methods: dict[Label, Layer] = Field(min_length=1)
    seeds: list[int] = Field(default=[0], min_length=1)


@dataclass(frozen=True)
class Cell:
    """One experiment of the matrix; ``skip`` says why it cannot run (it is then not run)."""

    task: str
    setting: str
    method: str
    seed: int
    config: ExperimentConfig
    skip: str | None = None

    @property
    def path(self) -> Path:
        return Path(self.config.output_dir)


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec with its file and YAML node tree, for errors that point at a line."""

    spec: BenchSpec
    path: Path
    root: yaml.Node

    def error(self, errors: list[tuple[tuple, str]]) -> CrossLMError:
        return _error(self.path, self.root, errors)


def _error(path: Path, root: yaml.Node, errors: list[tuple[tuple, str]]) -> CrossLMError:
    """One ``file:line: field: message`` line per (spec path, message)."""
    lines = []
    for loc, message in errors:
        where = f"{path}:{yaml_line(root, loc) or root.start_mark.line + 1}"
        lines.append(f"{where}: {'.'.join(str(p) for p in loc) or '(top level)'}: {message}")
    return CrossLMError("\n".join(lines))


def _pydantic_errors(err: ValidationError) -> list[tuple[tuple, str]]:
    return [(tuple(item["loc"]), f"{item['msg']} (got {item.get('input')!r})")
            for item in err.errors()]


def load_spec(path: str | Path) -> LoadedSpec:
    """Read and validate a spec file (its cells are checked by :func:`expand`)."""
    path = Path(path)
    text, raw = read_yaml(path, "bench spec")
    root = yaml.compose(text)
    if not isinstance(raw, dict):
        raise CrossLMError(f"{path}: the top level must be a mapping (name, output_dir, tasks, ...)")
    try:
        spec = BenchSpec.model_validate(raw)
    except ValidationError as err:
        raise _error(path, root, _pydantic_errors(err)) from None
    loaded = LoadedSpec(spec, path, root)
    _check_layers(loaded)
    return loaded


def _layers(spec: BenchSpec, setting: str, method: str) -> list[tuple[tuple, dict]]:
    """(spec path, subtree), applied in this order over the defaults."""
    return [(("base",), spec.base), (("settings", setting), spec.settings[setting]),
            (("methods", method), spec.methods[method])]


def _check_layers(loaded: LoadedSpec) -> None:
    spec = loaded.spec
    errors = [((*where, key), "set per cell by the runner; remove it here")
              for where, layer in [(("base",), spec.base),
                                   *((("settings", k), v) for k, v in spec.settings.items()),
                                   *((("methods", k), v) for k, v in spec.methods.items())]
              for key in CELL_KEYS if key in layer]
    errors += [(("seeds", k), f"seed {seed} is listed twice") for k, seed in enumerate(spec.seeds)
               if seed in spec.seeds[:k]]
    if errors:
        raise loaded.error(errors)


def _source(layers: list[tuple[tuple, dict]], loc: tuple) -> tuple:
    """The spec path of the layer that set ``loc`` (the last one wins), else ``loc`` itself."""
    for where, layer in reversed(layers):
        node = layer
        for part in loc:
            found = part in node if isinstance(node, dict) else (
                isinstance(node, list) and isinstance(part, int) and part < len(node))
            if not found:
                break
            node = node[part]
        else:
            return (*where, *loc)
    return loc


def cell_config(loaded: LoadedSpec, task: str, setting: str, method: str, seed: int,
                output_dir: Path) -> ExperimentConfig:
    """defaults <- base <- setting <- method <- this cell's task, seed and output directory."""
    layers = _layers(loaded.spec, setting, method)
    raw: dict = ExperimentConfig().model_dump()
    for _, layer in layers:
        raw = merge_sections(raw, layer)
    raw |= {"task": task, "seed": seed, "output_dir": str(output_dir)}
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise loaded.error([(_source(layers, loc), message)
                            for loc, message in _pydantic_errors(err)]) from None
    if config.engine not in RUNNABLE_ENGINES:
        raise loaded.error([(_source(layers, ("engine",)), f"bench runs cells on this machine: "
                             f"use {' or '.join(RUNNABLE_ENGINES)}, not {config.engine!r}")])
    return config


def skip_reason(config: ExperimentConfig) -> str | None:
    """Why the method cannot run on this config (e.g. fedavg with two SLMs), or None."""

    try:
        check_method(config)
    except CrossLMError as err:
        return str(err)
    return None


def expand(loaded: LoadedSpec) -> list[Cell]:
    """Every cell, in the order they run: task, then setting, then method, then seed."""
    spec, cells, names = loaded.spec, [], []
    for k, task_entry in enumerate(spec.tasks):
        try:
            name = load_task(task_entry).name
        except CrossLMError as err:
            raise loaded.error([(("tasks", k), str(err))]) from None
        if name in names:
            raise loaded.error([(("tasks", k), f"task '{name}' is listed twice")])
        names.append(name)
    for task, task_entry in zip(names, spec.tasks, strict=True):
        for setting in spec.settings:
            for method in spec.methods:
                for seed in spec.seeds:
                    out = Path(spec.output_dir) / task / setting / method / f"seed-{seed}"
                    config = cell_config(loaded, task_entry, setting=setting, method=method, seed=seed,
                                         output_dir=out)
                    cells.append(Cell(task, setting, method, seed, config=config, skip=skip_reason(config)))
    return cells
