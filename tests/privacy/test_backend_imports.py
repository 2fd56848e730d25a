"""The backend contract is the only door into a backend: server/, client/, configs/ and the planner
reach tenseal and crypten through ``privacy.secagg.BACKENDS`` (``BackendSpec``), never by importing
a module under ``secagg/tenseal`` or ``secagg/crypten``. ``ALLOWED`` is empty: any such import
fails (an exception would be named there, and fails too once no longer needed)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WALKED = ("server", "client", "configs", "privacy/planner.py")
BACKEND_PACKAGES = ("fedveil.privacy.secagg.tenseal", "fedveil.privacy.secagg.crypten")

# (file, module imported): none left; everything backend-specific is behind the BackendSpec
ALLOWED: set[tuple[str, str]] = set()


def inside(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in BACKEND_PACKAGES)


def imported(tree: ast.AST) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if not inside(node.module):  # from fedveil.privacy.secagg import tenseal
                names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def backend_imports() -> set[tuple[str, str]]:
    found = set()
    for top in WALKED:
        path = ROOT / top
        for file in ([path] if path.is_file() else sorted(path.rglob("*.py"))):
            found.update((str(file.relative_to(ROOT)), module)
                         for module in imported(ast.parse(file.read_text(), str(file))) if inside(module))
    return found


def test_no_new_module_imports_a_backend_package_past_the_contract():
    found = backend_imports()
    assert found - ALLOWED == set(), "import these through privacy.secagg.BACKENDS (BackendSpec) instead"
    assert ALLOWED - found == set(), "no longer imported: take these out of ALLOWED"


def test_the_walk_sees_an_import_inside_a_function():
    tree = ast.parse(
        "def f():\n    from fedveil.privacy.secagg import tenseal\n    import fedveil.privacy.secagg.crypten\n"
    )
    assert {"fedveil.privacy.secagg.tenseal", "fedveil.privacy.secagg.crypten"} <= imported(tree)


def test_no_backend_imports_the_planner():
    """The planner reads calibration.json and passes it to ``BackendSpec.cost``: no import cycle."""
    found = {(str(f.relative_to(ROOT)), m) for f in sorted((ROOT / "privacy" / "secagg").rglob("*.py"))
             for m in imported(ast.parse(f.read_text(), str(f))) if m.startswith("fedveil.privacy.planner")}
    assert found == set()
