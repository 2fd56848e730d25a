"""Imports at module level, unless a comment on the import's line says why (start-up cost, an optional
dependency, an import cycle, an order a library needs): a hidden import hides the architecture."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = {"tests", ".venv", "outputs", "multirun", ".git", "build"}
NOT_YET: set[str] = set()  # every file follows the rule (the list may only shrink; it is empty)
NOT_A_REASON = re.compile(r"#\s*(noqa\b[^#]*|type:\s*ignore\b[^#]*)")


def sources():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if not SKIPPED & set(rel.parts):
            yield rel.as_posix(), path.read_text()


def unexplained(source: str) -> list[tuple[int, str]]:
    """(line, text) of each import inside a function whose line has no comment saying why."""
    lines = source.splitlines()
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    line = lines[inner.lineno - 1]
                    code, _, why = NOT_A_REASON.sub("", line).partition("#")
                    if not why.strip():
                        found.add((inner.lineno, line.strip()))
    return sorted(found)


def test_every_function_level_import_says_why_on_its_line():
    bad = [f"{rel}:{n}: {text}" for rel, src in sources() if rel not in NOT_YET for n, text in unexplained(src)]
    assert not bad, "move these to the top of the module, or say why on the line (# lazy: ...):\n" + "\n".join(bad)


def test_the_allow_list_names_existing_files_only():
    assert NOT_YET <= {rel for rel, _ in sources()}


def test_the_check_finds_a_bare_import_and_accepts_a_reason():
    src = ("import os\n\n\ndef f():\n    import json\n    import torch  # lazy: seconds\n"
           "    import numpy  # noqa: F401\n    return os\n")
    assert unexplained(src) == [(5, "import json"), (7, "import numpy  # noqa: F401")]
