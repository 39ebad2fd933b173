"""Shared fixtures: the benchmark data folder, tiny offline models and a private model cache."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub: no test may reach a hub (there is no internet).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from tiny_models import (  # noqa: E402
    SHARED_DATA,
    build_tiny_causal_lm,
    build_tiny_encoder,
    training_corpus,
)

from crosslm.models.loading import CACHE_ENV  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def crosslm_cache(tmp_path_factory: pytest.TempPathFactory):
    """``$CROSSLM_CACHE`` points at a session temp dir, so tests never write to ~/.cache."""
    path = tmp_path_factory.mktemp("crosslm-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(path))
        yield path


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and do not fight other processes for the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def task():
    """The built-in SST-2 task spec."""
    from crosslm.tasks.spec import load_task

    return load_task("sst2")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real benchmark files (/work/shared/data); tests using them skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_corpus() -> list[str]:
    """Tokenizer training text: task train lines when the shared data exists, else a fallback."""
    return training_corpus(SHARED_DATA)


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: list[str]) -> Path:
    """A saved 2-layer Gemma 3 causal LM with its tokenizer. Read-only: copy it to modify."""
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-gemma3"), tiny_corpus)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: list[str]) -> Path:
    """A saved 2-layer BERT encoder with its tokenizer. Read-only: copy it to modify."""
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"), tiny_corpus)
