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


def _edges(target: str, names: list[str]) -> set[str]:
    """The project modules an import loads: every name of a from-import that is a module
    (``from chain import pool, ingest``: chain.pool and chain.ingest), and the target itself
    for a plain import or where a name is an attribute of the target."""
    subs = {f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES}
    attrs = [n for n in names if f"{target}.{n}" not in MODULES]
    own = {target} if target in MODULES and (attrs or not names) else set()
    return subs | own


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
            graph[mod] |= _edges(target, names) - {mod}
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


def _layout_paths() -> set[tuple[str, ...]]:
    """Every run path RunLayout spells, as parts relative to the run folder, read from
    apeagent/layout.py itself (``self.root / "student" / "fused"`` -> ("student", "fused"))."""
    tree = ast.parse((ROOT / "apeagent" / "layout.py").read_text())
    returns = {
        f.name: r.value
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef)
        for r in ast.walk(f)
        if isinstance(r, ast.Return) and r.value is not None
    }

    def resolve(e: ast.expr) -> tuple[str, ...] | None:
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Div):
            left, right = resolve(e.left), resolve(e.right)
            return None if left is None or right is None else left + right
        if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self":
            return () if e.attr == "root" else resolve(returns[e.attr]) if e.attr in returns else None
        if isinstance(e, ast.Constant) and isinstance(e.value, str):
            return tuple(p for p in e.value.split("/") if p)
        return None

    return {p for p in map(resolve, returns.values()) if p}


def _path_parts(tree: ast.AST) -> list[tuple[int, list[str | None]]]:
    """(line, parts) of every expression that builds a path from pieces: a ``/`` chain, a
    ``+`` chain, an f-string, ``os.path.join(...)`` / ``.joinpath(...)`` / ``Path(...)``
    arguments, and every string constant (a path part may hold a ``/``: "student/fused").
    A piece that is not a string literal is None (it breaks a run of parts)."""

    def pieces(e: ast.expr, op: type) -> list[ast.expr]:
        if isinstance(e, ast.BinOp) and isinstance(e.op, op):
            return pieces(e.left, op) + pieces(e.right, op)
        return [e]

    def parts(exprs: list[ast.expr], sep: bool) -> list[str | None]:
        out: list[str | None] = []
        for e in exprs:
            if isinstance(e, ast.Constant) and isinstance(e.value, str):
                bits = e.value.split("/")
                out += [b for b in bits if b] if sep or len(bits) > 1 else [e.value]
            elif isinstance(e, ast.JoinedStr):
                out += parts(list(e.values), False)
            else:
                out.append(None)
        return out

    found = []
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        and n.body and isinstance(n.body[0], ast.Expr)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            found.append((node.lineno, parts(pieces(node, ast.Div), True)))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            found.append((node.lineno, parts(pieces(node, ast.Add), False)))
        elif isinstance(node, ast.JoinedStr):
            found.append((node.lineno, parts(list(node.values), False)))
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in ("join", "joinpath", "Path", "PurePath"):
                found.append((node.lineno, parts(list(node.args), True)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings and not any(c.isspace() for c in node.value):
                found.append((node.lineno, parts([node], True)))
    return found


def _spells(parts: list[str | None], paths: set[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The first run path of two parts or more that ``parts`` holds in a row."""
    for path in sorted(paths):
        n = len(path)
        if n >= 2 and any(tuple(parts[i : i + n]) == path for i in range(len(parts) - n + 1)):
            return path
    return None


LAYOUT_PATHS = _layout_paths()


def test_layout_paths_are_read_from_the_layout():
    assert {("student", "fused"), ("gan", "best.pt"), ("features", "bars.parquet"),
            ("eval", "eval.json"), ("chain", "swaps.db")} <= LAYOUT_PATHS


@pytest.mark.parametrize(
    "code",
    [
        'p = run / "student/fused"',
        'p = run / "student" / "fused"',
        'p = Path(run, "gan", "best.pt")',
        'p = os.path.join(run, "features", "bars.parquet")',
        'p = f"{run}/eval/eval.json"',
        'p = str(run) + "/chain/swaps.db"',
        'p = run.joinpath("dataset", "dataset_report.json")',
        'FUSED = "student/fused"',
    ],
)
def test_run_path_finder_sees_every_spelling(code):
    assert any(_spells(p, LAYOUT_PATHS) for _, p in _path_parts(ast.parse(code))), code


def test_run_path_finder_leaves_other_paths_alone():
    code = 'p = run / name / "fused"\nq = out / "bars.parquet"\nr = f"{a}/student"\nh = "see R/student/fused here"'
    assert not any(_spells(p, LAYOUT_PATHS) for _, p in _path_parts(ast.parse(code)))


def test_run_layout_is_the_only_place_run_paths_are_spelled():
    """Stage CLIs and the pipeline take run-folder paths from RunLayout, never by hand: no
    expression outside apeagent/layout.py builds a path of RunLayout's from literal parts."""
    bad = set()
    for mod, path in MODULES.items():
        if mod == "apeagent.layout":
            continue
        for line, parts in _path_parts(ast.parse(path.read_text(), str(path))):
            spelled = _spells(parts, LAYOUT_PATHS)
            if spelled:
                bad.add(f"{path.relative_to(ROOT)}:{line}: {'/'.join(spelled)}")
    assert not bad, "\n".join(sorted(bad))
