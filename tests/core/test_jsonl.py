"""JSON-lines files: what a resume cuts from metrics.jsonl and the round chain."""

from fedveil.core.io import append_jsonl, keep_jsonl, read_jsonl


def test_keep_jsonl_cuts_the_rejected_rows_and_leaves_a_whole_file_alone(tmp_path):
    path = tmp_path / "rows.jsonl"
    for server_round in range(4):
        append_jsonl(path, {"round": server_round, "b": [server_round], "a": "x"})
    before = path.read_bytes()
    keep_jsonl(path, lambda row: row["round"] <= 3)  # nothing to cut: the file is not rewritten
    assert path.read_bytes() == before and not list(tmp_path.glob(".*tmp"))
    keep_jsonl(path, lambda row: row["round"] <= 1)
    assert read_jsonl(path) == [{"round": 0, "b": [0], "a": "x"}, {"round": 1, "b": [1], "a": "x"}]
    assert path.read_bytes() == before[: len(path.read_bytes())]  # the kept lines byte for byte, sorted keys
    keep_jsonl(tmp_path / "missing.jsonl", lambda row: False)  # no file: nothing to cut, nothing made
    assert not (tmp_path / "missing.jsonl").exists()
