"""DP-SGD cost with LoRA: step time and peak memory of DP over non-DP, same batch.

    .venv/bin/python -m fedveil.experiments.bench_dp [--steps 20] [--models tiny,mid] [--device cpu]

For each model it times ``--steps`` optimizer steps (after warm-up) of plain training and of
Opacus DP-SGD (``hooks``, and ``functorch`` for comparison) on the same fixed batches, each variant in
its own subprocess so peak memory (max RSS on CPU, max allocated on CUDA) is its own. It prints
the ratios DP / non-DP; interleaving repeats and taking medians keeps machine noise out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from fedveil.core.console import quiet_libraries
from fedveil.privacy.dp.sgd import SampleLevelDPConfig, private_training
from fedveil.task.model import ModelConfig, TinySpec, load_lora_model
from fedveil.task.tiny import build_tiny_model
from fedveil.task.train import TrainConfig, make_optimizer, per_example_loss

MODELS = {
    "tiny": dict(arch="gpt2", hidden=64, layers=2, heads=4, seq=64),
    "mid": dict(arch="gpt2", hidden=512, layers=4, heads=8, seq=128),
    "mid_llama": dict(arch="llama", hidden=512, layers=4, heads=8, seq=128),
}


def measure(model_dir: str, variant: str, steps: int, batch: int, seq: int, device: str, dtype: str = "fp32",
            quantization: str = "none", gradient_checkpointing: bool = False) -> dict:
    """Runs in a fresh subprocess: time ``steps`` steps of one variant; report seconds/step, peak memory."""



    quiet_libraries()
    torch.manual_seed(0)
    dev = torch.device(device)
    model = load_lora_model(ModelConfig(path=model_dir, device=device, dtype=dtype, quantization=quantization,
                                        gradient_checkpointing=gradient_checkpointing), seed=0)
    vocab = model.config.vocab_size
    data = [{"input_ids": torch.randint(3, vocab, (seq,)), "labels": torch.randint(3, vocab, (seq,)),
             "attention_mask": torch.ones(seq, dtype=torch.long)} for _ in range(batch)]
    stacked = {k: torch.stack([d[k] for d in data]) for k in data[0]}
    loader = torch.utils.data.DataLoader(data, batch_size=batch)
    optimizer = make_optimizer(model, TrainConfig())
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def run(m, opt, n):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            per_example_loss(m, stacked, dev).mean().backward()
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    if variant == "nodp":
        run(model, optimizer, 2)
        start = time.perf_counter()
        run(model, optimizer, steps)
        secs = (time.perf_counter() - start) / steps
    else:
        cfg = SampleLevelDPConfig(grad_sample_mode=variant, poisson_sampling=False)
        with private_training(model, optimizer, loader, cfg, 1.0) as (m, opt, _):
            run(m, opt, 2)
            start = time.perf_counter()
            run(m, opt, steps)
            secs = (time.perf_counter() - start) / steps
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) * 1024
    return {"seconds_per_step": secs, "peak_bytes": max(peak, 1), "tokens_per_second": batch * seq / secs}


def run_child(spec: dict) -> dict:
    """``measure(**spec)`` in a fresh Python process (its own peak memory)."""
    out = subprocess.run([sys.executable, "-m", "fedveil.experiments.bench_dp", "--_child", json.dumps(spec)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,mid")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", default="hooks,functorch")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        spec = json.loads(args._child)
        print(json.dumps(measure(**spec)))
        return


    variants = ["nodp", *args.variants.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name in args.models.split(","):
            m = MODELS[name]
            path = build_tiny_model(TinySpec(arch=m["arch"], hidden=m["hidden"], layers=m["layers"], heads=m["heads"]),
                                    Path(tmp) / name)
            runs: dict[str, list[dict]] = {v: [] for v in variants}
            for _ in range(args.repeats):  # interleaved, so drift hits every variant alike
                for v in variants:
                    spec = dict(
                        model_dir=str(path),
                        variant=v,
                        steps=args.steps,
                        batch=args.batch,
                        seq=m["seq"],
                        device=args.device,
                    )
                    runs[v].append(run_child(spec))
            base_t = statistics.median(r["seconds_per_step"] for r in runs["nodp"])
            base_m = statistics.median(r["peak_bytes"] for r in runs["nodp"])
            print(f"{name}: {m} batch={args.batch} device={args.device}: non-DP {base_t * 1e3:.1f} ms/step, "
                  f"peak {base_m / 2**20:.1f} MiB")
            for v in variants[1:]:
                t = statistics.median(r["seconds_per_step"] for r in runs[v]) / base_t
                mem = statistics.median(r["peak_bytes"] for r in runs[v]) / base_m
                results[f"{name}/{v}"] = {"time_ratio": t, "memory_ratio": mem}
                print(f"  DP-SGD ({v}): time x{t:.3f}, peak memory x{mem:.3f}")
        print(json.dumps(results))


if __name__ == "__main__":
    main()
