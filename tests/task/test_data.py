import json

import pytest

from fedveil.task.data import (
    IGNORE_INDEX, DataConfig, DataError, Example, load_examples, load_owner_data, split_examples, tokenize,
)
from fedveil.task.demo_data import demo_records, write_demo_data
from fedveil.task.model import load_tokenizer


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("record, expected", [
    ({"text": "hello world"}, Example("", "hello world")),
    ({"prompt": "Q: 1 + 1 =", "completion": " 2"}, Example("Q: 1 + 1 =", " 2")),
    ({"instruction": "Add", "input": "1 and 1", "output": "2"},
     Example("### Instruction:\nAdd\n\n### Input:\n1 and 1\n\n### Response:\n", "2")),
    ({"instruction": "Say hi", "output": "hi"}, Example("### Instruction:\nSay hi\n\n### Response:\n", "hi")),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
     Example("<|user|>\nhi\n<|assistant|>\n", "hello")),
])
def test_each_jsonl_format_parses(tmp_path, record, expected):
    assert load_examples(write_jsonl(tmp_path / "d.jsonl", [record])) == [expected]


def test_txt_paragraphs_and_json_list_and_directory(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\nstill first\n\nsecond\n", encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps([{"text": "x"}, {"prompt": "p", "completion": "c"}]), encoding="utf-8")
    (tmp_path / "ignored.csv").write_text("a,b\n", encoding="utf-8")
    examples = load_examples(tmp_path)
    assert examples == [Example("", "first paragraph\nstill first"), Example("", "second"),
                        Example("", "x"), Example("p", "c")]


def test_loss_only_on_the_response(tiny_gpt2):
    tok = load_tokenizer(tiny_gpt2)
    [item] = tokenize([Example("Q: 2 + 2 =", " 4")], tok, max_length=64)
    n_prompt = len(tok("Q: 2 + 2 =", add_special_tokens=False)["input_ids"])
    labels = item["labels"].tolist()
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == item["input_ids"].tolist()[n_prompt:]
    assert labels[-1] == tok.eos_token_id


def test_plain_text_is_cut_into_windows(tiny_gpt2):
    tok = load_tokenizer(tiny_gpt2)
    items = tokenize([Example("", "a" * 50)], tok, max_length=16)
    assert [len(i["input_ids"]) for i in items] == [16, 16, 16, 3]  # 50 bytes + eos


def test_split_is_deterministic_and_disjoint():
    examples = [Example("", str(i)) for i in range(50)]
    train, held = split_examples(examples, 0.1, seed=7)
    assert (train, held) == split_examples(examples, 0.1, seed=7)
    assert len(held) == 5 and not set(held) & set(train) and len(train) + len(held) == 50


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda p: p / "missing", "no such file or directory"),
        (
            lambda p: (p / "empty.jsonl").write_text("") and p / "empty.jsonl" or p / "empty.jsonl",
            "contains no records",
        ),
        (
            lambda p: write_jsonl(p / "odd.jsonl", [{"foo": 1}]),
            r"odd.jsonl:1: record with keys \['foo'\] is in no known format",
        ),
        (
            lambda p: (p / "bad.jsonl").write_text('{"text": 1}\n{oops\n') and p / "bad.jsonl",
            r"bad.jsonl:2: invalid JSON",
        ),
        (lambda p: (p / "bin.txt").write_bytes(b"\xff\xfe\x00bad") and p / "bin.txt", "cannot be read"),
        (lambda p: (p / "data.csv").write_text("a,b") and p / "data.csv", "unsupported file type"),
        (
            lambda p: write_jsonl(p / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}]),
            "no assistant turn",
        ),
        (lambda p: (p / "sub").mkdir() or p / "sub", "no .txt/.jsonl/.json files"),
    ],
)
def test_bad_data_gives_one_line_naming_the_file(tmp_path, setup, match):
    source = setup(tmp_path)
    with pytest.raises(DataError, match=match) as info:
        load_examples(source)
    assert "\n" not in str(info.value)


def test_demo_data_is_deterministic_non_iid_and_learnable(tmp_path, tiny_gpt2):
    assert demo_records(0, 20, seed=1) == demo_records(0, 20, seed=1)
    assert demo_records(0, 20, seed=1) != demo_records(0, 20, seed=2)
    def own(k):
        return sum(r["prompt"].startswith(("Q: plural", "Q: opposite", "Q: reverse")) is (k != 0)
                   for r in demo_records(k, 200, seed=0))

    assert own(0) > 150  # owner 0 mostly holds additions, others mostly not
    dirs = write_demo_data(tmp_path, 3, 40, seed=0)
    data = load_owner_data(dirs[1], load_tokenizer(tiny_gpt2), DataConfig(), seed=0)
    assert len(data.train) == 36 and len(data.eval) == 4
