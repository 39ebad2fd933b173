"""Tiny, randomly initialised models saved like real checkpoints, for fast offline tests.

Both models come with a tokenizer trained in the test session with the ``tokenizers``
library, so nothing is downloaded. The project loads them by local directory through
``crosslm.models.loading`` exactly as it loads a real model.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import torch
import yaml
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    PreTrainedTokenizerFast,
)

from crosslm.tasks.spec import BUILTIN_DIR

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SEED = 1234
LINES_PER_TASK = 1500
CAUSAL_VOCAB = 1000
ENCODER_VOCAB = 1000
# Each verbalizer and item prefix is repeated so BPE learns it as a whole word.
TASK_WORD_REPEATS = 300

# Used instead of the shared data when it is absent; the task YAMLs add more text.
FALLBACK_LINES = [
    "a gripping , beautifully shot drama with a terrific lead performance .",
    "the plot is thin and the dialogue is painfully slow .",
    "an uneven but often funny comedy about growing up .",
    "nothing in this film works , from the script to the score .",
    "the best animated feature of the year , full of wit and warmth .",
    "a forgettable thriller that runs out of ideas halfway through .",
    "Oil prices rise as supply fears grow Crude futures climbed on Monday after an outage.",
    "Team wins title on final day The club clinched the league with a 3-0 victory on Sunday.",
    "Tech firm unveils new phone The company showed a faster handset with a bigger screen.",
    "Prime minister visits border region The leader met troops and local officials on Friday.",
    "Stocks close higher on earnings Shares rose after several banks reported strong results.",
    "Researchers map distant galaxy Astronomers used a new telescope to chart the stars.",
    "What is the population of Canada ?",
    "Who wrote the novel Moby Dick ?",
    "Where is Mount Everest located ?",
    "How many days are there in a leap year ?",
    "What does CPU stand for ?",
    "Why is the sky blue ?",
    "What is the largest mammal on earth ?",
    "When was the telephone invented ?",
]


def builtin_task_texts() -> tuple[list[str], list[str]]:
    """(the prompt-side text of the built-in tasks, one "<item prefix><verbalizers>" line each)."""
    texts: list[str] = []
    task_words: list[str] = []
    for path in sorted(Path(str(BUILTIN_DIR)).glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        texts.append(raw["classify_template"].replace("{text}", "placeholder text"))
        texts.extend(raw["generate_instruction"].values())
        texts.extend(seed for seeds in raw["seeds"].values() for seed in seeds)
        texts.extend(raw["labels"])
        task_words.append(raw["item_prefix"] + "".join(raw["verbalizers"]))
    return texts, task_words


def training_corpus(shared_data: Path | None = SHARED_DATA) -> list[str]:
    """A few thousand lines of real task text when the shared data exists, else a fallback."""
    lines: list[str] = []
    if shared_data is not None and shared_data.is_dir():
        for task in ("sst2", "ag_news", "trec"):
            path = shared_data / task / "train.jsonl"
            if path.is_file():
                with path.open(encoding="utf-8") as handle:
                    head = itertools.islice(handle, LINES_PER_TASK)
                    lines += [json.loads(line)["text"] for line in head]
    if not lines:
        lines = list(FALLBACK_LINES)
    texts, task_words = builtin_task_texts()
    lines += texts
    # Repeated ("Review: negative positive") so each verbalizer merges with its leading space.
    lines += task_words * TASK_WORD_REPEATS
    return lines


def train_causal_tokenizer(
    corpus: list[str], vocab_size: int = CAUSAL_VOCAB
) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Gemma's special tokens and ids: pad 0, eos 1, bos 2, unk 3."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, "\n" included
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    # Like Gemma: a <bos> in front of every encoded text.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)]
    )
    assert [tokenizer.token_to_id(t) for t in specials] == [0, 1, 2, 3]
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def train_encoder_tokenizer(
    corpus: list[str], vocab_size: int = ENCODER_VOCAB
) -> BertTokenizerFast:
    """An uncased WordPiece tokenizer with BERT's special tokens.

    The vocabulary is every character (alone and as a ``##`` continuation) plus the corpus's
    most frequent words, ties broken alphabetically. ``trainers.WordPieceTrainer`` is not
    used: it picks a different vocabulary from run to run on ties (tokenizers 0.23).
    """
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = Counter(
        word
        for line in corpus
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))
    )
    chars = sorted({ch for word in counts for ch in word})
    vocab = specials + chars + [f"##{ch}" for ch in chars]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    vocab += words[: max(0, vocab_size - len(vocab))]
    tokenizer = Tokenizer(
        models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]")
    )
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    return BertTokenizerFast(
        tokenizer_object=tokenizer,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
    )


def build_tiny_causal_lm(directory: Path, corpus: list[str] | None = None) -> Path:
    """A 2-layer Gemma 3 causal LM (q/k/v/o_proj like the real one) and its tokenizer."""
    tokenizer = train_causal_tokenizer(training_corpus() if corpus is None else corpus)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        max_position_embeddings=2048,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(SEED)
    model = Gemma3ForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_encoder(directory: Path, corpus: list[str] | None = None) -> Path:
    """A 2-layer BERT encoder (hidden 32) and its WordPiece tokenizer."""
    tokenizer = train_encoder_tokenizer(training_corpus() if corpus is None else corpus)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SEED)
    model = BertModel(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
