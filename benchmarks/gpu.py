"""Benchmark: a CrossLM round's phases with real-size models on a GPU.

Per LLM size (a Qwen2.5-1.5B and a Qwen2.5-7B config, random weights in the GPU's dtype)
with a MiniLM-size encoder SLM and a Qwen2.5-0.5B-size causal SLM:

- S1: tokens per second of crosslm's sampler, and of HF ``generate`` on the same prompts
  with the same top-k, top-p and token budget;
- S3 and S5: seconds per training step of the generator and classifier adapters;
- C2: texts per second each SLM scores;
- a whole round's seconds (S1-S5, C2, C1; ``crosslm run`` with rounds=1, without its evaluations);
- the peak GPU memory over all of it.

Nothing is downloaded (the GPU machine has no network): the weights are random, with the real
architectures' shapes and vocabulary sizes, and the tokenizer is a byte-level BPE trained here on
the task texts (token ids beyond it decode to nothing, so the LM head still costs what it costs).
Random weights rarely write the stop, so samples run to ``max_new_tokens``: these are speed
figures, not quality ones. ``--tiny`` runs the same code on CPU-size models (a smoke test; its
numbers are not GPU results). Writes benchmarks/results/gpu.json (``--tiny``: runs/bench-gpu/
gpu-tiny.json), one row per LLM size. Run from the repo root:

    .venv/bin/python benchmarks/gpu.py [--tiny] [--sizes qwen2.5-1.5b qwen2.5-7b] [--out PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shlex
import sys
from pathlib import Path

import torch
from sampler_speed import s1, synchronized
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from crosslm.bench.results import machine
from crosslm.config import FeedbackConfig, TrainConfig, config_from_layers
from crosslm.experiment import run_experiment
from crosslm.models.classifier import build_classifier
from crosslm.models.devices import detect_hardware
from crosslm.models.llm import ServerLLM
from crosslm.models.sampling import SamplingParams
from crosslm.models.training import TrainItem, train_classifier
from crosslm.reporting.summary import COMPUTE_PHASES
from crosslm.strategies.feedback import improve_generator
from crosslm.synthetic import ScoredSample
from crosslm.tasks.data import load_split
from crosslm.tasks.spec import load_task

RESULTS = Path(__file__).parent / "results"
QWEN = {"rope_theta": 1_000_000.0, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6}
Spec = tuple[type[PretrainedConfig], dict]
# the published configs' shapes (Qwen2.5 on the hub), written out: nothing is fetched
LLMS: dict[str, Spec] = {
    "qwen2.5-1.5b": (Qwen2Config, {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                                   "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                                   "tie_word_embeddings": True, **QWEN}),
    "qwen2.5-7b": (Qwen2Config, {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                                 "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                                 "tie_word_embeddings": False, **QWEN}),
}
SLMS: dict[str, Spec] = {
    "minilm-size": (BertConfig, {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                                 "intermediate_size": 1536, "vocab_size": 30522}),
    "qwen2.5-0.5b": (Qwen2Config, {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                                   "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                                   "tie_word_embeddings": True, **QWEN}),
}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1}
# (samples per label for S1, S3/S5 training samples, C2 texts, max new tokens)
WORKLOAD = {"full": (64, 64, 512, 40), "tiny": (4, 8, 16, 8)}


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with pad 0, eos 1, bos 2, unk 3 and a BOS before every text."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                             special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def build_model(spec: Spec, tokenizer, directory: Path, causal: bool, tiny: bool, device: str) -> Path:
    """Random weights of the config ``spec``, built on ``device`` in its dtype and saved as a checkpoint."""
    config_class, kwargs = spec
    if tiny:
        kwargs = kwargs | {k: v for k, v in TINY.items() if k in kwargs} | {"vocab_size": len(tokenizer)}
    config = config_class(**kwargs, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = (AutoModelForCausalLM if causal else AutoModel).from_config(config, dtype=dtype)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    del model
    release()
    return directory


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def training_steps(llm: ServerLLM, texts: list[str], task, batch_size: int, optimizer: str
                   ) -> dict[str, float]:
    """Seconds per S3 (generator, filtered-sft) and S5 (classifier, label loss + KL) training step."""
    samples = [ScoredSample(t, i % task.num_labels, 1.0, [0.5] * task.num_labels, 0.0)
               for i, t in enumerate(texts)]
    feedback = FeedbackConfig(threshold=0.0, max_samples_per_label=len(texts),
                              training=TrainConfig(lr=1e-4, epochs=1, batch_size=batch_size))
    start = synchronized()
    metrics = improve_generator(llm, samples, task, feedback, seed=0, optimizer_kind=optimizer)
    steps = metrics["generator_steps"]
    s3 = (synchronized() - start) / steps
    items = [TrainItem(s.text, s.label) for s in samples]
    start = synchronized()
    train_classifier(llm.classifier, items, lr=1e-4, epochs=1, batch_size=batch_size, seed=0,
                     forward=llm.kl_regularised_forward(8, 1.0), optimizer_kind=optimizer)
    s5 = (synchronized() - start) / math.ceil(len(items) / batch_size)
    return {"s3_step_seconds": s3, "s5_step_seconds": s5}


def c2(slm_dir: Path, task, texts: list[str]) -> float:
    """Texts per second one SLM scores (C2), after a warm-up batch."""
    classifier = build_classifier(str(slm_dir), task, lora_rank=8, seed=0, device="auto")
    classifier.predict_proba(texts[:32])
    start = synchronized()
    classifier.predict_proba(texts)
    seconds = synchronized() - start
    del classifier
    release()
    return len(texts) / seconds


def whole_round(llm_dir: Path, slm_dirs: list[Path], data_dir: Path, out: Path, samples_per_label: int,
                max_new_tokens: int, optimizer: str, gradient_checkpointing: bool) -> float:
    """Round 1's compute seconds (S1-S5, C2, C1, without evaluation) of ``crosslm run``."""
    raw = {"task": "sst2", "rounds": 1, "data_dir": str(data_dir), "output_dir": str(out),
           "clients": {"num_clients": 2, "examples_per_client": 64, "validation_per_client": 16,
                       "slm": [str(d) for d in slm_dirs], "local_training": {"lr": 2e-4, "epochs": 1}},
           "server": {"llm": str(llm_dir), "optimizer": optimizer,
                      "gradient_checkpointing": gradient_checkpointing},
           "generation": {"samples_per_label": samples_per_label, "max_new_tokens": max_new_tokens},
           "evaluation": {"slm_test_size": 64, "llm_test_size": 64, "general_ability": False}}
    run_experiment(config_from_layers(raw), mode="overwrite" if (out / "config.yaml").is_file() else "new")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    mine = [m for m in metrics if m["round"] == 1 and m["phase"] in COMPUTE_PHASES]
    return sum(m["seconds"] for m in mine) - sum(m.get("eval_seconds", 0) for m in mine)


def bench_size(name: str, args: argparse.Namespace, tokenizer, slm_dirs: list[Path], data_dir: Path,
               device: str) -> dict:
    task = load_task("sst2")
    samples_per_label, train_samples, c2_texts, max_new = WORKLOAD["tiny" if args.tiny else "full"]
    llm_dir = build_model(LLMS[name], tokenizer, args.work / name, causal=True, tiny=args.tiny,
                          device=device)
    texts = [ex.text for ex in load_split(task, "train", data_dir)[:max(train_samples, c2_texts)]]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    llm = ServerLLM(str(llm_dir), task, lora_rank=8, seed=0, device="auto",
                    gradient_checkpointing=args.gradient_checkpointing)
    params = sum(p.numel() for p in llm.model.base_model.model.parameters() if not p.requires_grad)
    prompts = [llm.generation_prompt(label, task.seeds[task.labels[label]][:4])
               for label in range(task.num_labels) for _ in range(samples_per_label)]
    row = {"llm": name, "llm_params": params, "dtype": str(llm.model.dtype).removeprefix("torch."),
           "optimizer": args.optimizer, "gradient_checkpointing": args.gradient_checkpointing,
           **s1(llm, prompts, SamplingParams(max_new_tokens=max_new), batch_size=32),
           **training_steps(llm, texts[:train_samples], task, batch_size=8, optimizer=args.optimizer)}
    del llm
    release()
    row["c2_texts_per_s"] = {d.name: c2(d, task, texts[:c2_texts]) for d in slm_dirs}
    row["round_seconds"] = whole_round(llm_dir, slm_dirs, data_dir, args.work / f"run-{name}",
                                       samples_per_label, max_new, args.optimizer,
                                       args.gradient_checkpointing)
    row["peak_gpu_memory_gb"] = (torch.cuda.max_memory_allocated() / 1024**3
                                 if torch.cuda.is_available() else None)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU-size models: a smoke test, not GPU figures")
    parser.add_argument("--sizes", nargs="+", choices=list(LLMS), default=list(LLMS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-gpu"), help="models and runs go here")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("CROSSLM_DATA_DIR", "../shared/data")))
    parser.add_argument("--optimizer", choices=["adamw", "adafactor"], default="adamw")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    hardware = detect_hardware()
    if not args.tiny and not hardware.gpu_free_bytes:
        sys.exit("benchmarks/gpu.py: torch sees no GPU; run with --tiny for the CPU smoke test")
    out = args.out or (args.work / "gpu-tiny.json" if args.tiny else RESULTS / "gpu.json")
    device = "cuda" if hardware.gpu_free_bytes else "cpu"
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (CPU, --tiny)"
    task = load_task("sst2")
    corpus = [ex.text for ex in load_split(task, "train", args.data_dir)[:4000]]
    corpus += [seed for seeds in task.seeds.values() for seed in seeds] + [task.classify_template]
    tokenizer = train_tokenizer(corpus, 400 if args.tiny else 8000)
    slm_dirs = [build_model(spec, tokenizer, args.work / name, causal=name != "minilm-size",
                            tiny=args.tiny, device=device) for name, spec in SLMS.items()]
    command = shlex.join(["python", "benchmarks/gpu.py", *sys.argv[1:]])
    rows = [{"gpu": gpu, **bench_size(name, args, tokenizer, slm_dirs, args.data_dir, device),
             "tiny": args.tiny, "command": command} for name in args.sizes]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n", encoding="utf-8")
    for row in rows:
        print(f"{row['llm']}: S1 {row['s1_tokens_per_s']:.0f} tok/s (HF generate "
              f"{row['hf_generate_tokens_per_s']:.0f}), S5 {row['s5_step_seconds']:.3f} s/step, "
              f"round {row['round_seconds']:.1f} s")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
