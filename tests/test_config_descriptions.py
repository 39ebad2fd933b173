"""Every setting of the config says what it means (as PEFT's LoraConfig and TRL's configs do)."""

from __future__ import annotations

import inspect

from pydantic import BaseModel

from crosslm import config


def config_models() -> list[type[BaseModel]]:
    """Every pydantic model defined in crosslm.config: the sections and the experiment."""
    return [obj for _, obj in inspect.getmembers(config, inspect.isclass)
            if issubclass(obj, BaseModel) and obj.__module__ == config.__name__ and obj.model_fields]


def test_every_config_model_is_found():
    names = {model.__name__ for model in config_models()}
    assert {"ExperimentConfig", "ClientsConfig", "ServerConfig", "TrainConfig", "PrivacyConfig"} <= names


def test_every_field_and_section_has_a_description():
    missing = [f"{model.__name__}.{name}" for model in config_models()
               for name, field in model.model_fields.items() if not (field.description or "").strip()]
    assert missing == [], f"fields without Field(description=...): {missing}"
    undocumented = [model.__name__ for model in config_models() if not inspect.getdoc(model)
                    or inspect.getdoc(model) == inspect.getdoc(BaseModel)]
    assert undocumented == [], f"config sections without a docstring: {undocumented}"
