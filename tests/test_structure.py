"""The package's shape, checked from its source: layers without circles, small modules and functions, a metric's
name written once, own-module imports at the top, and the tools kept out of the runtime.

Run as a script to print the figures: ``python tests/test_structure.py``.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

from iterdpo import metrics

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "iterdpo"
TOOLS = ("iterdpo.bench", "iterdpo.devicecheck", "iterdpo.wheelhouse")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _targets(node: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's own modules an import statement loads (`from . import x`: the submodule x when there is one)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    base = module if is_package else module.rsplit(".", 1)[0]
    if node.level:
        parts = base.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1])
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}
    if subs and len(subs) == len(node.names):
        return subs
    return subs | ({target} if target in known else set())


def import_graph(function_level: bool = True) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, at the top of the file and, with `function_level`, inside
    functions too."""
    mods = modules()
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        nodes = ast.walk(tree) if function_level else tree.body
        graph[name] = {t for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom))
                       for t in _targets(n, name, path.name == "__init__.py", known) if t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

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
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def sizes() -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(modules by lines, functions by lines), largest first."""
    mods, funcs = [], []
    for name, path in modules().items():
        text = path.read_text()
        mods.append((len(text.splitlines()), str(path.relative_to(ROOT))))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(mods, reverse=True), sorted(funcs, reverse=True)


def test_the_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert not found, f"import cycles: {found}"


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_modules_and_functions_are_small():
    mods, funcs = sizes()
    assert mods[0][0] <= MAX_MODULE_LINES, f"largest module: {mods[0]}"
    assert funcs[0][0] <= MAX_FUNCTION_LINES, f"largest function: {funcs[0]}"


def test_own_modules_are_imported_at_the_top():
    """An import inside a function is for an optional or heavy third-party package, never for the package's own
    modules (those hide circles)."""
    inside = []
    for name, path in modules().items():
        for f in ast.walk(ast.parse(path.read_text())):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(f)
                           if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("iterdpo"))]
    assert not inside, f"imports of iterdpo's own modules inside functions: {inside}"


def test_the_tools_stay_out_of_the_runtime():
    """The benchmark, the device check and the wheelhouse are entry points: nothing of the runtime imports them (and
    the cycle test keeps them out of each other's circle)."""
    graph = import_graph()
    leaks = {m: sorted(t for t in graph[m] if t.startswith(TOOLS)) for m in graph if not m.startswith(TOOLS)}
    assert not {m: t for m, t in leaks.items() if t}


def test_the_reading_order_lists_every_module():
    """The README's module map and the package docstring name every module (a subpackage by its folder)."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## The code, in reading order"):]
    docstring = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    words = set(re.findall(r"[\w]+/?", docstring))
    for name, path in modules().items():
        rel = path.relative_to(ROOT)
        top = rel.parts[1] if len(rel.parts) > 1 else rel.name
        folder = f"iterdpo/{top}/" if len(rel.parts) > 2 else None
        if name == "iterdpo":
            continue
        assert (folder or str(rel)) in table, f"{rel} is not in the README's module map"
        assert (f"{top}/" if folder else path.stem) in words, f"{rel} is not in iterdpo/__init__.py's reading order"


def metric_names() -> set[str]:
    return {f.name for cls in (metrics.Evaluation, metrics.Labels) for f in dataclasses.fields(cls)} - {"extra"}


def spelled(name: str) -> list[str]:
    """Where `name` is written as a string literal in the package."""
    pattern = re.compile(r"""(?<![\w/])(["'])""" + re.escape(name) + r"\1")
    return [f"{p.relative_to(ROOT)}:{i}" for p in modules().values()
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]


def test_each_metric_name_is_written_in_one_module_only():
    """An evaluation's metric names are the fields of iterdpo.metrics' records; no other module spells one out."""
    elsewhere = {n: [w for w in spelled(n) if not w.startswith("iterdpo/metrics.py")] for n in metric_names()}
    assert not {n: w for n, w in elsewhere.items() if w}
    assert metrics.N.oracle_score == "oracle_score" and metrics.se(metrics.N.kl_to_reference) == "kl_to_reference_se"


def test_the_evaluation_record_keeps_the_json_on_disk():
    d = {"oracle_score": 0.4, "kl_to_reference": 0.1, "kl_to_reference_se": 0.01, "capability_probes": 0.9,
         "win_rate_vs_offline_dpo": 0.6}
    ev = metrics.Evaluation.from_dict(d)
    assert ev.oracle_score == 0.4 and ev.extra == {"capability_probes": 0.9, "win_rate_vs_offline_dpo": 0.6}
    assert ev.to_dict() == d


if __name__ == "__main__":
    mods, funcs = sizes()
    print("largest modules:", *(f"{n} {p}" for n, p in mods[:3]), sep="\n  ")
    print("largest functions:", *(f"{n} {p}" for n, p in funcs[:3]), sep="\n  ")
    print("import cycles:", cycles(import_graph()) or "none")
    print(f"'oracle_score' written in: {spelled('oracle_score')}")
