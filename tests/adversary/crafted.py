"""A coordinator's crafted global: finite, within a modest bound, and overflowing only on some records.

The coordinator knows the public base model, so it can aim a LoRA adapter at one token. The first
layer's attention projection reads each position's normalised embedding alone: in a Llama-style
model ``RMSNorm(embed[token])`` (no position: rotary embeddings touch only q and k), in GPT-2
``LayerNorm(wte[token] + wpe[position])``. The crafted adapter is zero except on that projection:
every row of ``lora_A`` points along the trigger token's normalised input ``u`` (averaged over
positions for GPT-2) and ``lora_B`` writes the result into one value channel, so

    v[channel] = base + scaling * r * a * b * (u . x)

is largest where the input is the trigger token's and smaller for every other token, at every
position (their inputs are not parallel to ``u``: the ratio is ``margin``). ``b`` puts the
trigger above fp16's largest finite value (65504) and every other input below it, at the
geometric mean of the two. In an fp16 model the trigger's value rounds to inf, attention spreads
it (``0 * inf`` is NaN) and that record's loss and per-example gradient are NaN, while every
record without the trigger stays finite. Without the owner's zeroing of non-finite per-example
gradients, whether the released update is finite then says whether a sampled record held the
trigger. In bf16 and fp32 (largest value ~3.4e38) this construction does not overflow within
``|v| <= 100``.

Used by ``test_nonfinite_oracle.py`` and the transcript suite (``import crafted`` from a test in
``tests/adversary/``: pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedveil.core.layout import AdapterLayout
from fedveil.task.model import ModelConfig, get_adapter, load_lora_model, load_tokenizer

FP16_MAX = float(torch.finfo(torch.float16).max)
TRIGGER = "~"  # one byte-level token that the demo data (task/demo_data.py) never holds


@dataclass(frozen=True)
class Crafted:
    """A crafted global, what trips it, and how close to the edge it is."""

    vector: np.ndarray  # the flat float32 global, in the owner's layout order
    trigger_text: str  # a record holding this text overflows the forward pass in fp16
    trigger_id: int  # the token aimed at
    margin: float  # trigger's value / largest other token's value (> 1: only the trigger overflows)
    max_abs: float  # max |v| of the vector: the bound an owner's global check must allow

    def record(self, text: str = "Q: what is this?") -> dict[str, str]:
        """A demo-style JSONL record that holds the trigger (the ``D'`` record)."""
        return {"prompt": f"{text} {self.trigger_text}", "completion": " yes"}


def overflowing_global(model_path: str | Path, trigger_text: str = TRIGGER, bound: float = 100.0,
                       seed: int = 0) -> Crafted:
    """The adapter that overflows, in an fp16 copy of the tiny Llama or GPT-2 model at
    ``model_path`` (default LoRA settings), exactly on records holding ``trigger_text`` (its first
    token); every value within ``bound``. The owner's model must use ``model.dtype=fp16``.

    ``seed`` is the LoRA seed of the owner's model: the layout (names, order) must be the owner's.
    """
    model = load_lora_model(ModelConfig(path=str(model_path), dtype="fp16"), seed=seed)
    tokenizer = load_tokenizer(model_path)
    ids = tokenizer(trigger_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{trigger_text!r} encodes to no token")
    trigger = ids[0]
    x, target, channel = _first_layer_inputs(model)  # x: (tokens, positions, hidden)
    u = x[trigger].mean(dim=0)
    u = u / u.norm()
    projections = x @ u  # u . x for every token at every position
    others = torch.cat([projections[:trigger], projections[trigger + 1:]])
    margin = float(projections[trigger].min() / others.max())
    if not margin > 1.0:
        raise ValueError(f"token {trigger} cannot be singled out in the first layer (margin {margin:.3g})")
    # the trigger at FP16_MAX * sqrt(margin) or more, every other input at FP16_MAX / sqrt(margin) or less
    target_gain = FP16_MAX * margin ** 0.5 / float(projections[trigger].min())
    layer = next(m for name, m in model.named_modules() if name.endswith(target))
    rank, scaling = layer.r["default"], layer.scaling["default"]
    a = bound / float(u.abs().max())  # lora_A's rows: a * u, its largest entry at the bound
    b = target_gain / (scaling * rank * a)  # lora_B's one channel: b in every column
    if not b <= bound:
        raise ValueError(f"the crafted global needs |v| up to {b:.3g}, above {bound}: raise the bound")
    tensors = {name: np.zeros_like(t) for name, t in get_adapter(model).items()}
    prefix = next(name for name in tensors if f"{target}.lora_A" in name).split(".lora_")[0]
    tensors[f"{prefix}.lora_A.weight"][:] = np.clip((a * u).numpy(), -bound, bound)  # float32 rounding
    tensors[f"{prefix}.lora_B.weight"][channel, :] = b
    vector = AdapterLayout.of(tensors).flatten(tensors)
    return Crafted(vector=vector, trigger_text=trigger_text, trigger_id=trigger, margin=margin,
                   max_abs=float(np.abs(vector).max()))


def _first_layer_inputs(model) -> tuple[torch.Tensor, str, int]:
    """Every (token, position) input of the first layer's attention projection, the projection's
    module name, and the output channel of its first value dimension."""
    base = model.get_base_model()
    with torch.no_grad():
        if base.config.model_type == "gpt2":
            tr = base.transformer
            summed = tr.wte.weight.float()[:, None, :] + tr.wpe.weight.float()[None, :, :]
            x = torch.nn.functional.layer_norm(summed, (summed.shape[-1],), tr.h[0].ln_1.weight.float(),
                                               tr.h[0].ln_1.bias.float(), tr.h[0].ln_1.eps)
            return x, "h.0.attn.c_attn", 2 * base.config.n_embd  # c_attn's output is q | k | v
        if base.config.model_type == "llama":
            inner = base.model
            return inner.layers[0].input_layernorm(inner.embed_tokens.weight).float()[:, None, :],\
                "layers.0.self_attn.v_proj", 0
    raise ValueError(f"no crafted global for model_type {base.config.model_type!r}: use a tiny gpt2 or llama")
