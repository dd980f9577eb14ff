"""The package picture holds: kernel < chain < gan_torch < distill < finetune_mlx < agent.

A package imports only packages to its left (skipping is fine), only their public names, and
no two modules import each other (directly or round a longer cycle). Read with ``ast``, so an
import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["apeagent", "chain", "gan_torch", "distill", "finetune_mlx", "agent"]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ORDER:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` of every absolute import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names], node.lineno))
    return found


MODULES = _modules()


def test_every_package_is_seen():
    assert {m.split(".")[0] for m in MODULES} == set(ORDER)


@pytest.mark.parametrize("pkg", ORDER)
def test_package_imports_only_packages_to_its_left(pkg):
    rank = ORDER.index(pkg)
    bad = []
    for mod, path in MODULES.items():
        if mod.split(".")[0] != pkg:
            continue
        for target, names, line in _imports(path):
            top = target.split(".")[0]
            if top not in ORDER or top == pkg:
                continue
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            if ORDER.index(top) > rank:
                bad.append(f"{where} (a package above {pkg})")
            private = [n for n in names if n.startswith("_")]
            private += [p for p in target.split(".")[1:] if p.startswith("_")]
            if private:
                bad.append(f"{where}: private {', '.join(private)}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for target, names, _ in _imports(path):
            for cand in [f"{target}.{n}" for n in names] + [target]:
                if cand in MODULES and cand != mod:
                    graph[mod].add(cand)
                    break
    # Tarjan's strongly connected components: any component of two or more is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_kernel_knows_every_stage_default_without_importing_stages():
    """The kernel validates a whole config from its own data file (no stage code needed)."""
    from apeagent.config import DEFAULTS, SECTIONS

    assert set(SECTIONS) == {"run", "market", "chain", "gan", "distill", "finetune", "agent"}
    shared = set(DEFAULTS["market"])
    assert not [k for name in SECTIONS if name != "market" for k in DEFAULTS[name] if k in shared]


def test_run_layout_is_the_only_place_run_paths_are_spelled():
    """Stage CLIs and the pipeline take run-folder paths from RunLayout, never by hand."""
    needles = ('"student" / ', '"features" / ', '"teacher" / ', '"dataset" / "', '"gan" / "best')
    bad = []
    for mod, path in MODULES.items():
        if mod == "apeagent.layout":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if any(n in line for n in needles):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)
