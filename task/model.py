"""Load a causal LM from a local path and wrap it with LoRA adapters.

Every model, the built-in tiny ones included, goes through :func:`load_lora_model`: a local
Hugging Face checkpoint directory, read with ``local_files_only=True``. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Optional

import numpy as np
import torch

from fedveil.core.errors import UserError

# LoRA targets per `config.model_type`. Attention projections everywhere; GPT-2 also adapts its
# MLP because a small model learns markedly faster with it (see tests/task/test_model.py).
DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
}

TINY_ARCHITECTURES = ("gpt2", "llama")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANTIZATIONS = ("none", "4bit", "8bit")


@dataclass
class LoraSettings:
    """LoRA hyper-parameters; ``target_modules=None`` picks the architecture's default."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: Optional[list[str]] = None

    def __post_init__(self) -> None:
        if self.r < 1:
            raise UserError(f"model.lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class TinySpec:
    """Shape of a tiny model built from a config (no download) for demos and tests."""

    arch: str = "gpt2"
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    max_positions: int = 256

    def __post_init__(self) -> None:
        if self.arch not in TINY_ARCHITECTURES:
            raise UserError(
                f"model.tiny.arch must be one of {list(TINY_ARCHITECTURES)}, got '{self.arch}'"
            )
        if self.hidden % self.heads:
            raise UserError(
                f"model.tiny.hidden ({self.hidden}) must be divisible by model.tiny.heads ({self.heads})"
            )


@dataclass
class ModelConfig:
    """Which base model to fine-tune and how.

    ``path`` is a local Hugging Face causal-LM checkpoint (config, weights, tokenizer). When it
    is empty and ``tiny`` is set, the runner builds the tiny model into the run directory first
    and fills ``path`` in, so both kinds load through the same code.
    """

    name: str = "tiny"
    path: Optional[str] = None
    tiny: Optional[TinySpec] = field(default_factory=TinySpec)
    lora: LoraSettings = field(default_factory=LoraSettings)
    device: str = "cpu"  # cpu | cuda | auto (the GPU when there is one)
    dtype: str = "fp32"  # the frozen base model's dtype; LoRA weights stay fp32 (what DP-SGD noises)
    quantization: str = "none"  # none | 4bit | 8bit: QLoRA-style frozen quantized base (CUDA + bitsandbytes)
    gradient_checkpointing: bool = False  # trade compute for activation memory (DP-SGD: hooks|functorch)

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda", "auto"):
            raise UserError(f"model.device must be cpu, cuda or auto, got '{self.device}'")
        if self.dtype not in DTYPES:
            raise UserError(f"model.dtype must be one of {list(DTYPES)}, got '{self.dtype}'")
        if self.quantization not in QUANTIZATIONS:
            raise UserError(f"model.quantization must be one of {list(QUANTIZATIONS)}, got '{self.quantization}'")
        if not self.path and self.tiny is None:
            raise UserError(
                "model.path is not set: pass model.path=DIR (a local Hugging Face checkpoint) or use model=tiny"
            )


def resolve_device(name: str) -> torch.device:
    """``auto`` takes the GPU when there is one; ``cuda`` without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("model.device=cuda but no CUDA device is visible: use model.device=cpu or auto")
    return torch.device(name)


def check_model_dir(path: str | os.PathLike) -> Path:
    """Fail with one clear line unless ``path`` holds a Hugging Face checkpoint."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UserError(f"model.path '{p}' is not a directory: point model.path at a local Hugging Face checkpoint")
    if not (p / "config.json").is_file():
        raise UserError(f"model.path '{p}' has no config.json: save the model there with save_pretrained()")
    return p.resolve()


# A tokenizer's vocabulary lives in one of these (fast: tokenizer.json; SentencePiece: *.model;
# BPE: vocab.json + merges.txt; WordPiece: vocab.txt). Without any, transformers builds an empty
# tokenizer from config.json alone and every text encodes to nothing.
TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("spiece.model",), ("vocab.json", "merges.txt"),
                   ("vocab.txt",))


def check_tokenizer_files(path: str | os.PathLike) -> Path:
    """Fail with one line naming the files when ``path`` holds no tokenizer vocabulary."""
    p = check_model_dir(path)
    if not any(all((p / name).is_file() for name in names) for names in TOKENIZER_FILES):
        wanted = ", ".join(" + ".join(names) for names in TOKENIZER_FILES)
        raise UserError(f"model.path '{p}' has no tokenizer files (none of {wanted}): copy them from the original "
                        "checkpoint, or save them there with tokenizer.save_pretrained(DIR)")
    return p


def load_tokenizer(path: str | os.PathLike):
    """The checkpoint's tokenizer, with a pad token (causal LMs often ship none)."""
    from transformers import AutoTokenizer  # lazy: seconds; configs import ModelConfig from here

    p = check_tokenizer_files(path)
    try:
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"model.path '{p}' has no usable tokenizer ({exc.__class__.__name__}): save one there with "
            "tokenizer.save_pretrained()"
        ) from exc
    if not tok("hello world")["input_ids"]:
        raise UserError(
            f"model.path '{p}': its tokenizer encodes text to nothing (an empty vocabulary): copy the "
            "tokenizer files from the original checkpoint, or save them there with tokenizer.save_pretrained(DIR)"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(cfg: ModelConfig, device: torch.device):
    """bitsandbytes settings for a quantized frozen base, refused where it cannot run."""
    if cfg.quantization == "none":
        return None
    if device.type != "cuda":
        raise UserError(f"model.quantization={cfg.quantization} needs a CUDA GPU (bitsandbytes); this owner runs on "
                        f"{device.type}: use model.quantization=none, or model.device=auto on a GPU machine")
    try:
        import bitsandbytes  # lazy: optional (the gpu extra), checked here  # noqa: F401
        from transformers import BitsAndBytesConfig  # lazy: seconds; configs import ModelConfig from here
    except ImportError as exc:
        raise UserError(f"model.quantization={cfg.quantization} needs bitsandbytes: pip install -e '.[gpu]' "
                        "(see docs/owner.md, GPUs)") from exc
    if cfg.quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=DTYPES[cfg.dtype] if cfg.dtype != "fp32" else torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def lora_targets(model_type: str, settings: LoraSettings) -> list[str]:
    if settings.target_modules:
        return list(settings.target_modules)
    if model_type not in DEFAULT_LORA_TARGETS:
        raise UserError(
            f"no default LoRA targets for model_type '{model_type}': "
            "set model.lora.target_modules=[...] to the names of its linear layers"
        )
    return DEFAULT_LORA_TARGETS[model_type]


def load_lora_model(cfg: ModelConfig, seed: int = 0, device: torch.device | None = None):
    """Base model from ``cfg.path`` with freshly initialised LoRA adapters.

    The model is moved to its device *before* LoRA is attached: otherwise Opacus later hooks a
    copy and the LoRA weights silently stop updating (opacus#820). ``seed`` fixes the LoRA
    initialisation, so every party derives the same starting adapter.
    """
    from peft import get_peft_model  # lazy: seconds; configs import ModelConfig from here
    from transformers import AutoModelForCausalLM  # lazy: seconds; configs import ModelConfig from here

    p = check_model_dir(cfg.path)
    device = device or resolve_device(cfg.device)
    quantized = quantization_config(cfg, device)
    try:
        if quantized is None:
            base = AutoModelForCausalLM.from_pretrained(p, local_files_only=True, dtype=DTYPES[cfg.dtype])
            base.to(device)
        else:
            base = AutoModelForCausalLM.from_pretrained(p, local_files_only=True, quantization_config=quantized,
                                                        device_map={"": device.index or 0})
    except (OSError, ValueError) as exc:
        raise UserError(f"model.path '{p}' could not be loaded as a causal LM: {exc}") from exc
    for param in base.parameters():
        param.requires_grad_(False)  # the base is frozen (and public); only LoRA trains
    recompute = Recompute() if cfg.gradient_checkpointing else None
    if recompute is not None:
        # non-reentrant: backward runs on the forward pass's graph, so per-sample gradient hooks fire
        # there (this also makes the embeddings' output require grad, for the frozen-base case)
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False,
                                                                               "context_fn": recompute})
    lora = lora_config(cfg, base.config.model_type)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = get_peft_model(base, lora, autocast_adapter_dtype=True)  # LoRA weights in fp32
        except ValueError as exc:
            raise UserError(f"LoRA could not be attached ({exc}): fix model.lora.target_modules") from exc
    model.checkpoint_recompute = recompute
    return model


class Recompute:
    """The ``context_fn`` of a model's gradient checkpointing (``torch.utils.checkpoint``, non-reentrant).

    A checkpointed layer runs its forward twice: in the forward pass, and again during backward to
    refill the activations it did not keep. Hooks that record a forward pass for its backward
    (Opacus' per-sample gradients, which keep each LoRA layer's input) must record the first run
    only: a second record would be paired with the wrong backward and never released. Whoever
    installs such hooks sets ``pause`` to a factory of a context manager that silences them
    (``privacy/dp/sgd.py`` does, for the span of :func:`~fedveil.privacy.dp.sgd.private_training`);
    each recompute runs inside one.
    """

    def __init__(self) -> None:
        self.pause: Optional[Callable[[], ContextManager]] = None

    def __call__(self) -> tuple[ContextManager, ContextManager]:
        # called in the forward pass; the second context is entered around that layer's recompute
        return contextlib.nullcontext(), (self.pause() if self.pause is not None else contextlib.nullcontext())


def checkpoint_recompute(model) -> Optional[Recompute]:
    """The :class:`Recompute` of a model from :func:`load_lora_model` with gradient checkpointing, else None."""
    return getattr(model, "checkpoint_recompute", None)


def lora_config(cfg: ModelConfig, model_type: str):
    from peft import LoraConfig  # lazy: seconds; configs import ModelConfig from here

    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=lora_targets(model_type, cfg.lora),
        fan_in_fan_out=model_type == "gpt2",  # GPT-2 uses Conv1D (weights stored transposed)
        task_type="CAUSAL_LM",
    )


def load_lora_skeleton(cfg: ModelConfig, seed: int = 0):
    """The LoRA adapters of ``cfg``'s model without its weights: what a coordinator needs.

    Only ``config.json`` is read; the base model lives on the meta device (no memory, no weight
    files), and the LoRA tensors are created on the CPU and initialised exactly as
    :func:`load_lora_model` initialises them for ``seed`` (peft draws them from the same RNG
    sequence, whatever the base's device; ``tests/task/test_model.py`` checks equality). peft
    would move the adapters to the base's (meta) device; that move is held back while they are
    attached. The result serves :func:`get_adapter`, :func:`set_adapter` and ``save_pretrained``
    of the adapter, not a forward pass.
    """
    from peft import get_peft_model  # lazy: seconds; configs import ModelConfig from here
    from peft.tuners.lora.model import LoraModel  # lazy: seconds; configs import ModelConfig from here
    from peft.tuners.tuners_utils import BaseTunerLayer  # lazy: seconds; configs import ModelConfig from here
    from transformers import AutoConfig, AutoModelForCausalLM  # lazy: seconds; configs import ModelConfig from here

    p = check_model_dir(cfg.path)
    try:
        config = AutoConfig.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.path '{p}' has no usable config.json ({exc})") from exc
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    base.config._name_or_path = str(p)  # the final adapter names its base model
    held = (BaseTunerLayer._move_adapter_to_device_of_base_layer, LoraModel._replace_module)
    BaseTunerLayer._move_adapter_to_device_of_base_layer = lambda self, *args, **kwargs: None
    LoraModel._replace_module = lambda self, parent, child_name, new_module, child: setattr(
        parent, child_name, new_module
    )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_peft_model(base, lora_config(cfg, config.model_type), autocast_adapter_dtype=True)
    except ValueError as exc:
        raise UserError(f"LoRA could not be attached ({exc}): fix model.lora.target_modules") from exc
    finally:
        BaseTunerLayer._move_adapter_to_device_of_base_layer, LoraModel._replace_module = held
    return model


def get_adapter(model) -> dict[str, np.ndarray]:
    """The LoRA tensors of ``model`` as named float32 numpy arrays, in module order."""
    from peft import get_peft_model_state_dict  # lazy: seconds; configs import ModelConfig from here

    state = get_peft_model_state_dict(model)
    return {name: t.detach().to("cpu", torch.float32).numpy().copy() for name, t in state.items()}


def set_adapter(model, tensors: "dict[str, np.ndarray]") -> None:
    """Load named LoRA tensors into ``model``; every adapter tensor must be present."""
    from peft import set_peft_model_state_dict  # lazy: seconds; configs import ModelConfig from here

    current = get_adapter(model)
    missing = sorted(set(current) - set(tensors))
    extra = sorted(set(tensors) - set(current))
    if missing or extra:
        raise UserError(f"adapter tensors do not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    device = next(p for n, p in model.named_parameters() if "lora_" in n).device  # the base may be on meta
    state = {name: torch.as_tensor(tensors[name]).to(device) for name in current}
    result = set_peft_model_state_dict(model, state)
    if getattr(result, "unexpected_keys", None):
        raise UserError(f"adapter tensors not used by the model: {result.unexpected_keys[:3]}")
