"""Build a tiny causal LM and a byte-level tokenizer from a config, with no download.

The result is saved as an ordinary Hugging Face checkpoint directory, so demos and tests load it
through the same :func:`fedveil.task.model.load_lora_model` path as any real model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from fedveil.task.model import TinySpec

SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>")


def byte_level_tokenizer():
    """A 259-token byte-level tokenizer: every byte is a token, plus pad/bos/eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # lazy: with transformers, below
    from transformers import PreTrainedTokenizerFast  # lazy: prepare.py imports this module; transformers: seconds

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(sorted(alphabet))})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|eos|>"
    )


def tiny_config(spec: TinySpec, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):
    from transformers import GPT2Config, LlamaConfig  # lazy: prepare.py imports this module; transformers: seconds

    common = dict(vocab_size=vocab_size, pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id)
    if spec.arch == "gpt2":
        return GPT2Config(
            n_embd=spec.hidden, n_layer=spec.layers, n_head=spec.heads, n_positions=spec.max_positions,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common,
        )
    return LlamaConfig(
        hidden_size=spec.hidden, intermediate_size=spec.hidden * 4, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_positions, tie_word_embeddings=False, **common,
    )


def build_tiny_model(spec: TinySpec, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny randomly initialised checkpoint to ``out_dir`` (deterministic in ``seed``).

    An existing directory built from the same spec and seed is reused as it is.
    """
    from transformers import AutoModelForCausalLM  # lazy: prepare.py imports this module; transformers: seconds

    out = Path(out_dir)
    stamp = json.dumps({"spec": spec.__dict__, "seed": seed}, sort_keys=True)
    if (out / "fedveil_tiny.json").is_file() and (out / "fedveil_tiny.json").read_text() == stamp:
        return out.resolve()
    tok = byte_level_tokenizer()
    cfg = tiny_config(spec, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "fedveil_tiny.json").write_text(stamp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out.resolve()
