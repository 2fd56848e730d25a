"""core/hash_chain: the one chain both the round chain and the epsilon ledger use."""

import math

import pytest

from fedveil.core import hash_chain as hc

KEYS = {"prev_key": "prev", "hash_key": "hash"}


def build(records, first):
    out, prev = [], first
    for r in records:
        out.append(hc.link(r, prev, **KEYS))
        prev = out[-1]["hash"]
    return out


def test_linked_entries_check_and_heads_agree():
    first = hc.genesis({"fedveil": "test"})
    chain = build([{"n": i} for i in range(3)], first)
    prevs = [first] + [e["hash"] for e in chain]
    assert all(hc.check(e, p, **KEYS) is None for e, p in zip(chain, prevs))
    assert hc.heads([{k: v for k, v in e.items() if k != "hash"} for e in chain], first, prev_key="prev") == prevs


def test_an_edit_breaks_the_hash_and_a_removal_breaks_the_link():
    first = hc.genesis({"fedveil": "test"})
    chain = build([{"n": i} for i in range(3)], first)
    assert hc.check({**chain[1], "n": 9}, chain[0]["hash"], **KEYS) == "hash"
    assert hc.check(chain[2], chain[0]["hash"], **KEYS) == "prev"  # entry 1 removed


def test_the_genesis_binds_a_chain_to_what_it_is():
    records = [{"n": 1}]
    a = hc.heads(records, hc.genesis({"fedveil": "a"}), prev_key="prev")
    b = hc.heads(records, hc.genesis({"fedveil": "b"}), prev_key="prev")
    assert a[-1] != b[-1]


def test_canonical_form_is_sorted_compact_ascii_and_finite_unless_asked():
    assert hc.canonical({"b": 1, "a": "caf\u00e9"}) == b'{"a":"caf\\u00e9","b":1}'
    with pytest.raises(ValueError):
        hc.canonical({"x": math.nan})
    assert hc.canonical({"x": math.inf}, finite=False) == b'{"x":Infinity}'


def test_sha256_of_frames_its_parts():
    assert hc.sha256_of(b"ab", b"c") != hc.sha256_of(b"a", b"bc")
