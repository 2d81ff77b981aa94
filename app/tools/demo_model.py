"""Writes the demo models: a tiny Llama with random weights and its own tokenizer, a
tiny BERT embedding model (random weights, its own WordPiece tokenizer, mean pooling),
and a LoRA adapter for the Llama.

The whole service path (upload, queue, vLLM static batches, results) runs on a
laptop CPU with them; a real model is a setting away. The output is deterministic:
the same seed gives the same weights and tokenizers, byte for byte.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

from app.core.settings import DEMO_EMBEDDING_MODEL_PATH, DEMO_LORA_PATH, DEMO_MODEL_PATH

DEFAULT_OUTPUT = DEMO_MODEL_PATH
DEFAULT_EMBEDDING_OUTPUT = DEMO_EMBEDDING_MODEL_PATH
DEFAULT_LORA_OUTPUT = DEMO_LORA_PATH
DEFAULT_LONG_TAIL_OUTPUT = DEMO_MODEL_PATH.with_name("demo-llama-long-tail")
# The long-tail variant: after any of STOP_TOKENS tokens (picked with LONG_TAIL_SEED) its
# next token is the end of the answer. Greedy answers then end anywhere from a few tokens
# to never (measured: 256 chat prompts at max_tokens 1,024: median 18 tokens, mean 65, the
# 90th percentile 116, 5 run to 1,024), as answers of a real model do.
LONG_TAIL_SEED = 99
STOP_TOKENS = 90
STOP_MARK = 1.0  # the stop tokens' embeddings carry this in dimension 0 (others are ~0.02)
STOP_LOGIT_WEIGHT = 0.3  # the end token's logit is this times the final hidden state's dimension 0
LORA_SEED = 4321
LORA_RANK = 8
LORA_ALPHA = 16
LORA_TARGETS = ("q_proj", "v_proj")
LORA_WEIGHT_STD = 0.1  # large beside the base's 0.02, so the adapter changes what greedy decoding picks
SEED = 1234
VOCAB_SIZE = 2048
HIDDEN_SIZE = 128
INTERMEDIATE_SIZE = 256
NUM_LAYERS = 2
NUM_HEADS = 2  # head dim 64, a size the CPU attention kernels support
MAX_POSITIONS = 2048
EMBEDDING_MAX_POSITIONS = 512

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

# Llama-3's template, shortened: header tokens around each role, <|eot_id|> after each turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def _training_corpus() -> list[str]:
    """A fixed English corpus, so the tokenizer is the same on every machine."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import this  # the Zen of Python, shipped with every interpreter; it prints on import
    zen = "".join(this.d.get(c, c) for c in this.s)
    words = [
        "the",
        "a",
        "an",
        "of",
        "to",
        "in",
        "is",
        "was",
        "for",
        "on",
        "that",
        "with",
        "as",
        "by",
        "at",
        "from",
        "it",
        "be",
        "this",
        "are",
        "or",
        "have",
        "not",
        "batch",
        "model",
        "token",
        "prompt",
        "answer",
        "question",
        "summary",
        "document",
        "evaluation",
        "synthetic",
        "data",
        "throughput",
        "latency",
        "static",
        "continuous",
        "engine",
        "worker",
        "queue",
        "job",
        "file",
        "result",
        "error",
        "line",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "hundred",
        "thousand",
        "million",
        "what",
        "why",
        "how",
        "when",
        "where",
        "who",
        "which",
        "write",
        "explain",
        "list",
        "describe",
        "translate",
        "compare",
    ]
    lines = zen.splitlines()
    for i in range(4000):
        lines.append(" ".join(words[(i * 7 + k * 13) % len(words)] for k in range(12)))
    return lines


def build_tokenizer(output: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = MAX_POSITIONS
    fast.save_pretrained(str(output))


def build_model(output: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=0,
        eos_token_id=4,
        pad_token_id=1,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)  # float32, the dtype the CPU engine runs best
    model.save_pretrained(str(output), safe_serialization=True)


def build_long_tail_model(base: Path, output: Path) -> None:
    """The demo Llama with an end-of-sequence bias: the lengths of its answers are the
    model's to decide, most short and some to max_tokens, unknown to the service before
    they run (the long-tail benchmark's model)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    shutil.copytree(base, output, dirs_exist_ok=True)
    (output / "demo-model.json").unlink()
    tensors = load_file(str(base / "model.safetensors"))
    stops = np.random.default_rng(LONG_TAIL_SEED).choice(np.arange(len(SPECIAL_TOKENS), VOCAB_SIZE), STOP_TOKENS, False)
    embeddings = tensors["model.embed_tokens.weight"].copy()
    embeddings[stops, 0] = STOP_MARK
    head = tensors["lm_head.weight"].copy()
    end = SPECIAL_TOKENS.index("<|eot_id|>")
    head[end, :] = 0.0
    head[end, 0] = STOP_LOGIT_WEIGHT
    tensors["model.embed_tokens.weight"], tensors["lm_head.weight"] = embeddings, head
    save_file(tensors, str(output / "model.safetensors"), metadata={"format": "pt"})


def build_embedding_model(output: Path) -> None:
    """A 2-layer BERT (hidden size 128) with a WordPiece tokenizer trained on the same corpus,
    and sentence-transformers' pooling files (mean pooling, then normalized), which vLLM
    reads. It is not a Matryoshka model: requests naming `dimensions` are refused."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizer

    tokenizer = Tokenizer(models.WordPiece(_wordpiece_vocabulary(), unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = BertTokenizer(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.model_max_length = EMBEDDING_MAX_POSITIONS
    fast.save_pretrained(str(output))

    torch.manual_seed(SEED)
    config = BertConfig(
        vocab_size=len(fast),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        max_position_embeddings=EMBEDDING_MAX_POSITIONS,
        pad_token_id=fast.pad_token_id,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(str(output), safe_serialization=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (output / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (output / "1_Pooling").mkdir()
    pooling = {
        "word_embedding_dimension": HIDDEN_SIZE,
        "pooling_mode_mean_tokens": True,
    }
    (output / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")


def _wordpiece_vocabulary() -> dict[str, int]:
    """Special tokens, every character (alone and as a continuation), then the corpus's words,
    most frequent first. Built here because `tokenizers`' WordPiece trainer orders ties
    differently from run to run."""
    text = "\n".join(_training_corpus()).lower()
    characters = sorted({c for c in text if not c.isspace()})
    words = Counter(re.findall(r"\w+", text))
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *characters, *(f"##{c}" for c in characters)]
    tokens += [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens[:VOCAB_SIZE]))}


def _write_once(output: Path, build: Callable[[Path], None], marker: dict[str, object]) -> Path:
    """Writes a model unless a complete one is already there (its marker file says so)."""
    if (output / "demo-model.json").exists():
        return output
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    build(staging)
    (staging / "demo-model.json").write_text(json.dumps(marker) + "\n")
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)
    return output


def _build_generation_model(output: Path) -> None:
    build_tokenizer(output)
    build_model(output)


def ensure_demo_model(output: Path = DEFAULT_OUTPUT) -> Path:
    """Writes the demo Llama unless a complete one is already there; returns its folder."""
    return _write_once(output, _build_generation_model, {"seed": SEED, "vocab_size": VOCAB_SIZE})


def ensure_demo_long_tail_model(output: Path = DEFAULT_LONG_TAIL_OUTPUT, base: Path = DEFAULT_OUTPUT) -> Path:
    """Writes the long-tail variant of the demo Llama unless it is there; returns its folder."""
    ensure_demo_model(base)
    marker: dict[str, object] = {"seed": SEED, "stop_seed": LONG_TAIL_SEED, "stop_tokens": STOP_TOKENS}
    return _write_once(output, partial(build_long_tail_model, base), marker)


def ensure_demo_embedding_model(output: Path = DEFAULT_EMBEDDING_OUTPUT) -> Path:
    """Writes the demo embedding model unless a complete one is already there; returns its folder."""
    return _write_once(output, build_embedding_model, {"seed": SEED, "architecture": "BertModel"})


def build_lora(output: Path, seed: int = LORA_SEED) -> None:
    """A LoRA adapter for the demo Llama in PEFT's format (`adapter_config.json` and
    `adapter_model.safetensors`): random low-rank A and B for q_proj and v_proj of every
    layer, rank 8. Written by hand with safetensors (PEFT itself is not needed); the same
    seed gives the same bytes."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    head_dim = HIDDEN_SIZE // NUM_HEADS
    out_features = {"q_proj": NUM_HEADS * head_dim, "v_proj": NUM_HEADS * head_dim}
    tensors: dict[str, np.ndarray] = {}
    for layer in range(NUM_LAYERS):
        for target in LORA_TARGETS:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            a = rng.normal(0.0, LORA_WEIGHT_STD, (LORA_RANK, HIDDEN_SIZE))
            b = rng.normal(0.0, LORA_WEIGHT_STD, (out_features[target], LORA_RANK))
            tensors[f"{prefix}.lora_A.weight"] = a.astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = b.astype(np.float32)
    save_file(tensors, str(output / "adapter_model.safetensors"))
    config = {
        "base_model_name_or_path": DEMO_MODEL_PATH.name,
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": LORA_RANK,
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0,
        "target_modules": list(LORA_TARGETS),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
    }
    (output / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def ensure_demo_lora(output: Path = DEFAULT_LORA_OUTPUT, seed: int = LORA_SEED) -> Path:
    """Writes the adapter unless one is already there; returns its folder."""
    marker = output / "demo-lora.json"
    if marker.exists():
        return output
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    build_lora(staging, seed)
    (staging / "demo-lora.json").write_text(json.dumps({"seed": seed, "rank": LORA_RANK}) + "\n")
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Write the small demo models: a Llama and a BERT embedding model (random weights, own "
        "tokenizers), a LoRA adapter for the Llama, and a long-tail variant of the Llama (answers of "
        "model-decided lengths)."
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Llama folder (default: %(default)s)")
    parser.add_argument(
        "--embedding-output",
        type=Path,
        default=DEFAULT_EMBEDDING_OUTPUT,
        help="embedding model folder (default: %(default)s)",
    )
    parser.add_argument(
        "--lora-output", type=Path, default=DEFAULT_LORA_OUTPUT, help="adapter folder (default: %(default)s)"
    )
    parser.add_argument(
        "--long-tail-output",
        type=Path,
        default=DEFAULT_LONG_TAIL_OUTPUT,
        help="the Llama with an end-of-sequence bias, for the long-tail benchmark (default: %(default)s)",
    )
    args = parser.parse_args()
    print(ensure_demo_model(args.output))
    print(ensure_demo_long_tail_model(args.long_tail_output, args.output))
    print(ensure_demo_embedding_model(args.embedding_output))
    print(ensure_demo_lora(args.lora_output))


if __name__ == "__main__":
    main()
