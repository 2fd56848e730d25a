"""LLM fine-tuning on an owner's GPU: a Qwen2-0.5B-sized model built from a config (no download),
with and without DP-SGD, in bf16 and 4-bit (QLoRA-style): tokens/s, peak GPU memory, DP/non-DP ratios.

    .venv/bin/python -m fedveil.experiments.bench_gpu [--steps 10] [--batch 8] [--seq 256] [--modes bf16,4bit]
                                                      [--gradient-checkpointing]

Run it wherever a GPU is available; nothing requires one (without CUDA it says so and exits 2;
``--size tiny --device cpu --modes bf16`` is a smoke run of the same code on a CPU). 4-bit needs
the ``gpu`` extra (bitsandbytes). Each variant runs in its own process (``bench_dp.run_child``), so
peak memory is its own; the DP variant uses Opacus' ``hooks`` mode and fedveil's CSPRNG noise.
``--gradient-checkpointing`` runs every variant with ``model.gradient_checkpointing=true``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from fedveil.core.console import quiet_libraries
from fedveil.experiments.bench_dp import run_child
from fedveil.task.tiny import byte_level_tokenizer
from transformers import AutoModelForCausalLM, Qwen2Config

# Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads / 2 KV heads, MLP 4864, vocab 151,936).
SIZES = {
    "qwen2-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864, vocab_size=151936, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, max_position_embeddings=512),
}
MODES = {"fp32": ("fp32", "none"), "bf16": ("bf16", "none"), "4bit": ("bf16", "4bit"), "8bit": ("bf16", "8bit")}


def build(size: str, out: Path) -> Path:
    """A randomly initialised Qwen2 of that shape, saved as a local checkpoint with a tokenizer."""


    torch.manual_seed(0)
    config = Qwen2Config(**SIZES[size], tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    byte_level_tokenizer().save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="qwen2-0.5b", choices=sorted(SIZES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--modes", default="bf16,4bit", help=f"comma-separated, of {sorted(MODES)}")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="model.gradient_checkpointing=true")
    args = parser.parse_args()



    quiet_libraries()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: error: no CUDA device here; run it on a GPU machine "
              "(or --size tiny --device cpu --modes bf16 for a CPU smoke run)", file=sys.stderr)
        raise SystemExit(2)
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = build(args.size, Path(tmp) / args.size)
        print(f"{args.size} on {card}: batch {args.batch} x seq {args.seq}, {args.steps} timed steps"
              + (", gradient checkpointing" if args.gradient_checkpointing else ""))
        for mode in args.modes.split(","):
            dtype, quantization = MODES[mode]
            runs = {}
            for variant in ("nodp", "hooks"):
                spec = dict(model_dir=str(path), variant=variant, steps=args.steps, batch=args.batch, seq=args.seq,
                            device=args.device, dtype=dtype, quantization=quantization,
                            gradient_checkpointing=args.gradient_checkpointing)
                try:
                    runs[variant] = run_child(spec)
                except Exception as exc:  # e.g. 4-bit without bitsandbytes: report, go on
                    why = (getattr(exc, "stderr", "") or str(exc)).strip().splitlines() or ["?"]
                    print(f"  {mode} {variant}: failed ({why[-1][:300]})")
            if len(runs) < 2:
                continue
            nodp, dp = runs["nodp"], runs["hooks"]
            results[mode] = {
                "tokens_per_second": nodp["tokens_per_second"],
                "dp_tokens_per_second": dp["tokens_per_second"],
                "peak_gib": nodp["peak_bytes"] / 2**30,
                "dp_peak_gib": dp["peak_bytes"] / 2**30,
                "dp_time_ratio": dp["seconds_per_step"] / nodp["seconds_per_step"],
                "dp_memory_ratio": dp["peak_bytes"] / nodp["peak_bytes"],
            }
            r = results[mode]
            print(f"  {mode}: non-DP {r['tokens_per_second']:.0f} tok/s, peak {r['peak_gib']:.2f} GiB | "
                  f"DP-SGD {r['dp_tokens_per_second']:.0f} tok/s, peak {r['dp_peak_gib']:.2f} GiB | "
                  f"DP/non-DP time x{r['dp_time_ratio']:.3f}, memory x{r['dp_memory_ratio']:.3f}")
    print(
        json.dumps({"card": card, "size": args.size, "gradient_checkpointing": args.gradient_checkpointing, **results})
    )


if __name__ == "__main__":
    main()
