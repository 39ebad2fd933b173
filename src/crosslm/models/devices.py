"""Where a model runs, in which dtype, and whether it fits there.

The decisions are pure functions of the facts (how many GPUs, their free
memory, bf16 support, the model's size), so every case is tested without a
GPU; ``detect_hardware`` is the only place that asks torch about the machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from crosslm.config import DEVICE_PATTERN
from crosslm.errors import CrossLMError

GIB = 1024**3
# Weights are most of what a model needs; this leaves room for activations, the KV cache,
# LoRA weights and their optimizer state at the batch sizes the round uses.
HEADROOM = 1.2


@dataclass(frozen=True)
class Hardware:
    """What the machine offers: free memory per GPU (empty: no CUDA), bf16 support, free RAM."""

    gpu_free_bytes: tuple[int, ...] = ()
    gpu_bf16: bool = False
    cpu_amx: bool = False
    ram_free_bytes: int | None = None


@dataclass(frozen=True)
class Placement:
    """Where a model's inputs go, and the ``device_map`` to load it with (``auto``: sharded)."""

    device: str
    device_map: str | dict[str, str]

    @property
    def is_gpu(self) -> bool:
        return self.device.startswith("cuda")


def _cpu_amx() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _ram_free_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def detect_hardware() -> Hardware:
    """The facts about this machine that placement and dtype choices depend on."""
    if torch.cuda.is_available():
        free = tuple(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
        bf16 = torch.cuda.is_bf16_supported()
    else:
        free, bf16 = (), False
    return Hardware(gpu_free_bytes=free, gpu_bf16=bf16, cpu_amx=_cpu_amx(), ram_free_bytes=_ram_free_bytes())


def choose_dtype(setting: str, device: str, hardware: Hardware) -> torch.dtype:
    """bfloat16 on a GPU that supports it and on CPUs with AMX (it is slower than float32 on other
    CPUs); float32 otherwise."""
    if setting != "auto":
        return getattr(torch, setting)
    bf16 = hardware.gpu_bf16 if device.startswith("cuda") else hardware.cpu_amx
    return torch.bfloat16 if bf16 else torch.float32


def choose_placement(setting: str, needed_bytes: int, hardware: Hardware, *, shardable: bool,
                     role: str) -> Placement:
    """Resolve a device setting (auto, cpu, cuda, cuda:N) for a model that needs ``needed_bytes``.

    ``auto`` takes the GPU with the most free memory when the model fits it; a ``shardable``
    model (the server LLM) that fits no single GPU but all of them together is spread over
    them (``device_map="auto"``); ``auto`` falls back to the CPU only when there is no GPU.
    ``role`` names the config field in error messages (e.g. ``server.device``).
    """
    if not re.match(DEVICE_PATTERN, setting):
        raise CrossLMError(f"{role}: '{setting}' is not a device; use auto, cpu, cuda or cuda:N")
    gpus = hardware.gpu_free_bytes
    if setting == "cpu" or (setting == "auto" and not gpus):
        return Placement("cpu", "cpu")
    if not gpus:
        raise CrossLMError(f"{role} is '{setting}' but torch sees no CUDA GPU on this machine; "
                           f"set {role}=cpu or auto")
    if setting.startswith("cuda:"):
        index = int(setting.removeprefix("cuda:"))
        if index >= len(gpus):
            raise CrossLMError(f"{role} is '{setting}' but this machine has {len(gpus)} GPU(s) "
                               f"(cuda:0 to cuda:{len(gpus) - 1})")
        return Placement(setting, {"": setting})
    best = max(range(len(gpus)), key=lambda i: gpus[i])
    if shardable and len(gpus) > 1 and needed_bytes > gpus[best]:
        return Placement("cuda:0", "auto")  # the embeddings, where inputs go, sit on the first GPU
    return Placement(f"cuda:{best}", {"": f"cuda:{best}"})


def available_bytes(placement: Placement, hardware: Hardware) -> int | None:
    """Free memory where the model will live (None: unknown, e.g. RAM without psutil)."""
    if not placement.is_gpu:
        return hardware.ram_free_bytes
    if placement.device_map == "auto":
        return sum(hardware.gpu_free_bytes)
    return hardware.gpu_free_bytes[int(placement.device.removeprefix("cuda:"))]


def memory_needed(num_parameters: int, dtype: torch.dtype) -> int:
    """Bytes a model of ``num_parameters`` needs in ``dtype``, with room to run and train adapters."""
    return int(num_parameters * dtype.itemsize * HEADROOM)


def check_fits(name: str, num_parameters: int, dtype: torch.dtype, placement: Placement,
               hardware: Hardware, section: str) -> None:
    """Fail before loading, with what the model needs and what to change, if it cannot fit.

    ``section`` is the config section whose settings the advice names (server or clients).
    """
    needed, free = memory_needed(num_parameters, dtype), available_bytes(placement, hardware)
    if free is None or needed <= free:
        return
    where = ("RAM" if not placement.is_gpu else
             f"{len(hardware.gpu_free_bytes)} GPUs together" if placement.device_map == "auto"
             else placement.device)
    role = f"{section}.device"
    advice = ["a smaller model"]
    if dtype.itemsize > 2 and section == "server":
        advice.append("server.dtype=bfloat16 (half the memory)")
    if placement.is_gpu and placement.device_map != "auto" and len(hardware.gpu_free_bytes) > 1:
        advice.append(f"{role}=auto (shards the LLM over the GPUs)" if section == "server"
                      else f"another GPU ({role}=cuda:N)")
    if not placement.is_gpu:
        advice.append("a machine with more memory or a GPU")
    else:
        if hardware.ram_free_bytes is not None and needed <= hardware.ram_free_bytes:
            advice.append(f"{role}=cpu (it fits in RAM, and runs far slower)")
        advice.append("a machine with more GPU memory, or freeing the GPU of other processes")
    raise CrossLMError(
        f"{name} does not fit: {num_parameters / 1e9:.2f}B parameters in {str(dtype).removeprefix('torch.')} "
        f"need about {needed / GIB:.1f} GiB ({HEADROOM:.1f}x the weights), and {where} has "
        f"{free / GIB:.1f} GiB free ({role}={placement.device}). Use {', or '.join(advice)}.")


def plan_load(name: str, num_parameters: int, *, device: str, dtype: str, hardware: Hardware,
              shardable: bool, section: str) -> tuple[Placement, torch.dtype]:
    """Where and in which dtype to load a model, after checking that it fits there."""
    # the size that decides between one GPU and several is the size in the GPU's dtype
    gpu_dtype = choose_dtype(dtype, "cuda", hardware)
    placement = choose_placement(device, memory_needed(num_parameters, gpu_dtype), hardware,
                                 shardable=shardable, role=f"{section}.device")
    chosen = choose_dtype(dtype, placement.device, hardware)
    check_fits(name, num_parameters, chosen, placement, hardware, section)
    return placement, chosen


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model's inputs go: its input embeddings' device (the first GPU of a sharded model);
    for a module without embeddings of its own (a wrapper), its first parameter's."""
    if hasattr(model, "get_input_embeddings"):
        return model.get_input_embeddings().weight.device
    return next(model.parameters()).device
