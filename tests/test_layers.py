"""The package's layers only point down (docs/architecture.md): a walk over every import of src/arcface.

Checked on the source (ast), counting every import: module level, inside functions, and under ``TYPE_CHECKING``:

* each package of ``arcface`` has a layer, and a module imports only from its own layer or below;
* there is no cycle, neither between packages nor between modules;
* an import of a project module inside a function is there for an optional heavy dependency and says so in a
  comment on its line (never to hide a cycle).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "arcface"

#: The declared order, bottom first: a package may import from its own layer and the ones before it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("registry",),
    ("runtime", "io"),
    ("models", "heads", "data", "align", "index", "cluster"),
    ("engine", "inference"),
    ("eval", "gallery", "batch"),
    ("serve",),
    ("cli",),
)
#: Modules above every layer: the package facade (``arcface/__init__.py``) and ``python -m arcface``.
FACADE = {"arcface", "arcface.__main__"}


def _layer(package: str) -> int:
    for i, names in enumerate(LAYERS):
        if package in names:
            return i
    raise AssertionError(f"package arcface.{package} has no layer: add it to LAYERS and to docs/architecture.md")


def _modules(root: Path = SRC) -> dict[str, Path]:
    out = {}
    for p in root.rglob("*.py"):
        parts = p.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int, bool, str]]:
    """(imported project module, line, inside a function, the source line) for every import of ``path``."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    found: list[tuple[str, int, bool, str]] = []

    def resolve(target: str) -> str | None:
        while target not in known and "." in target:
            target = target.rsplit(".", 1)[0]
        return target if target in known and target != name else None

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                # ``from package import submodule`` imports the submodule; other names come from ``module`` itself
                subs = [f"{module}.{a.name}" for a in child.names if f"{module}.{a.name}" in known]
                targets = subs + ([module] if len(subs) < len(child.names) else [])
            for t in targets:
                if t.startswith("arcface") and (r := resolve(t)) is not None:
                    found.append((r, child.lineno, in_function, lines[child.lineno - 1]))
            visit(child, inner)

    visit(tree, False)
    return found


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def _graph(root: Path = SRC) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> imported project modules, violations of the layer and function-local rules)."""
    modules = _modules(root)
    known = set(modules)
    edges: dict[str, set[str]] = defaultdict(set)
    problems: list[str] = []
    for name, path in sorted(modules.items()):
        for target, line, in_function, text in _imports(name, path, known):
            edges[name].add(target)
            where = f"{path.relative_to(root.parent)}:{line}"
            if name not in FACADE and target not in FACADE:
                a, b = _package(name), _package(target)
                if a != b and _layer(a) < _layer(b):
                    problems.append(f"{where}: arcface.{a} (layer {_layer(a)}) imports {target} (layer {_layer(b)})")
            if target in FACADE and name not in FACADE:
                problems.append(f"{where}: {name} imports the package facade {target}")
            if in_function and "#" not in text:
                problems.append(f"{where}: function-local import of {target} without a reason comment")
    return edges, problems


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            strong(v)
    return out


def test_every_package_has_a_layer():
    for p in sorted(p for p in SRC.iterdir() if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"):
        name = p.stem
        if name not in ("__init__", "__main__"):
            _layer(name)


def test_imports_point_down_and_local_imports_say_why():
    _, problems = _graph()
    assert not problems, "\n".join(problems)


def test_no_cycles_between_modules_or_packages():
    edges, _ = _graph()
    assert not _cycles(edges), f"module cycles: {_cycles(edges)}"
    packages: dict[str, set[str]] = defaultdict(set)
    for a, bs in edges.items():
        for b in bs:
            if a not in FACADE and b not in FACADE and _package(a) != _package(b):
                packages[_package(a)].add(_package(b))
    assert not _cycles(packages), f"package cycles: {_cycles(packages)}"


@pytest.mark.parametrize(
    ("module", "line", "problem"),
    [
        ("align/_upward.py", "from arcface.gallery import Gallery\n", "layer 2) imports arcface.gallery"),
        ("io/_cycle.py", "from arcface.runtime import progress\n", "package cycles"),
        ("models/_hidden.py", "def f():\n    from arcface.heads import create_head\n", "without a reason"),
    ],
)
def test_the_checks_catch_a_violation(tmp_path, module, line, problem):
    """A copy of the package with one bad import added fails the checks (the test is not vacuous)."""
    import shutil

    root = tmp_path / "arcface"
    shutil.copytree(SRC, root, ignore=shutil.ignore_patterns("__pycache__", "weights", "static"))
    (root / module).write_text(line)
    if problem == "package cycles":  # io -> runtime is allowed by layer (same layer); make runtime import io too
        (root / "runtime" / "_back.py").write_text("from arcface.io import images\n")
    edges, problems = _graph(root)
    packages: dict[str, set[str]] = defaultdict(set)
    for a, bs in edges.items():
        for b in bs:
            if a not in FACADE and b not in FACADE and _package(a) != _package(b):
                packages[_package(a)].add(_package(b))
    found = "\n".join(problems) + (f"\npackage cycles: {_cycles(packages)}" if _cycles(packages) else "")
    assert problem in found, found


def test_benchmarks_and_tools_import_what_exists():
    """Every ``from arcface... import name`` in bench/ and tools/ names a module and an attribute that exist (a
    refactoring of the package once left ``bench/mtcnn_speed.py`` importing a module that was gone)."""
    import importlib

    root = SRC.parents[1]
    missing = []
    for path in sorted([*root.glob("bench/*.py"), *root.glob("tools/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "arcface"):
                continue
            try:
                module = importlib.import_module(node.module)
            except ImportError as e:
                missing.append(f"{path.name}:{node.lineno}: {node.module} ({e})")
                continue
            for alias in node.names:
                if not hasattr(module, alias.name):
                    try:
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        missing.append(f"{path.name}:{node.lineno}: {node.module}.{alias.name}")
    assert not missing, "\n".join(missing)
