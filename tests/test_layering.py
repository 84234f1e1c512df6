"""The house's layout holds: no import cycle in src/sinklens, imports point down, and nnsight's or
TransformerLens's private names appear in one isolating module only, which fails loudly if they move."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from sinklens.errors import MissingDependencyError

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "sinklens"
ISOLATING = PACKAGE / "backends" / "_nnsight_private.py"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py")) if path.name != "__main__.py"}


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(name: str) -> set[str]:
    """The sinklens modules `name` imports, at import time or inside a function (TYPE_CHECKING blocks aside)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {module for module in found if module in MODULES and module != name}


def test_no_import_cycle_in_sinklens():
    graph = {name: imports_of(name) for name in MODULES}
    # a package's __init__ re-exports its modules: importing `sinklens.run` is importing its parts,
    # and a module importing a name from its own package's __init__ would close a cycle through it
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = "open"
        path.append(name)
        for child in sorted(graph[name]):
            if state.get(child) == "open":
                cycle = path[path.index(child):] + [child]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if child not in state:
                visit(child)
        path.pop()
        state[name] = "done"

    for name in MODULES:
        if name not in state:
            visit(name)


# modules that need an optional extra, and the package that extra brings
NEEDS_EXTRA = {"sinklens.integrations.lmms_eval.model": "lmms_eval"}


@pytest.mark.parametrize("name", list(MODULES))
def test_every_module_imports(name):
    if name in NEEDS_EXTRA:
        pytest.importorskip(NEEDS_EXTRA[name], reason=f"{name} needs the optional extra that installs {NEEDS_EXTRA[name]}")
    importlib.import_module(name)


_ABOVE_MODELS = ("sinklens.run", "sinklens.interventions", "sinklens.backends", "sinklens.eval", "sinklens.cli",
                 "sinklens.explorer", "sinklens.integrations", "sinklens.testing")
LOWER_THAN = {  # a layer never imports one above it
    "sinklens.ops": ("sinklens.models", "sinklens.builtin", *_ABOVE_MODELS),
    "sinklens.hf": ("sinklens.models", "sinklens.builtin", *_ABOVE_MODELS),
    "sinklens.builtin": ("sinklens.models", *_ABOVE_MODELS),
    "sinklens.models": _ABOVE_MODELS,
    "sinklens.run": ("sinklens.interventions", "sinklens.backends", "sinklens.eval", "sinklens.cli", "sinklens.testing"),
    "sinklens.interventions": ("sinklens.backends", "sinklens.eval", "sinklens.cli", "sinklens.testing"),
    "sinklens.backends": ("sinklens.eval", "sinklens.cli"),
}


def test_imports_point_down():
    wrong = []
    for name in MODULES:
        for layer, above in LOWER_THAN.items():
            if name == layer or name.startswith(layer + "."):
                wrong += [f"{name} imports {target}" for target in imports_of(name) if target.startswith(above)]
    assert not wrong, wrong


PRIVATE = [
    re.compile(r"_remoteable_\w+"),
    re.compile(r"\._module\b"),
    re.compile(r"nnsight\.(tracing|schema|intervention|ndif)\b"),
    re.compile(r"from nnsight[\w.]* import [^\n]*\b_\w+"),
    re.compile(r"from transformer_lens[\w.]* import [^\n]*\b_\w+"),
    re.compile(r"transformer_lens(\.\w+)*\._\w+"),
]


def test_no_private_nnsight_or_transformer_lens_name_outside_the_isolating_module():
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path == ISOLATING:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            found += [f"{path.relative_to(SRC)}:{number}: {line.strip()}" for pattern in PRIVATE if pattern.search(line)]
    assert not found, "private names outside backends/_nnsight_private.py:\n" + "\n".join(found)


def test_the_internal_names_sinklens_uses_exist_in_the_installed_nnsight():
    from sinklens.backends import _nnsight_private

    _nnsight_private.check()  # fails, naming what moved, on an nnsight that renamed one


def test_a_moved_internal_name_fails_loudly_naming_it(monkeypatch):
    from sinklens.backends import _nnsight_private

    monkeypatch.setattr(_nnsight_private, "_MODULE_NAMES", (("nnsight.tracing.util", "push_moved"),))
    with pytest.raises(MissingDependencyError, match=r"no nnsight\.tracing\.util\.push_moved.*nnsight>=0\.8,<0\.9"):
        _nnsight_private.check()
    monkeypatch.setattr(_nnsight_private, "_MODULE_NAMES", ())
    monkeypatch.setattr(_nnsight_private, "_MODEL_METHODS", ("_remoteable_gone",))
    with pytest.raises(MissingDependencyError, match="TransformersModel._remoteable_gone"):
        _nnsight_private.check()
