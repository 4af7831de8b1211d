"""Package structure rules that can regress silently: no import circles between fastpose's modules, and no
module importing a private (underscored) name of another fastpose module."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import fastpose

ROOT = Path(fastpose.__file__).resolve().parent


def _modules() -> Dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        parts = ["fastpose", *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _imports(name: str, path: Path, mods: Dict[str, Path]) -> List[Tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every import anywhere in the file."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("fastpose"):
                    out.append((a.name, "", node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base[: len(base) - node.level + 1]
                mod = ".".join(pkg + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("fastpose"):
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((sub, "", node.lineno) if sub in mods else (mod, a.name, node.lineno))
    return out


def test_no_import_circles():
    mods = _modules()
    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for target, _, _ in _imports(m, p, mods):
            if target in mods and target != m and not m.startswith(target + "."):
                graph[m].add(target)  # a module's import of its own parent package is not a circle
    cycles, state = [], {}

    def visit(m: str, stack: List[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t] if t in stack else [m, t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_names_imported_across_modules():
    mods = _modules()
    bad = []
    for m, p in mods.items():
        for target, attr, line in _imports(m, p, mods):
            leaf = target.rsplit(".", 1)[-1]
            private_module = leaf.startswith("_") and not leaf.startswith("__") and target != "fastpose._core"
            # a package may use its own private modules; nobody imports another module's private names
            own = target.rsplit(".", 1)[0] == m or target.startswith(m.rsplit(".", 1)[0] + "._") \
                or m.startswith(target.rsplit(".", 1)[0])
            if attr.startswith("_") and not attr.startswith("__") and attr != "_core":  # _core: the extension
                bad.append(f"{p.relative_to(ROOT)}:{line} imports {attr} from {target}")
            elif private_module and not own:
                bad.append(f"{p.relative_to(ROOT)}:{line} imports the private module {target}")
    assert not bad, "\n".join(bad)
