"""The import graph of the `job` package, from every import statement in it: module level, inside
functions and under TYPE_CHECKING alike, and its layers. `make lint` runs this module; it prints each
cycle and each import that runs upwards, and exits 1 when there is one. tests/test_structure.py calls
the same functions."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "job"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(path, package): path for path in sorted(package.rglob("*.py"))}


def imported(path: Path, known: set[str], root: Path = PACKAGE) -> set[str]:
    """The package's modules that `path` imports anywhere in its text."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `job.runtime.device.on_gpu` imports job.runtime.device
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    found = modules(package)
    known = set(found)
    return {name: imported(path, known, package) - {package.name} for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(groups)


# Bottom to top: a module may import its own layer and those below it. The commands (cli, pipeline,
# bench, predict, doctor, launch) are the top layer.
LAYERS = ("job.errors", "job.runtime", "job.output", "job.data", "job.training", "job.config", "job.results")


def layer(module: str) -> int:
    for index, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return index
    return len(LAYERS)


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """`a -> b` for every import of a module in a higher layer than the importer's."""
    return [f"{a} -> {b}" for a, targets in sorted(edges.items()) for b in sorted(targets) if layer(b) > layer(a)]


def main() -> int:
    edges = graph()
    found, upward = cycles(edges), upward_imports(edges)
    for group in found:
        print("import cycle: " + " -> ".join(group))
    for line in upward:
        print(f"import runs upwards: {line}")
    print(f"job/: {len(edges)} modules, {len(found)} import cycle(s), {len(upward)} upward import(s)")
    return 1 if found or upward else 0


if __name__ == "__main__":
    sys.setrecursionlimit(10_000)
    sys.exit(main())
