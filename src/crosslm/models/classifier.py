"""Text classifiers behind one interface: label logits for a batch of texts.

Two kinds serve as client SLMs, and the second also serves as the server LLM's
task head:

- ``EncoderClassifier``: an encoder, mean pooling, a linear head (all trained).
- ``VerbalizerClassifier``: a causal LM (with LoRA) reading the task's
  classification prompt; the logits of each label's verbalizer token at the
  next position are the label logits.

Only label distributions leave a classifier, so clients of different families
and tokenizers cooperate without any token alignment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from crosslm.errors import CrossLMError
from crosslm.models.devices import choose_dtype, detect_hardware, input_device
from crosslm.models.prompts import PromptFormat, classify_prompt
from crosslm.tasks.spec import TaskSpec

# PEFT is imported where LoRA is used: importing it costs about 2 s of CPU, which every Flower
# ClientApp process (one per message) of an encoder silo would pay for nothing.
if TYPE_CHECKING:
    from peft import LoraConfig

LoraTargets = list[str] | str | None  # module names, "all-linear", or None: PEFT's default


class TextClassifier(nn.Module):
    """Maps texts to label logits; subclasses define the model and what is trained and saved."""

    num_labels: int

    def label_logits(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The tensors training changes: what is saved, restored and reloaded."""
        raise NotImplementedError

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def dp_parameters(self) -> list[nn.Parameter]:
        """What DP-SGD trains (crosslm.privacy.dp_training): as few coordinates as learn the task,
        since the noise grows with their number and the clipped signal does not."""
        return self.trainable_parameters()

    def frozen_features(self) -> AbstractContextManager[None]:
        """A context for training ``dp_parameters`` alone, in which what they read may be computed
        once per text and reused every epoch; by default nothing is cached."""
        return nullcontext()

    def save(self, path: Path) -> None:
        state = {k: v.detach().contiguous() for k, v in self.trainable_state().items()}
        save_file(state, str(path))

    def load(self, path: Path) -> None:
        self.load_trainable_state(load_file(str(path)))

    def pooled(self, texts: list[str]) -> torch.Tensor:
        """One vector per text: what the label logits are computed from."""
        raise NotImplementedError

    @torch.inference_mode()
    def predict_proba(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Label distributions in the order of ``texts``."""
        return self._in_length_order(texts, batch_size, self.num_labels,
                                     lambda batch: torch.softmax(self.label_logits(batch).float(), dim=-1))

    def pretrained_pooled(self, texts: list[str]) -> torch.Tensor:
        """``pooled`` under the SLM's pre-trained weights, whatever training changed since."""
        raise NotImplementedError

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Unit-length sentence embeddings in the order of ``texts``: the realism votes' space.

        The pre-trained weights' space, not the trained one: training turns the pooled
        vector into a label feature, in which a synthetic text is near a private one when
        both carry the same label, however unlike the private data it reads.
        """
        return self._in_length_order(texts, batch_size, 0,
                                     lambda batch: F.normalize(self.pretrained_pooled(batch).float(), dim=-1))

    def _in_length_order(self, texts: list[str], batch_size: int, empty_width: int, compute) -> torch.Tensor:
        """``compute`` on batches of texts of similar length, rows returned in input order
        (``[0, empty_width]`` for no texts).

        Every text in a batch is padded to its longest: in input order a third of
        SST-2's tokens were padding.
        """
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows: torch.Tensor | None = None
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            values = compute([texts[i] for i in chosen]).cpu()
            if rows is None:
                rows = torch.empty(len(texts), values.shape[-1])
            rows[chosen] = values
        return rows if rows is not None else torch.empty(0, empty_width)


class EncoderClassifier(TextClassifier):
    """Sentence encoder + mean pooling + linear head, fine-tuned end to end."""

    def __init__(self, encoder: nn.Module, tokenizer, num_labels: int, max_length: int = 128,
                 pretrained: Callable[[], nn.Module] | None = None,
                 compute_dtype: torch.dtype = torch.float32):
        """``pretrained``: returns the encoder as loaded, never trained (the realism votes' space);
        loaded only when asked for, since most runs never vote. ``compute_dtype`` bfloat16: the
        encoder's matrix products run under autocast (weights, head and loss stay float32): its
        evaluation about 2x faster on a CPU with AMX (docs/performance.md)."""
        super().__init__()
        self.encoder, self.tokenizer, self.num_labels = encoder, tokenizer, num_labels
        self._pretrained = pretrained
        self.max_length = max_length
        self.compute_dtype = compute_dtype
        self.head = nn.Linear(encoder.config.hidden_size, num_labels).to(input_device(encoder))
        self._features: dict[str, torch.Tensor] | None = None  # text -> pooled, in frozen_features

    def label_logits(self, texts: list[str]) -> torch.Tensor:
        return self.head(self.pooled(texts) if self._features is None else self._cached_pooled(texts))

    @contextmanager
    def frozen_features(self) -> Iterator[None]:
        """While the head alone trains (DP-SGD, the public pass), each text's pooled vector is
        computed once, in eval mode, and reused: round 0's 20 DP epochs encode every record once."""
        if any(p.requires_grad for p in self.encoder.parameters()):
            raise CrossLMError("frozen_features: the encoder still trains, so its features change")
        self._features = {}
        try:
            yield
        finally:
            self._features = None

    def _cached_pooled(self, texts: list[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self._features))
        if missing:
            training = self.training
            self.eval()
            with torch.no_grad():
                for start in range(0, len(missing), 64):
                    batch = missing[start:start + 64]
                    self._features.update(zip(batch, self.pooled(batch), strict=True))
            self.train(training)
        return torch.stack([self._features[t] for t in texts])

    def pooled(self, texts: list[str]) -> torch.Tensor:
        """The mean of the last hidden states over each text's tokens."""
        return self._mean_pooled(self.encoder, texts)

    def pretrained_pooled(self, texts: list[str]) -> torch.Tensor:
        if self._pretrained is None:
            raise CrossLMError("this classifier was built without its pre-trained encoder")
        return self._mean_pooled(self._pretrained(), texts)

    def _mean_pooled(self, encoder: nn.Module, texts: list[str]) -> torch.Tensor:
        device = input_device(encoder)
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                             max_length=self.max_length).to(device)
        mixed = self.compute_dtype != torch.float32
        with torch.autocast(device.type, dtype=self.compute_dtype, enabled=mixed):
            hidden = encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
        hidden = hidden.float()
        mask = enc.attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.state_dict()

    def dp_parameters(self) -> list[nn.Parameter]:
        """The head only: a linear probe on the frozen encoder (770 coordinates for MiniLM on two
        labels, against 11M in its layers)."""
        return list(self.head.parameters())

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)


def verbalizer_token_ids(tokenizer, task: TaskSpec) -> list[int]:
    """The first token of each verbalizer; they must differ or the labels cannot be told apart."""
    ids = [tokenizer(v, add_special_tokens=False).input_ids[0] for v in task.verbalizers]
    if len(set(ids)) != len(ids):
        raise CrossLMError(
            f"task '{task.name}': verbalizers {task.verbalizers} share a first token with this "
            "tokenizer; choose verbalizer words that start differently"
        )
    return ids


def lora_targets(model: nn.Module, setting: LoraTargets, section: str) -> list[str] | str:
    """The modules LoRA adapts: the setting, else PEFT's default for the model's architecture.

    ``section`` is the config section the error names (server or clients).
    """
    if setting is not None:
        return setting
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = model.config.model_type
    default = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if default is None:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, nn.Linear | Conv1D)})
        raise CrossLMError(
            f"PEFT has no default LoRA target modules for the '{model_type}' architecture "
            f"({type(model).__name__}): set {section}.lora_target_modules to a list of its module "
            f"names (its linear layers: {', '.join(linear)}) or to all-linear")
    return list(default)


def lora_config(rank: int, target_modules: list[str] | str) -> LoraConfig:
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                      target_modules=target_modules, task_type="CAUSAL_LM")


def with_lora(model: nn.Module, rank: int, setting: LoraTargets, section: str, adapter: str = "default"):
    """``model`` wrapped by PEFT with one LoRA adapter; a bad target list is a clear error."""
    from peft import get_peft_model

    targets = lora_targets(model, setting, section)
    try:
        return get_peft_model(model, lora_config(rank, targets), adapter_name=adapter)
    except ValueError as err:  # PEFT: "Target modules {...} not found in the base model"
        raise CrossLMError(f"{section}.lora_target_modules {targets!r} cannot adapt "
                           f"{type(model).__name__}: {err}") from None


class LoraAdapter:
    """One named LoRA adapter of a PEFT model: the weights to train, save and restore."""

    def __init__(self, model: nn.Module, name: str):
        self.model, self.name = model, name

    def parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if f".{self.name}." in n]

    def state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.model, adapter_name=self.name)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, state, adapter_name=self.name)

    def save(self, path: Path) -> None:
        save_file({k: v.detach().contiguous() for k, v in self.state().items()}, str(path))

    def load(self, path: Path) -> None:
        self.load_state(load_file(str(path)))


class VerbalizerClassifier(TextClassifier):
    """A causal LM with a LoRA adapter, scored by verbalizer tokens after the task prompt.

    ``model`` is a PEFT model; ``adapter`` names the adapter this classifier trains
    (the server's LLM carries a second one for generation).
    """

    def __init__(self, model: nn.Module, tokenizer, task: TaskSpec, adapter: str = "default",
                 max_length: int = 256, prompt_format: PromptFormat = "completion"):
        super().__init__()
        self.model, self.tokenizer, self.task, self.adapter = model, tokenizer, task, adapter
        self.prompt_format = prompt_format
        self.lora = LoraAdapter(model, adapter)
        self.num_labels = task.num_labels
        self.max_length = max_length
        self.label_token_ids = verbalizer_token_ids(tokenizer, task)

    def label_logits(self, texts: list[str]) -> torch.Tensor:
        self.model.set_adapter(self.adapter)
        enc = self.encode(texts)
        out = self.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                         logits_to_keep=1)
        return out.logits[:, -1, self.label_token_ids]

    def pooled(self, texts: list[str]) -> torch.Tensor:
        """The last layer's hidden state where the label is predicted (the prompt's last token)."""
        self.model.set_adapter(self.adapter)
        enc = self.encode(texts)
        out = self.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                         logits_to_keep=1, output_hidden_states=True)
        return out.hidden_states[-1][:, -1]

    def pretrained_pooled(self, texts: list[str]) -> torch.Tensor:
        with self.model.disable_adapter():
            return self.pooled(texts)

    def encode(self, texts: list[str]):
        """The classification prompts, tokenised and left-padded, on the model's input device."""
        return self.tokenizer(self.prompts(texts), return_tensors="pt", padding=True, truncation=True,
                              max_length=self.max_length).to(input_device(self.model))

    def prompts(self, texts: list[str]) -> list[str]:
        """The classification prompt of each text, in this classifier's prompt format."""
        return [classify_prompt(self.task, t, self.prompt_format, self.tokenizer) for t in texts]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.lora.state()

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.lora.load_state(state)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Only this adapter's weights: training must not touch another adapter."""
        return self.lora.parameters()


def build_classifier(model_name: str, task: TaskSpec, lora_rank: int, seed: int, dtype: str = "auto",
                     *, device: str = "cpu", lora_target_modules: LoraTargets = None) -> TextClassifier:
    """A fresh client SLM: encoder + head, or causal LM + LoRA scored by verbalizers. ``dtype``: the
    causal LM's weights; an encoder keeps float32 weights and computes in ``dtype`` (autocast)."""
    from crosslm.models.loading import frozen_encoder, load_causal_lm, load_encoder, model_kind

    torch.manual_seed(seed)  # the new head / LoRA weights
    if model_kind(model_name) == "encoder":
        encoder, tokenizer = load_encoder(model_name, device)
        compute_dtype = choose_dtype(dtype, input_device(encoder).type, detect_hardware())
        return EncoderClassifier(encoder, tokenizer, task.num_labels, compute_dtype=compute_dtype,
                                 pretrained=partial(frozen_encoder, model_name, device))
    model, tokenizer = load_causal_lm(model_name, dtype, device)
    return VerbalizerClassifier(with_lora(model, lora_rank, lora_target_modules, "clients"), tokenizer, task)
