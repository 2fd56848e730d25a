import numpy as np
import pytest

from fedveil.task.model import (
    LoraSettings, ModelConfig, TinySpec, get_adapter, load_lora_model, load_tokenizer, set_adapter,
)
from fedveil.core.errors import UserError
from fedveil.core.layout import AdapterLayout


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_adapter_get_set_round_trip(arch, request):
    path = request.getfixturevalue(f"tiny_{arch}")
    model = load_lora_model(ModelConfig(path=str(path)), seed=1)
    before = get_adapter(model)
    assert before and all("lora_" in k for k in before)
    layout = AdapterLayout.of(before)
    changed = layout.unflatten(layout.flatten(before) + 0.25)
    set_adapter(model, changed)
    after = get_adapter(model)
    for k in before:
        np.testing.assert_allclose(after[k], before[k] + 0.25, rtol=0, atol=1e-6)
    # only the adapter is trainable
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_same_seed_same_initial_adapter_other_seed_differs(tiny_gpt2):
    a = get_adapter(load_lora_model(ModelConfig(path=str(tiny_gpt2)), seed=3))
    b = get_adapter(load_lora_model(ModelConfig(path=str(tiny_gpt2)), seed=3))
    c = get_adapter(load_lora_model(ModelConfig(path=str(tiny_gpt2)), seed=4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_default_targets_per_architecture_and_override(tiny_llama):
    model = load_lora_model(ModelConfig(path=str(tiny_llama)), seed=0)
    names = " ".join(get_adapter(model))
    assert "q_proj" in names and "o_proj" in names
    only_v = load_lora_model(ModelConfig(path=str(tiny_llama), lora=LoraSettings(target_modules=["v_proj"])), seed=0)
    assert all("v_proj" in k for k in get_adapter(only_v))


def test_tokenizer_round_trips_bytes(tiny_gpt2):
    tok = load_tokenizer(tiny_gpt2)
    text = "Q: 3 + 4 = 7 — naïve 😀"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.pad_token_id is not None and tok.eos_token_id is not None


def test_a_model_dir_without_tokenizer_files_is_refused_naming_them(tiny_gpt2, tmp_path):
    import shutil

    bare = tmp_path / "no_tokenizer"
    shutil.copytree(
        tiny_gpt2, bare, ignore=shutil.ignore_patterns("tokenizer*", "vocab*", "merges*", "special_tokens*")
    )
    # transformers alone would build an empty tokenizer from config.json and encode every text to nothing
    with pytest.raises(UserError, match=r"has no tokenizer files \(none of tokenizer.json, .*vocab.json \+ merges.txt"):
        load_tokenizer(bare)
    shutil.copy(tiny_gpt2 / "tokenizer.json", bare / "tokenizer.json")
    assert load_tokenizer(bare)("hello")["input_ids"]


def test_bad_model_paths(tmp_path):
    with pytest.raises(UserError, match="is not a directory"):
        load_lora_model(ModelConfig(path=str(tmp_path / "missing")))
    with pytest.raises(UserError, match="has no config.json"):
        load_lora_model(ModelConfig(path=str(tmp_path)))
    with pytest.raises(UserError, match="model.path is not set"):
        ModelConfig(path=None, tiny=None)
    with pytest.raises(UserError, match="divisible"):
        TinySpec(hidden=10, heads=4)


def test_unknown_architecture_needs_explicit_targets(tmp_path):
    from transformers import BloomConfig, BloomForCausalLM

    from fedveil.task.tiny import byte_level_tokenizer

    tok = byte_level_tokenizer()
    BloomForCausalLM(BloomConfig(vocab_size=len(tok), hidden_size=32, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="set model.lora.target_modules"):
        load_lora_model(ModelConfig(path=str(tmp_path)))
    model = load_lora_model(ModelConfig(path=str(tmp_path), lora=LoraSettings(target_modules=["query_key_value"])))
    assert get_adapter(model)


def test_dtype_selection_keeps_lora_in_fp32(tiny_llama):
    import torch

    from fedveil.task.model import ModelConfig, load_lora_model

    model = load_lora_model(ModelConfig(path=str(tiny_llama), dtype="bf16"), seed=0)
    lora = {n: p.dtype for n, p in model.named_parameters() if "lora_" in n}
    base = {p.dtype for n, p in model.named_parameters() if "lora_" not in n}
    assert lora and set(lora.values()) == {torch.float32} and base == {torch.bfloat16}
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    with pytest.raises(UserError, match="model.dtype must be one of"):
        ModelConfig(path=str(tiny_llama), dtype="int3")


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_quantization_is_refused_without_cuda(tiny_llama, bits):
    from fedveil.task.model import ModelConfig, load_lora_model

    with pytest.raises(UserError, match=f"model.quantization={bits} needs a CUDA GPU"):
        load_lora_model(ModelConfig(path=str(tiny_llama), quantization=bits, device="cpu"), seed=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_coordinator_needs_no_weights(arch, request, tmp_path):
    """From config.json alone: the same layout and initial adapter as the owners' loaded model, and a
    final adapter that loads onto the real weights."""
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedveil.task.model import ModelConfig, get_adapter, load_lora_model, load_lora_skeleton, set_adapter

    weights = request.getfixturevalue(f"tiny_{arch}")
    server = tmp_path / "server_copy"
    server.mkdir()
    shutil.copy(weights / "config.json", server / "config.json")  # no weight files at all
    owner = get_adapter(load_lora_model(ModelConfig(path=str(weights)), seed=7))
    skeleton = load_lora_skeleton(ModelConfig(path=str(server)), seed=7)
    coordinator = get_adapter(skeleton)
    assert AdapterLayout.of(coordinator).digest == AdapterLayout.of(owner).digest
    assert all(np.array_equal(owner[k], coordinator[k]) for k in owner)
    moved = {k: v + 0.5 for k, v in coordinator.items()}
    set_adapter(skeleton, moved)
    skeleton.save_pretrained(tmp_path / "final")
    base = AutoModelForCausalLM.from_pretrained(weights, local_files_only=True)
    loaded = get_adapter(PeftModel.from_pretrained(base, tmp_path / "final", local_files_only=True))
    assert all(np.allclose(loaded[k], moved[k]) for k in moved)


def test_long_local_training_reports_progress_and_short_training_stays_quiet(tiny_gpt2):
    import tempfile

    import torch

    from fedveil.task.data import DataConfig, load_owner_data
    from fedveil.task.demo_data import write_demo_data
    from fedveil.task.model import ModelConfig, load_lora_model, load_tokenizer
    from fedveil.task.train import TrainConfig, make_optimizer, shuffled_loader, train_steps

    model = load_lora_model(ModelConfig(path=str(tiny_gpt2)), seed=0)
    tok = load_tokenizer(tiny_gpt2)
    data = load_owner_data(write_demo_data(tempfile.mkdtemp(), 1, 40, seed=0)[0], tok, DataConfig(), seed=0)
    loader = shuffled_loader(data.train, 4, tok.pad_token_id, seed=0)
    seen = []
    train_steps(model, loader, make_optimizer(model, TrainConfig()), 3, torch.device("cpu"),
                on_progress=lambda done, total: seen.append((done, total)), every_s=0.0)
    assert seen == [(1, 3), (2, 3), (3, 3)]
    quiet = []
    train_steps(
        model,
        loader,
        make_optimizer(model, TrainConfig()),
        2,
        torch.device("cpu"),
        on_progress=lambda done, total: quiet.append(done),
    )
    assert quiet == []  # well under the 10 s between lines
