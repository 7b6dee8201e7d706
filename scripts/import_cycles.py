"""Print the import cycles among sandbox_runner's modules, counting module-level imports only.

Imports inside functions (the lazy ones the CLI and the worker rely on) and under ``if TYPE_CHECKING:`` are
left out: they cannot make a module half-initialised at import time. ``--all`` counts them too (a cycle then is
only a smell: two modules that know each other). Exit code 1 when a cycle is found.

    .venv/bin/python scripts/import_cycles.py [--all] [PACKAGE_DIR]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def top_level_imports(tree: ast.Module, name: str, is_package: bool, *,
                      lazy: bool = False) -> list[tuple[str, list[str]]]:
    """What ``name`` imports when it is imported (its body, and try/if blocks other than TYPE_CHECKING): each
    import's module and the names taken from it (empty for ``import x``)."""
    found: list[tuple[str, list[str]]] = []
    todo: list[ast.stmt] = list(tree.body)
    if lazy:
        todo = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            found.append((base, [alias.name for alias in node.names]))
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return found


def graph(root: Path, *, lazy: bool = False) -> dict[str, set[str]]:
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    edges: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(), str(path))
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        targets: set[str] = set()
        for module, names in top_level_imports(tree, name, path.name == "__init__.py", lazy=lazy):
            submodules = {f"{module}.{n}" for n in names} & paths.keys()
            if module in paths and (len(submodules) < len(names) or not names):
                targets.add(module)  # names read from the module itself (an ancestor's too: a real hazard)
            for target in submodules | {module}:
                parts = target.split(".")
                # importing a.b.c runs a and a.b first; an ancestor of ours is already running, that is no cycle
                targets |= {p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                            if p in paths and p not in ancestors}
        edges[name] = targets - {name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main(argv: list[str]) -> int:
    lazy = "--all" in argv
    argv = [a for a in argv if a != "--all"]
    root = Path(argv[0] if argv else Path(__file__).resolve().parent.parent / "sandbox_runner")
    edges = graph(root, lazy=lazy)
    found = cycles(edges)
    for component in found:
        members = set(component)
        print(f"cycle of {len(component)}:")
        for name in component:
            print(f"  {name} -> {', '.join(sorted(edges[name] & members))}")
    print(f"{len(edges)} modules, {len(found)} cycle(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
