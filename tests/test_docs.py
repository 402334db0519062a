"""The project's text tells the truth about the code and the measurements, checked mechanically.

* docs/architecture.md: every module, class, function or constant it names in backticks (dotted, ``a.b.C``, or as a
  path, ``gallery/base.py``) exists in the source, read statically (nothing is imported), and its layer table is the
  one ``tests/test_layers.py`` enforces (``LAYERS``, imported from there: one table, two readers).
* README.md and docs/*.md: every measured figure (a ratio such as ``1.7x``, a percentage, a time, a rate) sits in a
  paragraph or table that cites its result file in bench/results/ (itself or the paragraph just before it, a table's
  caption); every cited result file exists, and a script in bench/ (or a research driver in tools/) writes it.
* README.md states the CLI's exit codes as ``arcface.cli`` defines them.

Each checker is a function of the text, and each is shown to fail on a synthetic document with one violation.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from test_layers import LAYERS

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "arcface"
RESULTS = REPO / "bench" / "results"
ARCHITECTURE = REPO / "docs" / "architecture.md"
FIGURE_DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])


# --------------------------------------------------------------------------------------------------
# A static index of the source: modules, their top-level names, classes with their attributes and bases


@dataclass
class _Module:
    names: dict[str, str] = field(default_factory=dict)  # name -> "class", "function", "value", "import"
    instances: dict[str, str] = field(default_factory=dict)  # NAME = SomeClass(...) -> "SomeClass"
    imported_from: dict[str, str] = field(default_factory=dict)  # name -> the arcface module it comes from


@dataclass
class _Class:
    attrs: set[str]
    bases: list[str]


@dataclass
class SourceIndex:
    modules: dict[str, _Module]
    classes: dict[str, list[_Class]]  # name -> every class of that name
    text: str  # all the source, for environment variable names

    def resolves(self, dotted: str) -> bool:
        """``dotted`` is a module (full, or the tail of one: ``inference.runners``), or a chain of names in one
        (``arcface.align.face.Face``, ``zoo.resolve_model_path``, ``Embedder.from_module``, ``VARIANTS``)."""
        parts = dotted.split(".")
        for i in range(len(parts), -1, -1):
            prefix, rest = ".".join(parts[:i]), parts[i:]
            for name, module in self.modules.items():
                if (i == 0 or name == prefix or name.endswith("." + prefix)) and self._in_module(name, module, rest):
                    return True
        return False

    def _in_module(self, name: str, module: _Module, rest: list[str]) -> bool:
        if not rest:
            return True
        head, tail = rest[0], rest[1:]
        if f"{name}.{head}" in self.modules:
            return self._in_module(f"{name}.{head}", self.modules[f"{name}.{head}"], tail)
        kind = module.names.get(head)
        if kind is None:
            return False
        if kind == "class":
            return self._in_class(head, tail)
        if head in module.instances:
            return self._in_class(module.instances[head], tail)
        if head in module.imported_from and tail:
            source = module.imported_from[head]
            return source in self.modules and self._in_module(source, self.modules[source], rest)
        return not tail or kind == "import"  # attributes of a value or of a foreign import are not followed

    def _in_class(self, name: str, attrs: list[str], seen: frozenset[str] = frozenset()) -> bool:
        if not attrs:
            return name in self.classes
        for cls in self.classes.get(name, []):
            if attrs[0] in cls.attrs:
                return True  # one level of attributes: a method, a class attribute or a field
            if any(self._in_class(b, attrs, seen | {name}) for b in cls.bases if b not in seen):
                return True
        return False


def _index(root: Path = SRC) -> SourceIndex:
    modules: dict[str, _Module] = {}
    classes: dict[str, list[_Class]] = {}
    texts = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        text = path.read_text()
        texts.append(text)
        module = modules[name] = _Module()
        tree = ast.parse(text)
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                module.names[node.name] = "class"
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                module.names[node.name] = "function"
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name):
                            module.names[n.id] = "value"
                            if isinstance(node.value, ast.Call):
                                f = node.value.func
                                cls = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
                                if cls:
                                    module.instances[n.id] = cls
                            if n.id == "_EXPORTS" and isinstance(node.value, ast.Dict):  # lazy public names
                                for k, v in zip(node.value.keys, node.value.values):
                                    if isinstance(k, ast.Constant) and isinstance(v, ast.Constant):
                                        module.names[k.value] = "import"
                                        source = v.value if not v.value.startswith(".") else name + v.value
                                        module.imported_from[k.value] = source
            elif isinstance(node, ast.Import | ast.ImportFrom):
                for alias in node.names:
                    local = alias.asname or alias.name.split(".")[0]
                    module.names[local] = "import"
                    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("arcface"):
                        module.imported_from[local] = node.module
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                attrs = set()
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                        attrs.add(item.name)
                    elif isinstance(item, ast.Assign | ast.AnnAssign):
                        for t in item.targets if isinstance(item, ast.Assign) else [item.target]:
                            attrs |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
                bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                classes.setdefault(node.name, []).append(_Class(attrs, [b for b in bases if b]))
    return SourceIndex(modules, classes, "\n".join(texts))


@functools.cache
def source_index() -> SourceIndex:
    return _index()


# --------------------------------------------------------------------------------------------------
# docs/architecture.md against the code

_CODE = re.compile(r"`([^`\n]+)`")
_NAME = re.compile(r"^@?([A-Za-z_][\w.]*)(\([^()]*\))?$")
_PATH = re.compile(r"^[\w.*-]+(/[\w.*-]+)*(/|\.(py|md|yaml|json|toml))$")


def _path_exists(rel: str) -> bool:
    """A path from the repository root or from src/ or src/arcface/; a bare file name anywhere in src/arcface."""
    rel = rel.rstrip("/")
    if "/" not in rel:
        return any(SRC.rglob(rel)) or (REPO / rel).exists()
    return any(any(base.glob(rel)) if "*" in rel else (base / rel).exists() for base in (REPO, SRC.parent, SRC))


def name_problems(text: str, index: SourceIndex) -> list[str]:
    """Every backticked name in ``text`` that names nothing in the source (or a path that is not in the tree)."""
    problems = []
    for token in dict.fromkeys(_CODE.findall(text)):
        token = token.strip()
        if _PATH.match(token):
            if not _path_exists(token):
                problems.append(f"`{token}`: no such file")
            continue
        m = _NAME.match(token)
        if not m:
            continue  # a formula, an option, a URI, a command line
        name, call = m.group(1), m.group(2)
        if name.startswith("ARCFACE_"):  # an environment variable: the source reads it
            if f'"{name}"' not in index.text:
                problems.append(f"`{token}`: no environment variable {name} in the source")
        elif ("." in name or call or name[0].isupper()) and not index.resolves(name):
            problems.append(f"`{token}`: {name} is not in src/arcface")
        # a bare lowercase word is a field, a setting or a package: the layer table checks the packages
    return problems


def layer_table(text: str) -> tuple[tuple[str, ...], ...]:
    """The packages of each layer, bottom first, from the markdown table headed ``| layer | packages | ...``."""
    rows: dict[int, tuple[str, ...]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\|\s*layer\s*\|\s*packages\s*\|", line):
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                cells = [c.strip() for c in row.strip("|").split("|")]
                rows[int(cells[0])] = tuple(_CODE.findall(cells[1]))
            break
    assert rows, "no '| layer | packages |' table"
    assert sorted(rows) == list(range(len(rows))), f"layers are not numbered 0..n: {sorted(rows)}"
    return tuple(rows[i] for i in range(len(rows)))


def layer_problems(text: str, enforced: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    documented = layer_table(text)
    problems = []
    for i in range(max(len(documented), len(enforced))):
        doc = set(documented[i]) if i < len(documented) else set()
        code = set(enforced[i]) if i < len(enforced) else set()
        if doc != code:
            problems.append(f"layer {i}: the doc says {sorted(doc)}, tests/test_layers.py enforces {sorted(code)}")
    return problems


def test_architecture_names_what_exists():
    problems = name_problems(ARCHITECTURE.read_text(), source_index())
    assert not problems, "docs/architecture.md names what is not there:\n" + "\n".join(problems)


def test_architecture_layers_are_the_enforced_ones():
    problems = layer_problems(ARCHITECTURE.read_text())
    assert not problems, "\n".join(problems)


SYNTHETIC_ARCHITECTURE = """
The face type is `arcface.align.face.Face`; the loader is `zoo.resolve_model_path` and `Embedder.from_module`.
Backbones go in `models/iresnet.py` (`VARIANTS`), threads follow `ARCFACE_THREADS`; `(x - 127.5) / 127.5` is a formula.

| layer | packages | what they hold |
|---|---|---|
""" + "".join(f"| {i} | {', '.join(f'`{p}`' for p in names)} | ... |\n" for i, names in enumerate(LAYERS))


def test_the_architecture_checks_pass_a_true_document():
    assert name_problems(SYNTHETIC_ARCHITECTURE, source_index()) == []
    assert layer_problems(SYNTHETIC_ARCHITECTURE) == []


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("`arcface.align.face.Face`", "`arcface.align.face.NoSuchFace`", "NoSuchFace is not in src/arcface"),
        ("`Embedder.from_module`", "`Embedder.from_nowhere`", "Embedder.from_nowhere is not in"),
        ("`zoo.resolve_model_path`", "`nosuchmodule.resolve_model_path`", "nosuchmodule.resolve_model_path"),
        ("`models/iresnet.py`", "`models/gone.py`", "`models/gone.py`: no such file"),
        ("`VARIANTS`", "`NO_SUCH_TABLE`", "NO_SUCH_TABLE is not in"),
        ("`ARCFACE_THREADS`", "`ARCFACE_NO_SUCH_VARIABLE`", "no environment variable"),
    ],
)
def test_the_name_check_catches_a_stale_name(old, new, problem):
    doc = SYNTHETIC_ARCHITECTURE.replace(old, new)
    assert doc != SYNTHETIC_ARCHITECTURE
    assert problem in "\n".join(name_problems(doc, source_index()))


def test_the_layer_check_catches_a_moved_package():
    doc = SYNTHETIC_ARCHITECTURE.replace("| 2 | `models`", "| 2 | `serve`, `models`")
    assert "layer 2: the doc says" in "\n".join(layer_problems(doc))
    last = len(LAYERS) - 1
    doc = SYNTHETIC_ARCHITECTURE.replace(f"| {last} | `cli` | ... |\n", "")
    assert f"layer {last}" in "\n".join(layer_problems(doc))


# --------------------------------------------------------------------------------------------------
# Figures in README.md and docs/ cite their result files

#: A measured figure: a ratio (1.69x), a percentage, a duration, a rate, a memory size.
_FIGURE = re.compile(
    r"(?<![\w.])(?:"
    r"\d+(?:\.\d+)?x(?![\w])"  # a ratio
    r"|\d[\d,]*(?:\.\d+)?\s?%"  # a percentage
    r"|\d[\d,]*(?:\.\d+)?\s?(?:ms|s|seconds|minutes|min|hours)(?![\w/])"  # a duration
    r"|\d[\d,]*(?:\.\d+)?\s?(?:\w+/s|/s)(?![\w])"  # a rate
    r"|\d[\d,]*(?:\.\d+)?\s?(?:MiB|GiB|KiB|MB|GB)(?![\w/])"  # a memory size
    r")"
)
#: A block whose numbers are settings, limits or bounds a test asserts (not measurements) says so in this comment.
SETTINGS_MARK = "<!-- not a measurement: settings, limits and tested bounds -->"
_CITE = re.compile(r"bench/results/([\w.-]+)")
_BARE = re.compile(r"(?<![/\w])([\w-]+\.(?:json|md|png))\b")


def blocks(text: str) -> list[str]:
    """Paragraphs, lists and tables of a markdown text (split at blank lines), fenced code left out (it shows commands
    and output, not claims)."""
    out, current, fenced = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            if current:
                out.append("\n".join(current))
                current = []
            continue
        if fenced:
            continue
        if not line.strip():
            if current:
                out.append("\n".join(current))
            current = []
        else:
            current.append(line)
    if current:
        out.append("\n".join(current))
    return out


def _figures(block: str) -> list[str]:
    if SETTINGS_MARK in block:
        return []
    plain = _CODE.sub("", re.sub(r"\]\([^)]*\)", "]", block))  # code spans and link targets aside
    cells = [c.strip(" *") for line in plain.splitlines() if line.startswith("|") for c in line.strip("|").split("|")]
    return _FIGURE.findall(plain) + [c for c in cells if re.fullmatch(r"[\d,]*\.\d+", c)]  # a table's decimals


def _cited(block: str) -> list[str]:
    """The result files a block names: ``bench/results/F``, or a bare ``F.json`` that is in bench/results/."""
    named = _CITE.findall(block)
    named += [b for b in _BARE.findall(block) if (RESULTS / b).is_file() and b not in named]
    return named


@functools.cache
def _producers() -> str:
    return "\n".join(p.read_text() for p in [*REPO.glob("bench/*.py"), *REPO.glob("tools/**/*.py")])


def _made_by_a_script(name: str, context: str) -> bool:
    stem = name.rsplit(".", 1)[0]
    scripts = [p.stem for p in REPO.glob("bench/[!_]*.py")]
    if any(stem == s or stem.startswith(s + "_") for s in scripts):
        return True  # bench/SCRIPT.py writes SCRIPT.json, or SCRIPT_VARIANT.json with --name
    if re.search(rf"bench/\w+\.py[^`]*--name {re.escape(stem)}\b", context):
        return True  # the document gives the command that wrote it
    return f'"{stem}"' in _producers() or f'"{name}"' in _producers()


def figure_problems(text: str, where: str) -> list[str]:
    problems = []
    parts = blocks(text)
    for i, block in enumerate(parts):
        caption = parts[i - 1] if i else ""
        for name in _cited(block):
            if not (RESULTS / name).is_file():
                problems.append(f"{where}: cites bench/results/{name}, which does not exist")
            elif not _made_by_a_script(name, text):
                problems.append(f"{where}: bench/results/{name} is made by no script in bench/ or tools/")
        figures = _figures(block)
        if figures and not (_cited(block) or _cited(caption)):
            first = block.strip().splitlines()[0][:90]
            problems.append(f"{where}: figures {figures[:4]} without a result file, in: {first}")
    return problems


@pytest.mark.parametrize("path", FIGURE_DOCS, ids=lambda p: p.name)
def test_every_figure_cites_its_result_file(path):
    problems = figure_problems(path.read_text(), path.name)
    assert not problems, "\n".join(problems)


SYNTHETIC_FIGURES = """
# Speed

Measured with `python bench/detect_speed.py` (`bench/results/detect_speed.json`):

| detector | images/s |
|---|---|
| mtcnn | 105.3 |

The default pipeline is 1.82x faster (`bench/results/lfw_end_to_end_full.json`).

```
$ arcface verify a.jpg b.jpg     # output shown in code is not a claim: 0.8324, 12.5 s
```

The upload limit is 10 MiB. <!-- not a measurement: settings, limits and tested bounds -->

No numbers here, only words.
"""


def test_the_figure_check_passes_a_true_document():
    assert figure_problems(SYNTHETIC_FIGURES, "doc") == []


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("faster (`bench/results/lfw_end_to_end_full.json`)", "faster", "figures ['1.82x'] without a result file"),
        ("only words.", "only words, and 99.68% of 13,233 images.", "figures ['99.68%']"),
        ("only words.", "only words: 25.3 vs 23.0 photos/s.", "without a result file"),
        ("only words.", "only words: the suite took 11.2 minutes.", "figures ['11.2 minutes']"),
        ("lfw_end_to_end_full.json", "lfw_end_to_end_gone.json", "lfw_end_to_end_gone.json, which does not exist"),
        ("(`bench/results/detect_speed.json`):", ":", "figures"),
    ],
)
def test_the_figure_check_catches_an_uncited_figure(old, new, problem):
    doc = SYNTHETIC_FIGURES.replace(old, new)
    assert doc != SYNTHETIC_FIGURES
    assert problem in "\n".join(figure_problems(doc, "doc"))


def test_a_result_file_no_script_makes_is_caught(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "RESULTS", tmp_path)
    (tmp_path / "hand_written.json").write_text("{}")
    assert "made by no script" in "\n".join(figure_problems("7.5x (`bench/results/hand_written.json`)", "doc"))


# --------------------------------------------------------------------------------------------------
# The README's exit codes are the CLI's


def exit_codes(doc: str) -> set[int]:
    """The codes of the ``====`` table in ``arcface.cli``'s docstring."""
    return {int(m) for m in re.findall(r"^(\d+)\s{2,}", doc, flags=re.M)}


def test_the_readme_states_the_cli_exit_codes():
    tree = ast.parse((SRC / "cli" / "__init__.py").read_text())
    codes = exit_codes(ast.get_docstring(tree) or "")
    assert {0, 1, 3} <= codes
    readme = (REPO / "README.md").read_text()
    line = next(b for b in blocks(readme) if b.startswith("Exit codes"))
    stated = {int(c) for c in re.findall(r"\b(\d+) [a-z]", line)}
    assert stated == codes, f"README says {sorted(stated)}, arcface.cli defines {sorted(codes)}: {line}"
