"""What ``auto`` and the other device settings pick, and the early memory check, for machines we lack.

The facts (GPUs and their free memory, bf16 support, free RAM) go in as arguments, so
every case runs on a CPU-only machine without mocking torch.
"""

from __future__ import annotations

import json

import pytest
import torch

from crosslm.config import load_config
from crosslm.errors import CrossLMError
from crosslm.models.devices import (
    GIB,
    Hardware,
    Placement,
    available_bytes,
    check_fits,
    choose_dtype,
    choose_placement,
    memory_needed,
    plan_load,
)

CPU_ONLY = Hardware(ram_free_bytes=64 * GIB)
ONE_GPU = Hardware(gpu_free_bytes=(80 * GIB,), gpu_bf16=True, ram_free_bytes=64 * GIB)
TWO_GPUS = Hardware(gpu_free_bytes=(20 * GIB, 24 * GIB), gpu_bf16=True, ram_free_bytes=64 * GIB)
OLD_GPU = Hardware(gpu_free_bytes=(16 * GIB,), gpu_bf16=False, ram_free_bytes=64 * GIB)
SMALL, HUGE = 1 * GIB, 30 * GIB


def place(setting: str, needed: int, hardware: Hardware, shardable: bool = True) -> Placement:
    return choose_placement(setting, needed, hardware, shardable=shardable, role="server.device")


def test_auto_without_cuda_is_the_cpu():
    assert place("auto", SMALL, CPU_ONLY) == Placement("cpu", "cpu")
    assert not place("auto", SMALL, CPU_ONLY).is_gpu


def test_auto_with_one_gpu_takes_it_whole():
    assert place("auto", SMALL, ONE_GPU) == Placement("cuda:0", {"": "cuda:0"})


def test_auto_with_several_gpus_takes_the_freest_when_the_model_fits_it():
    assert place("auto", SMALL, TWO_GPUS) == Placement("cuda:1", {"": "cuda:1"})


def test_auto_shards_the_llm_that_fits_no_single_gpu():
    assert place("auto", HUGE, TWO_GPUS) == Placement("cuda:0", "auto")
    # a client SLM is never sharded: it takes the freest GPU (and the memory check says if it fits)
    assert place("auto", HUGE, TWO_GPUS, shardable=False) == Placement("cuda:1", {"": "cuda:1"})


def test_explicit_settings():
    assert place("cpu", SMALL, ONE_GPU) == Placement("cpu", "cpu")
    assert place("cuda", SMALL, TWO_GPUS).device == "cuda:1"
    assert place("cuda:0", HUGE, TWO_GPUS) == Placement("cuda:0", {"": "cuda:0"})


@pytest.mark.parametrize(("setting", "hardware", "message"), [
    ("cuda", CPU_ONLY, "sees no CUDA GPU"),
    ("cuda:2", TWO_GPUS, "has 2 GPU(s) (cuda:0 to cuda:1)"),
    ("gpu", ONE_GPU, "'gpu' is not a device"),
])
def test_impossible_device_settings_are_clear_errors(setting, hardware, message):
    with pytest.raises(CrossLMError, match="server.device") as err:
        place(setting, SMALL, hardware)
    assert message in str(err.value)


def test_dtype_auto_is_bf16_where_the_hardware_supports_it():
    assert choose_dtype("auto", "cuda:0", ONE_GPU) is torch.bfloat16
    assert choose_dtype("auto", "cuda:0", OLD_GPU) is torch.float32
    assert choose_dtype("auto", "cpu", ONE_GPU) is torch.float32  # no AMX
    assert choose_dtype("auto", "cpu", Hardware(cpu_amx=True)) is torch.bfloat16
    assert choose_dtype("float32", "cuda:0", ONE_GPU) is torch.float32
    assert choose_dtype("bfloat16", "cpu", CPU_ONLY) is torch.bfloat16


def test_memory_estimate_is_weights_times_dtype_bytes_with_headroom():
    seven_b = 7_615_616_512
    assert memory_needed(seven_b, torch.bfloat16) == int(seven_b * 2 * 1.2)
    assert memory_needed(seven_b, torch.float32) == int(seven_b * 4 * 1.2)
    assert available_bytes(Placement("cuda:0", "auto"), TWO_GPUS) == 44 * GIB
    assert available_bytes(Placement("cuda:1", {"": "cuda:1"}), TWO_GPUS) == 24 * GIB
    assert available_bytes(Placement("cpu", "cpu"), CPU_ONLY) == 64 * GIB
    assert available_bytes(Placement("cpu", "cpu"), Hardware()) is None  # unknown: not checked


def test_a_model_that_does_not_fit_fails_early_saying_what_it_needs_and_what_to_change():
    seven_b = 7_615_616_512  # Qwen2.5-7B
    with pytest.raises(CrossLMError) as err:
        check_fits("Qwen/Qwen2.5-7B-Instruct", seven_b, torch.float32, Placement("cuda:0", {"": "cuda:0"}),
                   OLD_GPU, "server")
    message = str(err.value)
    assert "Qwen/Qwen2.5-7B-Instruct does not fit" in message and "7.62B parameters in float32" in message
    assert "need about 34.0 GiB" in message and "cuda:0 has 16.0 GiB free" in message
    assert "server.dtype=bfloat16" in message and "server.device=cpu (it fits in RAM" in message
    # bf16 on the old GPU still does not fit
    with pytest.raises(CrossLMError, match="need about 17.0 GiB"):
        plan_load("Qwen/Qwen2.5-7B-Instruct", seven_b, device="auto", dtype="bfloat16", hardware=OLD_GPU,
                  shardable=True, section="server")
    # one of two GPUs, pinned: the advice is to let auto shard it
    with pytest.raises(CrossLMError, match="server.device=auto"):
        plan_load("big", 2 * seven_b, device="cuda:0", dtype="auto", hardware=TWO_GPUS, shardable=True,
                  section="server")
    with pytest.raises(CrossLMError, match="RAM has 8.0 GiB free"):
        check_fits("big", seven_b, torch.float32, Placement("cpu", "cpu"), Hardware(ram_free_bytes=8 * GIB),
                   "clients")


def test_plan_load_picks_placement_and_dtype_together():
    seven_b = 7_615_616_512
    # about 17 GiB in bf16: fits the freer GPU (24 GiB), so it is not sharded
    assert plan_load("m", seven_b, device="auto", dtype="auto", hardware=TWO_GPUS, shardable=True,
                     section="server") == (Placement("cuda:1", {"": "cuda:1"}), torch.bfloat16)
    fourteen_b = 2 * seven_b  # 34 GiB in bf16: sharded over both
    assert plan_load("m", fourteen_b, device="auto", dtype="auto", hardware=TWO_GPUS, shardable=True,
                     section="server") == (Placement("cuda:0", "auto"), torch.bfloat16)
    assert plan_load("m", SMALL, device="auto", dtype="auto", hardware=CPU_ONLY, shardable=True,
                     section="server") == (Placement("cpu", "cpu"), torch.float32)


def test_device_settings_in_the_config():
    config = load_config(None, ["server.device=cuda:1", "clients.device=cpu"])
    assert (config.server.device, config.clients.device) == ("cuda:1", "cpu")
    assert load_config(None).server.device == "auto" == load_config(None).clients.device
    with pytest.raises(CrossLMError, match="server.device"):
        load_config(None, ["server.device=gpu0"])


def test_a_silo_sets_its_own_device_in_its_node_config(tmp_path):
    from crosslm.runtime.flower_app import _node_client

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 2}) + "\n" for i in range(6)))
    config = load_config(None, ["clients.device=auto"])
    node = {"data-path": str(data), "test-path": str(data), "state-dir": str(tmp_path / "state")}
    assert _node_client(config, node | {"device": "cpu"}, "north", "run").config.device == "cpu"
    assert _node_client(config, node, "north", "run").config.device == "auto"


def test_a_run_whose_llm_does_not_fit_stops_before_writing_anything(tmp_path, shared_data, tiny_causal_dir,
                                                                    tiny_encoder_dir, monkeypatch):
    from crosslm.config import config_from_layers
    from crosslm.experiment import run_experiment
    from crosslm.models import loading

    monkeypatch.setattr(loading, "detect_hardware", lambda: Hardware(ram_free_bytes=1024))
    config = config_from_layers({
        "data_dir": str(shared_data), "output_dir": str(tmp_path / "run"),
        "server": {"llm": str(tiny_causal_dir)},
        "clients": {"slm": [str(tiny_encoder_dir)], "num_clients": 2, "examples_per_client": 8,
                    "validation_per_client": 2}})
    with pytest.raises(CrossLMError, match="does not fit: .* RAM has 0.0 GiB free") as err:
        run_experiment(config)
    assert str(tiny_causal_dir) in str(err.value)
    assert not (tmp_path / "run").exists()
