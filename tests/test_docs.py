"""The docs: README stays short and opens every page; links land; every shell command shown is run by a
test or marked illustrative."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOORS = ["docs/owner.md", "docs/experiments.md", "deploy/README.md"]
BESIDE = ["docs/privacy.md", "docs/backends.md", "docs/reliability.md", "docs/architecture.md"]
SCANNED = [README, *PAGES]

# A command shown in the docs -> the test that runs it (with these overrides; its own run directory).
RUN_BY_TESTS = {
    ".venv/bin/python -m fedveil.experiments.run hydra.run.dir=out/run1 seed=1 rounds=3 num_clients=3 "
    "aggregation=plain dp=off": "tests/experiments/test_end_to_end.py::test_acceptance_run_plain_no_dp",
    "fedveil plan aggregation=auto privacy.coordinator=curious privacy.epsilon=4":  # the test adds --json
        "tests/privacy/test_planner.py::test_fedveil_plan_json_parses_and_names_the_pick",
}
ILLUSTRATIVE = "<!-- illustrative"
SHELL = {"bash", "sh", "shell", "console"}


def shell_commands(path: Path):
    """(line number, command, marked illustrative) for each command in a fenced block: every line of
    a shell block, and ``$ `` lines of an unlabelled one; continuations joined, comments dropped."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        lang, start = fence.group(1), i
        before = next((line for line in reversed(lines[:start]) if line.strip()), "")
        marked = before.startswith(ILLUSTRATIVE)
        i += 1
        pending, first = "", None
        while i < len(lines) and not lines[i].startswith("```"):
            line = lines[i]
            if lang in SHELL or line.startswith("$ ") or pending:
                text = re.sub(r"\s+#.*$", "", line.removeprefix("$ ")).strip()
                first = first or i + 1
                pending += " " + text.rstrip("\\")
                if text and not text.endswith("\\"):
                    out.append((first, " ".join(pending.split()), marked))
                    pending, first = "", None
            i += 1
        i += 1
    return out


def anchors(path: Path):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_readme_is_at_most_200_lines_and_opens_every_door_and_every_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 200, f"README.md has {len(text.splitlines())} lines: move depth to docs/"
    for page in sorted({*DOORS, *BESIDE, *(f"docs/{p.name}" for p in PAGES)}):
        assert (ROOT / page).is_file(), f"{page} is missing"
        assert f"]({page}" in text, f"README.md does not link {page}"


def test_every_relative_link_lands_on_a_file_and_heading():
    broken = []
    for md in [*SCANNED, ROOT / "deploy" / "README.md"]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", md.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            dest = (md.parent / target).resolve() if target else md
            if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
                broken.append(f"{md.relative_to(ROOT)} -> {target}#{anchor}")
    assert not broken, broken


def test_every_shell_command_in_the_docs_is_run_by_a_test_or_marked_illustrative():
    found = {(p, n, c, m) for p in SCANNED for n, c, m in shell_commands(p)}
    assert any(c == "make test" for _, _, c, _ in found)  # the scanner sees README's set-up block
    unaccounted = [f"{p.relative_to(ROOT)}:{n}: {c}" for p, n, c, m in found if not m and c not in RUN_BY_TESTS]
    assert not unaccounted, ("list each in tests/test_docs.py RUN_BY_TESTS with the test that runs it, or put "
                             f"'{ILLUSTRATIVE}: why -->' right before its block: {unaccounted}")
    shown = {c for _, _, c, _ in found}
    assert set(RUN_BY_TESTS) <= shown, f"RUN_BY_TESTS lists commands no page shows: {set(RUN_BY_TESTS) - shown}"


def test_each_listed_test_exists_and_passes_the_commands_overrides():
    for command, node in RUN_BY_TESTS.items():
        file, name = node.split("::")
        source = (ROOT / file).read_text()
        func = next((f for f in ast.walk(ast.parse(source)) if isinstance(f, ast.FunctionDef) and f.name == name),
                    None)
        assert func, f"{node} does not exist"
        body = ast.get_source_segment(source, func)
        for arg in command.split()[1:]:
            if "=" in arg and not arg.startswith("hydra."):
                assert f'"{arg}"' in body, f"{node} does not pass {arg}"
