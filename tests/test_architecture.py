"""The house's rules, read from the source: no import cycle anywhere, bls's rooms depend
only on the rooms below them, and every model.py is a thin adapter (docs/architecture.md).

Imports are read with ast, lazy ones (inside functions) included: a cycle that only
closes at run time is still a cycle. ``if TYPE_CHECKING:`` blocks are left out, as they
never run.
"""

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bls", "server", "client", "export", "benchmarks", "demo")
# bls's rooms, each allowed to import only rooms of a lower rank (and itself).
BLS_RANKS = {"errors": 0, "contract": 1, "pipeline": 2, "backend": 2, "monitoring": 3,
             "orchestration": 4, "testing": 0}
MAX_ADAPTER_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(tree: ast.AST, module: str, is_package: bool, modules=()):
    """Absolute names of what ``tree`` imports when it runs (TYPE_CHECKING blocks left
    out): ``from a import b`` is the module a.b where ``modules`` has it, else a."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports. (Importing a.b.c also runs the
    __init__ of a and a.b; that is an edge only where a module names the package.)"""
    files = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        imported = runtime_imports(ast.parse(path.read_text()), name,
                                   path.name == "__init__.py", files)
        graph[name] = {m for m in imported if m in files and m != name}
    return graph


def test_there_is_no_import_cycle():
    try:
        order = list(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")
    assert "bls.contract.tensors" in order and "bls.orchestration.orchestrator" in order


def test_the_folders_depend_on_each_other_without_a_cycle():
    """As modules, so as folders (bls's rooms apart): client below export below demo."""
    def folder(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2]) if parts[0] == "bls" and len(parts) > 1 else parts[0]

    edges: dict[str, set[str]] = {}
    for module, imported in import_graph().items():
        edges.setdefault(folder(module), set()).update(
            folder(m) for m in imported if folder(m) != folder(module))
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"folders in a cycle: {' -> '.join(e.args[1])}")
    assert "export" in edges["demo"] and "client" in edges["export"]


def test_bls_rooms_import_only_rooms_below_them():
    graph = import_graph()
    wrong = []
    for module, imported in graph.items():
        if not module.startswith("bls."):
            continue
        for other in imported:
            if not other.startswith("bls."):
                wrong.append(f"{module} imports {other}: bls imports nothing of the tools")
                continue
            room, other_room = module.split(".")[1], other.split(".")[1]
            if room != other_room and BLS_RANKS[other_room] >= BLS_RANKS[room]:
                wrong.append(f"{module} ({room}) imports {other} ({other_room})")
    assert not wrong, "\n".join(wrong)
    rooms = {p.stem if p.is_file() else p.name for p in (ROOT / "bls").iterdir()
             if p.suffix == ".py" or (p / "__init__.py").exists()} - {"__init__"}
    assert rooms == set(BLS_RANKS), "a new room of bls needs its rank here and a paragraph " \
                                    "in docs/architecture.md"


@pytest.mark.parametrize("model_py", sorted(ROOT.glob("models/*/1/model.py")),
                         ids=lambda p: p.parent.parent.name)
def test_every_model_py_is_a_thin_adapter(model_py):
    lines = model_py.read_text().splitlines()
    assert len(lines) <= MAX_ADAPTER_LINES, f"{model_py}: {len(lines)} lines; move the logic to bls/"
    tree = ast.parse(model_py.read_text())
    project = {m.split(".")[0] for m in runtime_imports(tree, "model", False)} & set(PACKAGES)
    assert project <= {"bls"}, f"{model_py} imports {project}: the served code is bls/ alone"


def test_the_graph_reads_lazy_imports_and_skips_type_checking_ones():
    tree = ast.parse("from typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    from bls.a import X\n"
                     "def f():\n    from bls.pipeline import image\n"
                     "from . import sibling\n")
    imported = set(runtime_imports(tree, "bls.backend.request", False,
                                   {"bls.pipeline.image", "bls.backend.sibling"}))
    assert imported == {"typing", "bls.pipeline.image", "bls.backend.sibling"}
