"""A data owner's local files -> prompt/response examples -> tokenized train and held-out sets.

Accepted files (a directory is read recursively, files in name order):

- ``.txt``: plain text; each paragraph (blank-line separated) is one example, loss on all of it.
- ``.jsonl`` (one object per line) or ``.json`` (a list of objects), each object one of
  ``{"text"}``, ``{"prompt", "completion"}``, Alpaca ``{"instruction", "input"?, "output"}``
  or chat ``{"messages": [{"role", "content"}, ...]}``. Where there is a response (completion,
  output, the last assistant turn) the loss is taken on the response only.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from fedveil.core.errors import UserError

SUFFIXES = (".txt", ".jsonl", ".json")
IGNORE_INDEX = -100  # label value the loss skips (the prompt part)


class DataError(UserError):
    """A data file that cannot be used; the message names the file and the fix."""


@dataclass
class DataConfig:
    """Where each data owner's files are and how they are cut.

    ``client_dirs`` lists one directory or file per owner (simulation). With ``name=demo`` and no
    ``client_dirs`` the runner generates the demo set into the run directory first. ``name=node``
    (deployment): each SuperNode's ``data-dir`` node config says where its owner's data is.
    """

    name: str = "demo"
    client_dirs: Optional[list[str]] = None
    eval_fraction: float = 0.1
    max_length: int = 128
    demo_examples: int = 240

    def __post_init__(self) -> None:
        if not 0.0 < self.eval_fraction < 1.0:
            raise UserError(f"data.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.max_length < 8:
            raise UserError(f"data.max_length must be >= 8, got {self.max_length}")
        if self.name not in ("demo", "node") and not self.client_dirs:
            raise UserError(f"data={self.name} needs data.client_dirs=[DIR0,DIR1,...] (one per data owner)")


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str


def alpaca_prompt(instruction: str, context: str) -> str:
    if context:
        return f"### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
    return f"### Instruction:\n{instruction}\n\n### Response:\n"


def chat_prompt(messages: list[dict]) -> Example:
    """Everything up to the last assistant turn is the prompt; that turn is the response."""
    turns = [f"<|{m['role']}|>\n{m['content']}\n" for m in messages]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return Example("".join(turns[:last]) + "<|assistant|>\n", messages[last]["content"])


def parse_record(obj: object, where: str) -> Example:
    """One JSON object in any accepted format -> :class:`Example`."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}; each record must be an object")
    try:
        if "messages" in obj:
            msgs = obj["messages"]
            if not (
                isinstance(msgs, list)
                and msgs
                and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in msgs)
            ):
                raise DataError(f"{where}: 'messages' must be a list of {{role, content}} objects")
            if not any(m["role"] == "assistant" for m in msgs):
                raise DataError(f"{where}: chat record has no assistant turn to learn from; add one")
            return chat_prompt(msgs)
        if "prompt" in obj and "completion" in obj:
            return Example(str(obj["prompt"]), str(obj["completion"]))
        if "instruction" in obj and "output" in obj:
            return Example(alpaca_prompt(str(obj["instruction"]), str(obj.get("input") or "")), str(obj["output"]))
        if "text" in obj:
            return Example("", str(obj["text"]))
    except (TypeError, KeyError) as exc:
        raise DataError(f"{where}: malformed record ({exc})") from exc
    keys = sorted(obj)[:6]
    raise DataError(
        f"{where}: record with keys {keys} is in no known format; use text, prompt/completion, "
        "instruction/input/output or messages"
    )


def read_file(path: Path) -> Iterator[Example]:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path}: cannot be read ({exc.__class__.__name__}: {exc}); give a readable UTF-8 file"
        ) from exc
    if path.suffix == ".txt":
        for block in raw.split("\n\n"):
            if block.strip():
                yield Example("", block.strip())
    elif path.suffix == ".jsonl":
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: invalid JSON ({exc.msg}); each line must be one JSON object"
                ) from exc
            yield parse_record(obj, f"{path}:{lineno}")
    else:
        try:
            items = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: invalid JSON ({exc.msg} at line {exc.lineno}); a .json file must hold a list of records"
            ) from exc
        if not isinstance(items, list):
            raise DataError(f"{path}: a .json file must hold a list of records; use .jsonl for one record per line")
        for i, obj in enumerate(items):
            yield parse_record(obj, f"{path}[{i}]")


def data_files(source: str | Path) -> list[Path]:
    root = Path(source).expanduser()
    if root.is_file():
        if root.suffix not in SUFFIXES:
            raise DataError(f"{root}: unsupported file type '{root.suffix}'; use one of {', '.join(SUFFIXES)}")
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such file or directory; check data.client_dirs")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise DataError(f"{root}: no {'/'.join(SUFFIXES)} files in this directory; put the owner's data there")
    return files


def load_examples(source: str | Path) -> list[Example]:
    """Every example of one data owner; an owner with none is an error."""
    examples = [ex for f in data_files(source) for ex in read_file(f)]
    if not examples:
        raise DataError(f"{source}: contains no records (empty files?); add data or drop this owner")
    return examples


def split_examples(examples: list[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic train / held-out split; at least one example on each side."""
    if len(examples) < 2:
        raise DataError(f"only {len(examples)} example: need at least 2 to hold one out for evaluation")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(examples) - 1, max(1, round(len(examples) * eval_fraction)))
    return [examples[i] for i in order[n_eval:]], [examples[i] for i in order[:n_eval]]


def tokenize(
    examples: list[Example], tokenizer, max_length: int, one_row_per_record: bool = False
) -> list[dict[str, torch.Tensor]]:
    """Token ids with labels masked on the prompt; text-only examples are cut into windows.

    ``one_row_per_record`` (under DP, where a record is the privacy unit): a long text is truncated
    to ``max_length`` tokens instead, so one record is never sampled twice in a step."""
    out = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    # one batched call per side: a call per text cost ~0.5 ms each, most of an owner's set-up
    prompts = iter(token_ids(tokenizer, [ex.prompt for ex in examples if ex.prompt]))
    responses = token_ids(tokenizer, [ex.response for ex in examples])
    for ex, response in zip(examples, responses):
        prompt = next(prompts) if ex.prompt else []
        response = response + eos
        if prompt:
            ids = (prompt + response)[:max_length]
            labels = ([IGNORE_INDEX] * len(prompt) + response)[:max_length]
            if all(label == IGNORE_INDEX for label in labels[1:]):
                continue  # the prompt alone fills the window: nothing to learn
            out.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)})
        else:
            for start in range(0, len(response) if not one_row_per_record else 1, max_length):
                window = response[start : start + max_length]
                if len(window) > 1:
                    out.append({"input_ids": torch.tensor(window), "labels": torch.tensor(window)})
    return out


def token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens (the same ids as one call per text)."""
    return list(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else []


def collate(batch: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padded positions get label -100 and attention 0."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = b["input_ids"], b["labels"], 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@dataclass
class OwnerData:
    """One owner's tokenized train and held-out sets."""

    train: list[dict[str, torch.Tensor]]
    eval: list[dict[str, torch.Tensor]]


def load_owner_data(
    source: str | Path, tokenizer, cfg: DataConfig, seed: int, one_row_per_record: bool = False
) -> OwnerData:
    """Train and held-out rows of one owner; ``one_row_per_record`` truncates long texts (DP)."""
    train, held_out = split_examples(load_examples(source), cfg.eval_fraction, seed)
    data = OwnerData(tokenize(train, tokenizer, cfg.max_length, one_row_per_record),
                     tokenize(held_out, tokenizer, cfg.max_length, one_row_per_record))
    if not data.train or not data.eval:
        raise DataError(f"{source}: no example fits data.max_length={cfg.max_length} after tokenizing; raise it")
    return data
