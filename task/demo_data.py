"""A learnable, non-IID demo data set: each owner mostly holds one kind of question.

Answers are fully determined by the questions, so a model can learn them and the held-out loss
falls; owners differ in their mix of tasks (80 % their own task), as real organisations do.
Generated deterministically from the seed, written as ``prompt``/``completion`` JSONL.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

WORDS = ["cat", "dog", "tree", "lamp", "river", "stone", "cloud", "bread", "chair", "apple", "house", "book"]
OPPOSITES = {"hot": "cold", "up": "down", "big": "small", "fast": "slow", "light": "dark", "early": "late",
             "open": "closed", "full": "empty", "hard": "soft", "old": "new", "high": "low", "wet": "dry"}


def addition(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return f"Q: {a} + {b} =", f" {a + b}"


def plural(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    return f"Q: plural of {w}?", f" {w}s"


def opposite(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(sorted(OPPOSITES))
    return f"Q: opposite of {w}?", f" {OPPOSITES[w]}"


def reverse(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    return f"Q: reverse {w}", f" {w[::-1]}"


TASKS: list[Callable[[random.Random], tuple[str, str]]] = [addition, plural, opposite, reverse]


def demo_records(owner: int, n: int, seed: int, own_share: float = 0.8) -> list[dict[str, str]]:
    rng = random.Random(f"{seed}:{owner}")
    own = TASKS[owner % len(TASKS)]
    records = []
    for _ in range(n):
        task = own if rng.random() < own_share else rng.choice(TASKS)
        prompt, completion = task(rng)
        records.append({"prompt": prompt, "completion": completion})
    return records


def write_demo_data(root: str | Path, num_owners: int, examples: int, seed: int) -> list[str]:
    """Write ``root/client_<k>/train.jsonl`` for each owner; returns the directories."""
    dirs = []
    for k in range(num_owners):
        d = Path(root) / f"client_{k}"
        d.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(r) + "\n" for r in demo_records(k, examples, seed))
        (d / "train.jsonl").write_text(lines, encoding="utf-8")
        dirs.append(str(d.resolve()))
    return dirs
