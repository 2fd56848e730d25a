"""A coordinator's crafted global: finite, within a modest bound, and overflowing only on some records.

The coordinator knows the public base model, so it can aim a LoRA adapter at one token. Layer 0's
``v_proj`` of a Llama-style model reads ``RMSNorm(embedding)`` of each token alone (no position:
rotary embeddings touch only q and k), so its output at a position depends on that position's
token only. The crafted adapter is zero except there: every row of ``lora_A`` points along the
trigger token's normalised embedding ``u`` and ``lora_B`` writes the result into one channel, so

    v[channel] = base + scaling * r * a * b * (u . x_token)

is largest for the trigger token and smaller for every other one (their embeddings are not
parallel). ``b`` is set so that the trigger lands above fp16's largest finite value (65504) and
every other token below it, at the geometric mean of the two. In an fp16 model the trigger's
value rounds to inf, attention spreads it (``0 * inf`` is NaN) and the record's loss and
per-example gradient are NaN, while every record without the trigger stays finite. Without the
owner's zeroing of non-finite per-example gradients, whether the released update is finite
then says whether a sampled record held the trigger.

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
TARGET_MODULE = "layers.0.self_attn.v_proj"


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
    """The adapter that overflows, in an fp16 copy of the Llama model at ``model_path``, exactly on
    records holding ``trigger_text`` (its first token); every value within ``bound``.

    ``seed`` is the LoRA seed of the owner's model: the layout (names, order) must be the owner's.
    """
    model = load_lora_model(ModelConfig(path=str(model_path), dtype="fp16"), seed=seed)
    tokenizer = load_tokenizer(model_path)
    ids = tokenizer(trigger_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{trigger_text!r} encodes to no token")
    trigger = ids[0]
    base = model.get_base_model().model
    with torch.no_grad():
        x = base.layers[0].input_layernorm(base.embed_tokens.weight).float()  # each token's input to v_proj
    u = x[trigger] / x[trigger].norm()
    projections = x @ u  # u . x for every token
    others = torch.cat([projections[:trigger], projections[trigger + 1:]])
    margin = float(projections[trigger] / others.max())
    if not margin > 1.0:
        raise ValueError(f"token {trigger} cannot be singled out in layer 0 (margin {margin:.3g})")
    # the trigger at FP16_MAX * sqrt(margin), the largest other at FP16_MAX / sqrt(margin)
    target = FP16_MAX * margin ** 0.5 / float(projections[trigger])
    layer = next(m for name, m in model.named_modules() if name.endswith(TARGET_MODULE))
    rank, scaling = layer.r["default"], layer.scaling["default"]
    a = bound / float(u.abs().max())  # lora_A's rows: a * u, its largest entry at the bound
    b = target / (scaling * rank * a)  # lora_B's one channel: b in every column
    if not b <= bound:
        raise ValueError(f"the crafted global needs |v| up to {b:.3g}, above {bound}: raise the bound")
    tensors = {name: np.zeros_like(t) for name, t in get_adapter(model).items()}
    prefix = next(name for name in tensors if TARGET_MODULE in name).split(".lora_")[0]
    tensors[f"{prefix}.lora_A.weight"][:] = (a * u).numpy()
    tensors[f"{prefix}.lora_B.weight"][0, :] = b  # channel 0 of v
    vector = AdapterLayout.of(tensors).flatten(tensors)
    return Crafted(vector=vector, trigger_text=trigger_text, trigger_id=trigger, margin=margin,
                   max_abs=float(np.abs(vector).max()))
