"""The server's LLM: one base model, two LoRA adapters.

- ``generator``: what S1 samples with and S3 trains from the clients' feedback.
- ``classifier``: the task-enhanced LLM of S5, read through verbalizer tokens.

Keeping them apart lets feedback reshape what the LLM writes without touching
how it classifies, and the base weights never change (general ability is
measured on the classifier adapter, the model a user would deploy for the task).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from crosslm.evaluation_cache import digest, model_fingerprint, tensor_digest
from crosslm.models.classifier import LoraAdapter, LoraTargets, VerbalizerClassifier, lora_config, with_lora
from crosslm.models.devices import input_device
from crosslm.models.loading import load_causal_lm
from crosslm.models.prompts import PromptFormat, check_prompt_format, generation_prompt
from crosslm.models.sampling import SamplingParams, sample_completions
from crosslm.tasks.spec import TaskSpec

GENERATOR, CLASSIFIER = "generator", "classifier"


class ServerLLM:
    def __init__(self, model_name: str, task: TaskSpec, lora_rank: int, seed: int, dtype: str = "auto", *,
                 device: str = "cpu", lora_target_modules: LoraTargets = None,
                 gradient_checkpointing: bool = False, prompt_format: PromptFormat = "completion"):
        base, self.tokenizer = load_causal_lm(model_name, dtype, device, shardable=True, section="server")
        check_prompt_format(prompt_format, self.tokenizer, model_name)
        self.prompt_format = prompt_format
        if gradient_checkpointing:  # recompute activations in backward: less memory, more time
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(seed)  # the adapters' initial weights
        self.model = with_lora(base, lora_rank, lora_target_modules, "server", adapter=CLASSIFIER)
        targets = self.model.peft_config[CLASSIFIER].target_modules
        self.model.add_adapter(GENERATOR, lora_config(lora_rank, targets))
        self.classifier = VerbalizerClassifier(self.model, self.tokenizer, task, adapter=CLASSIFIER,
                                               prompt_format=prompt_format)
        self.generator = LoraAdapter(self.model, GENERATOR)

    def generation_prompt(self, label: int, demonstrations: list[str]) -> str:
        """S1's prompt for one sample of ``label``, in this LLM's prompt format."""
        return generation_prompt(self.classifier.task, label, demonstrations, self.prompt_format,
                                 self.tokenizer)

    def generate(self, prompts: list[str], params: SamplingParams, generator: torch.Generator,
                 batch_size: int) -> list[str]:
        self.model.set_adapter(GENERATOR)
        self.model.eval()
        return [text for start in range(0, len(prompts), batch_size)
                for text in sample_completions(self.model, self.tokenizer,
                                               prompts[start:start + batch_size], params, generator)]

    def completion_logprobs(self, prompt: str, completions: list[str], stop: str) -> torch.Tensor:
        """Sum of log p(completion + stop | prompt) per completion, under the active adapter.

        All rows share the prompt, so with right padding the LM head only has to
        run on the completion positions, not the whole 262k-wide vocabulary at every token.
        """
        prompt_ids = self.tokenizer(prompt).input_ids
        rows = [self.tokenizer(" " + c + stop, add_special_tokens=False).input_ids
                for c in completions]
        width = len(prompt_ids) + max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        device = input_device(self.model)
        ids = torch.tensor([prompt_ids + r + [pad] * (width - len(prompt_ids) - len(r)) for r in rows],
                           device=device)
        mask = torch.tensor([[1] * (len(prompt_ids) + len(r)) + [0] * (width - len(prompt_ids) - len(r))
                             for r in rows], device=device)
        keep = width - len(prompt_ids) + 1
        logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits[:, :-1]
        # a sharded model's logits come out on its last GPU
        targets, completion_mask = ids[:, len(prompt_ids):].to(logits.device), mask[:, len(prompt_ids):]
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
        return (logp * completion_mask.to(logits.device)).sum(-1)

    def label_logits_and_kl(self, texts: list[str], positions: int, base_cache: dict[str, torch.Tensor]
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's label logits, and the mean KL(base || adapted) of the next-token
        distributions at the ``positions`` prompt positions before the label's, from one forward pass.

        S5 adds the KL to the task loss so the classifier adapter changes what the LLM
        says at the label position without drifting elsewhere: the LLM keeps its general
        ability (measured: WikiText-2 perplexity +37 % without it). The base model's
        distributions do not change while the adapter trains, so each text's are computed
        once and kept in ``base_cache`` (by text) for the later epochs.
        """
        self.model.set_adapter(CLASSIFIER)
        enc = self.classifier.encode(texts)
        logits = self.model(**enc, logits_to_keep=positions + 1).logits
        label_logits = logits[:, -1, self.classifier.label_token_ids]
        adapted = F.log_softmax(logits[:, :-1].float(), -1)
        base = self._base_logprobs(texts, enc, positions, base_cache).to(adapted.device)
        mask = enc.attention_mask[:, -positions - 1:-1].float().to(adapted.device)
        kl = F.kl_div(adapted, base, log_target=True, reduction="none").sum(-1)
        return label_logits, (kl * mask).sum() / mask.sum().clamp(min=1)

    def kl_regularised_forward(self, positions: int, weight: float
                               ) -> Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]:
        """S5's ``forward`` for ``train_classifier``: label logits and ``weight`` x the KL to the
        base model, with a cache of base distributions that lives as long as the function."""
        base_cache: dict[str, torch.Tensor] = {}

        def forward(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            logits, kl = self.label_logits_and_kl(texts, positions, base_cache)
            return logits, weight * kl

        return forward

    @torch.no_grad()
    def _base_logprobs(self, texts: list[str], enc, positions: int, cache: dict[str, torch.Tensor]
                       ) -> torch.Tensor:
        """Base-model log-probabilities at each text's last ``positions`` prompt positions.

        Rows are left-padded, so those positions end each row whatever the batch; kept as
        float16 (a vocabulary-wide row per position adds up: 400 MB for 96 Gemma texts).
        """
        missing = [i for i, text in enumerate(texts) if text not in cache]
        if missing:
            with self.model.disable_adapter():
                logits = self.model(input_ids=enc.input_ids[missing],
                                    attention_mask=enc.attention_mask[missing],
                                    logits_to_keep=positions + 1).logits[:, :-1]
            for i, row in zip(missing, F.log_softmax(logits.float(), -1), strict=True):
                cache[texts[i]] = row.half()
        # renormalised: float16 rounding then shifts the KL by its square, not by itself
        return F.log_softmax(torch.stack([cache[text] for text in texts]).float(), -1)

    def classifier_fingerprint(self) -> str:
        """A digest of what the task-enhanced LLM's outputs depend on, for cached evaluations:
        the base weights, the tokenizer, the prompts and the classifier adapter, which counts
        as absent while it is the identity (LoRA's B starts at zero), so the untrained LLM of
        every seed shares its evaluations."""
        base = model_fingerprint(self.model, skip=lambda name: "lora_" in name)
        state = self.classifier.trainable_state()
        identity = all(not tensor.any() for name, tensor in state.items() if "lora_B" in name)
        adapter = "identity" if identity else {k: tensor_digest(v, sample=None) for k, v in state.items()}
        probe = self.classifier.prompts(["a probe text"]) + [self.generation_prompt(0, ["a demo"])]
        tokenizer = [type(self.tokenizer).__name__, len(self.tokenizer), self.tokenizer(probe).input_ids,
                     self.tokenizer.all_special_tokens]
        return digest([base, adapter, tokenizer, self.classifier.task.model_dump(), self.prompt_format,
                       self.classifier.max_length])

    def language_model(self):
        """The task-enhanced LLM as a plain causal LM, for general-ability evaluation."""
        self.model.set_adapter(CLASSIFIER)
        self.model.eval()
        return self.model

    def save_adapters(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.classifier.save(directory / f"{CLASSIFIER}.safetensors")
        self.generator.save(directory / f"{GENERATOR}.safetensors")

    def load_adapters(self, directory: Path) -> None:
        self.classifier.load(directory / f"{CLASSIFIER}.safetensors")
        self.generator.load(directory / f"{GENERATOR}.safetensors")
