"""S1's sampler against Hugging Face ``generate``: tokens per second on the same prompts, sampling
settings, stop string and batch size. Used by sst2_default.py (CPU) and gpu.py."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from crosslm.models.devices import input_device
from crosslm.models.llm import ServerLLM
from crosslm.models.sampling import SamplingParams


def synchronized() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def count_tokens(model: torch.nn.Module) -> Callable[[], int]:
    """Tokens crosslm's sampler draws: one per row of every forward call (prefill and each step)."""
    seen = [0]

    def count(_module, _args, kwargs) -> None:
        if kwargs.get("input_ids") is not None:
            seen[0] += kwargs["input_ids"].shape[0]

    model.register_forward_pre_hook(count, with_kwargs=True)
    return lambda: seen[0]


def s1(llm: ServerLLM, prompts: list[str], params: SamplingParams, batch_size: int) -> dict[str, float]:
    """Tokens per second of crosslm's sampler and of HF generate on the same prompts, with the same
    sampling settings, stop string and batch size (the S1 speed target is a ratio of the two)."""
    llm.generate(prompts[:batch_size], params, torch.Generator().manual_seed(1), batch_size)  # warm-up
    counted = count_tokens(llm.model)
    start = synchronized()
    llm.generate(prompts, params, torch.Generator().manual_seed(0), batch_size)
    ours = counted() / (synchronized() - start)
    hf_tokens, start = 0, synchronized()
    for i in range(0, len(prompts), batch_size):
        enc = llm.tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True)
        enc = enc.to(input_device(llm.model))
        out = llm.model.generate(**enc, do_sample=True, top_k=params.top_k, top_p=params.top_p,
                                 temperature=params.temperature, max_new_tokens=params.max_new_tokens,
                                 stop_strings=[params.stop], tokenizer=llm.tokenizer,
                                 pad_token_id=llm.tokenizer.pad_token_id)
        hf_tokens += int((out[:, enc.input_ids.shape[1]:] != llm.tokenizer.pad_token_id).sum())
    return {"s1_tokens_per_s": ours, "hf_generate_tokens_per_s": hf_tokens / (synchronized() - start)}
