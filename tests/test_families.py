"""Any model family: tiny random models of each supported architecture, built from their transformers
configs with the session's offline tokenizers, through a full CrossLM round and the model-level steps.

Server LLMs: Llama, Qwen2, Mistral, Gemma 3, Phi-3, GPT-2. Client SLMs: BERT, RoBERTa, DeBERTa-v2,
DistilBERT and a causal LM. LoRA targets come from PEFT's per-architecture defaults (Phi-3 has none
in PEFT, so it takes ``lora_target_modules``); the chat prompt path uses a small chat template.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    DebertaV2Config,
    DistilBertConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    Qwen2Config,
    RobertaConfig,
)

from crosslm.config import config_from_layers
from crosslm.errors import CrossLMError
from crosslm.experiment import run_experiment
from crosslm.models.classifier import build_classifier, verbalizer_token_ids
from crosslm.models.llm import CLASSIFIER, ServerLLM
from crosslm.models.prompts import classify_prompt, generation_prompt
from crosslm.models.sampling import SamplingParams
from crosslm.models.training import TrainItem, train_classifier

SMALL = {"num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "hidden_size": 32}
CAUSAL: dict[str, Callable[..., PretrainedConfig]] = {
    "llama": lambda **ids: LlamaConfig(**SMALL, num_key_value_heads=1, max_position_embeddings=512, **ids),
    "qwen2": lambda **ids: Qwen2Config(**SMALL, num_key_value_heads=1, max_position_embeddings=512, **ids),
    "mistral": lambda **ids: MistralConfig(**SMALL, num_key_value_heads=1, max_position_embeddings=512,
                                           head_dim=16, **ids),
    "phi3": lambda **ids: Phi3Config(**SMALL, num_key_value_heads=2, max_position_embeddings=512, **ids),
    "gpt2": lambda **ids: GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=512, **ids),
}
ENCODERS: dict[str, Callable[..., PretrainedConfig]] = {
    "roberta": lambda **ids: RobertaConfig(**SMALL, max_position_embeddings=300, **ids),
    "deberta-v2": lambda **ids: DebertaV2Config(**SMALL, max_position_embeddings=512, **ids),
    "distilbert": lambda **ids: DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64, **ids),
}
# PEFT has no default for Phi-3's fused qkv_proj: a user names the modules
TARGETS = {"phi3": ["qkv_proj"]}
LLMS = ["llama", "qwen2", "mistral", "gemma3", "phi3", "gpt2"]
SLMS = ["bert", "roberta", "deberta-v2", "distilbert", "causal"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<eos>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _save(directory: Path, model: torch.nn.Module, tokenizer) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory, tiny_causal_dir, tiny_encoder_dir) -> Callable[[str], Path]:
    """A saved tiny model of a family, built on first use; the Gemma 3 LLM and the BERT encoder are
    the session's, and every family shares their tokenizers."""
    built = {"gemma3": tiny_causal_dir, "bert": tiny_encoder_dir, "causal": tiny_causal_dir}
    root = tmp_path_factory.mktemp("families")

    def get(family: str) -> Path:
        if family not in built:
            causal = family in CAUSAL
            tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir if causal else tiny_encoder_dir)
            ids = {"pad_token_id": tokenizer.pad_token_id}
            if causal:
                ids |= {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
            config = (CAUSAL if causal else ENCODERS)[family](vocab_size=len(tokenizer), **ids)
            torch.manual_seed(0)
            model = (AutoModelForCausalLM if causal else AutoModel).from_config(config)
            built[family] = _save(root / family, model, tokenizer)
        return built[family]

    return get


@pytest.fixture(scope="module")
def chat_llm_dir(family_dir, tmp_path_factory) -> Path:
    """The tiny Qwen2 LLM with a chat template in its tokenizer, like an instruction-tuned model."""
    directory = tmp_path_factory.mktemp("chat") / "qwen2-chat"
    shutil.copytree(family_dir("qwen2"), directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


def _run_round(tmp_path: Path, data_dir: Path, llm: Path, slms: list[Path], **sets) -> tuple[dict, Path]:
    raw = {
        "task": "sst2", "rounds": 1, "data_dir": str(data_dir), "output_dir": str(tmp_path / "run"),
        "clients": {"num_clients": 2, "examples_per_client": 12, "validation_per_client": 4,
                    "slm": [str(s) for s in slms], "lora_rank": 2,
                    "local_training": {"lr": 1e-3, "epochs": 1}, "round_training": {"epochs": 1}},
        "server": {"llm": str(llm), "lora_rank": 2, "classifier_training": {"epochs": 1},
                   "kl_positions": 2},
        "generation": {"samples_per_label": 3, "max_new_tokens": 6, "min_words": 1, "batch_size": 6},
        "selection": {"threshold": 0.0}, "feedback": {"threshold": 0.0},
        "evaluation": {"slm_test_size": 8, "llm_test_size": 8, "general_ability": False},
    }
    for dotted, value in sets.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    return run_experiment(config_from_layers(raw))


@pytest.mark.parametrize(("llm", "slms"), [
    ("llama", ["bert", "roberta"]), ("qwen2", ["deberta-v2", "distilbert"]), ("mistral", ["causal", "bert"]),
    ("gemma3", ["roberta", "causal"]), ("phi3", ["distilbert", "deberta-v2"]), ("gpt2", ["bert", "causal"]),
])
def test_a_full_round_runs_on_every_family(llm, slms, family_dir, shared_data, tmp_path):
    extra = {"server__lora_target_modules": TARGETS[llm]} if llm in TARGETS else {}
    summary, run = _run_round(tmp_path, shared_data, family_dir(llm), [family_dir(s) for s in slms], **extra)
    assert summary["rounds"] == 1 and summary["llm_acc"] is not None and summary["slm_acc"] is not None
    phases = {json.loads(line)["phase"] for line in (run / "metrics.jsonl").read_text().splitlines()}
    assert {"S1-generate", "C2-score", "S3-improve-generator", "S5-enhance-llm"} <= phases


@pytest.mark.parametrize("family", LLMS)
def test_every_llm_family_builds_its_lora_generates_classifies_and_trains(family, family_dir, task):
    llm = ServerLLM(str(family_dir(family)), task, lora_rank=2, seed=0,
                    lora_target_modules=TARGETS.get(family))
    model_type = llm.model.base_model.model.config.model_type
    expected = TARGETS.get(family) or PEFT_TARGETS[model_type]
    for adapter in ("classifier", "generator"):
        assert llm.model.peft_config[adapter].target_modules == set(expected)
    prompts = [llm.generation_prompt(0, task.seeds["negative"][:2]), llm.generation_prompt(1, [])]
    texts = llm.generate(prompts, SamplingParams(max_new_tokens=4), torch.Generator().manual_seed(0), 2)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    probs = llm.classifier.predict_proba(["a fine film", "a dull mess"])
    assert probs.shape == (2, 2) and torch.allclose(probs.sum(-1), torch.ones(2))
    before = {k: v.clone() for k, v in llm.classifier.trainable_state().items()}
    train_classifier(llm.classifier, [TrainItem("a fine film", 1), TrainItem("a dull mess", 0)], lr=1e-2,
                     epochs=1, batch_size=2, seed=0)
    after = llm.classifier.trainable_state()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_gemma3_default_targets_are_q_and_v_as_before(family_dir, task):
    llm = ServerLLM(str(family_dir("gemma3")), task, lora_rank=2, seed=0)
    assert llm.model.peft_config[CLASSIFIER].target_modules == {"q_proj", "v_proj"}


@pytest.mark.parametrize("family", SLMS)
def test_every_slm_family_classifies_and_trains(family, family_dir, task):
    classifier = build_classifier(str(family_dir(family)), task, lora_rank=2, seed=0)
    kind = "VerbalizerClassifier" if family == "causal" else "EncoderClassifier"
    assert type(classifier).__name__ == kind
    assert classifier.predict_proba(["a fine film", "a dull mess", "ok"]).shape == (3, 2)
    before = {k: v.clone() for k, v in classifier.trainable_state().items()}
    train_classifier(classifier, [TrainItem("a fine film", 1), TrainItem("a dull mess", 0)], lr=1e-2,
                     epochs=1, batch_size=2, seed=0)
    assert any(not torch.equal(before[k], v) for k, v in classifier.trainable_state().items())


def test_an_architecture_peft_cannot_adapt_is_a_clear_error(family_dir, task):
    with pytest.raises(CrossLMError, match="no default LoRA target modules for the 'phi3'") as err:
        ServerLLM(str(family_dir("phi3")), task, lora_rank=2, seed=0)
    assert "server.lora_target_modules" in str(err.value) and "qkv_proj" in str(err.value)
    with pytest.raises(CrossLMError, match="clients.lora_target_modules"):
        build_classifier(str(family_dir("llama")), task, lora_rank=2, seed=0, lora_target_modules=["nope"])


def test_all_linear_targets(family_dir, task):
    llm = ServerLLM(str(family_dir("llama")), task, lora_rank=2, seed=0, lora_target_modules="all-linear")
    adapted = {name.rsplit(".", 1)[-1] for name in llm.model.peft_config[CLASSIFIER].target_modules}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


# --- chat prompts ------------------------------------------------------------------------------


def test_chat_prompts_open_the_assistant_turn_with_the_completion_prefix(chat_llm_dir, task):
    tokenizer = AutoTokenizer.from_pretrained(chat_llm_dir)
    prompt = generation_prompt(task, 1, ["great fun ."], "chat", tokenizer)
    assert prompt.startswith("<|user|>\n" + task.generate_instruction["positive"])
    assert f"{task.item_prefix} great fun ." in prompt
    assert prompt.endswith("<|assistant|>\n" + task.item_prefix)
    assert tokenizer(prompt).input_ids.count(tokenizer.bos_token_id) == 1  # the template's BOS is not doubled

    prompt = classify_prompt(task, " a fine film ", "chat", tokenizer)
    assert prompt.startswith("<|user|>\nReview: a fine film\n\nAnswer with one of: negative, positive.")
    assert prompt.endswith("<|assistant|>\nSentiment:")
    # the verbalizer is the next token after the assistant turn's classification prefix
    positive = verbalizer_token_ids(tokenizer, task)[1]
    assert tokenizer(prompt + " positive").input_ids == tokenizer(prompt).input_ids + [positive]
    assert classify_prompt(task, "x", "completion", tokenizer) == task.classify_prompt("x")


def test_a_full_round_with_chat_prompts(chat_llm_dir, family_dir, shared_data, tmp_path):
    summary, run = _run_round(tmp_path, shared_data, chat_llm_dir, [family_dir("bert")],
                              generation__prompt_format="chat")
    assert summary["rounds"] == 1 and summary["llm_acc"] is not None


def test_chat_needs_a_chat_template(family_dir, task):
    with pytest.raises(CrossLMError, match="has no chat template"):
        ServerLLM(str(family_dir("qwen2")), task, lora_rank=2, seed=0, prompt_format="chat")


def test_memory_savers_gradient_checkpointing_and_adafactor_still_train(family_dir, task):
    llm = ServerLLM(str(family_dir("llama")), task, lora_rank=2, seed=0, gradient_checkpointing=True)
    assert llm.model.base_model.model.is_gradient_checkpointing
    before = {k: v.clone() for k, v in llm.classifier.trainable_state().items()}
    train_classifier(llm.classifier, [TrainItem("a fine film", 1), TrainItem("a dull mess", 0)], lr=1e-2,
                     epochs=1, batch_size=2, seed=0, optimizer_kind="adafactor",
                     forward=llm.kl_regularised_forward(2, 1.0))
    assert any(not torch.equal(before[k], v) for k, v in llm.classifier.trainable_state().items())
