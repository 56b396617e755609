"""The layer contract, checked over the AST import graph (every import, function-level ones included).

Layers, lowest first; a module may import its own layer and the layers below, never one above:

    primitives    rules.durations, rules.config.{problems,values,toml_lines,tables}: the value readers,
                  the one Problem type and TOML line numbers; pure (the kinds' params are read with them)
    core          rules/ (rules.engine, rules.lifecycle, rules.kinds, rules.detectors...): pure
    config        rules.config (TOML files, the service config's sections, secrets, redaction, cron)
                  and rules.loader (reads the rule files): file and environment reads
    storage       storage/
    integrations  integrations/
    bot           bot/

Pure means: no import of a module that does I/O or reads the clock (os, pathlib, time, socket,
logging, sqlalchemy, the adapters...), no call of open()/print()/input(), no .now()/.utcnow()/.today().
docs/architecture.md describes the layers; a change that needs an upward import moves the shared
piece down instead.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rules", "storage", "integrations", "bot")

PRIMITIVES = ("rules.durations", "rules.config.problems", "rules.config.values", "rules.config.toml_lines",
              "rules.config.tables")
LAYERS = ("primitives", "core", "config", "storage", "integrations", "bot")

# Standard-library and third-party modules the pure layers may not import (I/O, clocks, processes).
IMPURE_MODULES = frozenset({
    "os", "pathlib", "time", "io", "socket", "ssl", "select", "selectors", "subprocess", "shutil", "tempfile",
    "glob", "fnmatch", "urllib", "http", "email", "smtplib", "sqlite3", "logging", "threading",
    "multiprocessing", "concurrent", "asyncio", "signal", "random", "secrets", "uuid", "sys", "importlib",
    "sqlalchemy", "sqlmodel", "alembic", "psycopg", "httpx", "requests", "slack_sdk", "slack_bolt",
    "simple_salesforce", "apscheduler", "waitress", "prometheus_client", "jinja2", "freezegun", "tqdm",
})
CLOCK_METHODS = frozenset({"now", "utcnow", "today", "time", "monotonic", "perf_counter", "time_ns"})
IO_BUILTINS = frozenset({"open", "print", "input"})


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    line: int
    target: str  # the imported module (or package), resolved from relative imports


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str, tree: ast.AST) -> list[Import]:
    is_package = MODULES[module].name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    out: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(module, node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append(Import(module, node.lineno, full if full in MODULES else base))
    return out


TREES = {m: ast.parse(p.read_text(encoding="utf-8"), str(p)) for m, p in MODULES.items()}
IMPORTS = [i for m, tree in TREES.items() for i in _imports(m, tree)]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer(module: str) -> str:
    """The layer of a usagebot module (see the module docstring)."""
    if any(_within(module, p) for p in PRIMITIVES) or module == "rules.config.problems":
        return "primitives"
    if _within(module, "rules.config") or _within(module, "rules.loader"):
        return "config"
    top = module.split(".")[0]
    return "core" if top == "rules" else top


def _ours(target: str) -> bool:
    return target.split(".")[0] in PACKAGES


def test_every_module_belongs_to_a_layer() -> None:
    assert {layer(m) for m in MODULES} == set(LAYERS)


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [f"{i.source}:{i.line} ({layer(i.source)}) imports {i.target} ({layer(i.target)})"
              for i in IMPORTS if _ours(i.target)
              and LAYERS.index(layer(i.target)) > LAYERS.index(layer(i.source))]
    assert upward == []


def test_the_top_level_packages_import_each_other_without_cycles() -> None:
    """rules <- storage <- integrations <- bot: the package graph is acyclic (the order above is one
    topological order of it)."""
    edges = {(i.source.split(".")[0], i.target.split(".")[0]) for i in IMPORTS if _ours(i.target)}
    order = {p: n for n, p in enumerate(PACKAGES)}
    assert sorted(f"{a} -> {b}" for a, b in edges if order[b] > order[a]) == []


# bot's subpackages, lowest first (docs/architecture.md): each imports only those before it.
BOT_ORDER = ("bot", "bot.progress", "bot.config", "bot.service", "bot.crm", "bot.slack", "bot.web", "bot.backtest",
             "bot.serve", "bot.cli")


def _part(module: str) -> str:
    """The bot subpackage (or top-level bot module) a bot module belongs to."""
    return ".".join(module.split(".")[:2])


def test_bot_subpackages_import_only_those_below_them() -> None:
    """config <- service <- crm, slack, web <- backtest <- serve <- cli: no subpackage imports one
    above it (so none import each other), function-level imports included."""
    assert {_part(m) for m in MODULES if _within(m, "bot")} == set(BOT_ORDER)
    upward = [f"{i.source}:{i.line} imports {i.target}" for i in IMPORTS
              if _within(i.source, "bot") and _within(i.target, "bot")
              and BOT_ORDER.index(_part(i.target)) > BOT_ORDER.index(_part(i.source))]
    assert upward == []


def _module_of(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def import_cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(graph[node]):
                work.append((node, i + 1))
                nxt = graph[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def test_no_two_modules_import_each_other_even_indirectly() -> None:
    """The module import graph is acyclic, with function-level and TYPE_CHECKING imports counted: a
    cycle hidden in a function (to dodge the import-time error) is still two modules that cannot be
    understood apart; the shared piece moves down instead."""
    edges = {(i.source, m) for i in IMPORTS if _ours(i.target)
             for m in [_module_of(i.target)] if m is not None and m != i.source}
    assert import_cycles(edges) == []


def test_the_cycle_check_finds_cycles() -> None:
    assert import_cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]
    assert import_cycles({("a", "b"), ("b", "c")}) == []


def test_the_config_layer_uses_only_the_primitives_below_it() -> None:
    """rules.config is shared by rule files and the service config: of usagebot it imports only itself
    and the primitives (not the core, not the rule loader)."""
    wrong = [f"{i.source}:{i.line}: {i.target}" for i in IMPORTS if _within(i.source, "rules.config")
             and _ours(i.target) and not (_within(i.target, "rules.config") or layer(i.target) == "primitives")]
    assert wrong == []


def _impurities(module: str, tree: ast.AST) -> list[str]:
    found: list[str] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            base = node.module or ""
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for name in names:
            top = name.split(".")[0]
            if top in IMPURE_MODULES or (top in PACKAGES and layer(name) not in ("primitives", "core")):
                found.append(f"{module}:{node.lineno}: imports {name}")
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in IO_BUILTINS:
                found.append(f"{module}:{node.lineno}: calls {func.id}()")
            if isinstance(func, ast.Attribute) and func.attr in CLOCK_METHODS:
                found.append(f"{module}:{node.lineno}: calls .{func.attr}() (reads the clock)")
    return found


def test_the_pure_core_does_no_io_and_reads_no_clock() -> None:
    impure = [f for m, tree in TREES.items() if layer(m) in ("primitives", "core") for f in _impurities(m, tree)]
    assert impure == []


def test_the_purity_check_sees_io_clock_reads_and_function_level_imports() -> None:
    """The checks above would catch what they are for (each of these lines is one finding)."""
    tree = ast.parse("import os\ndef f():\n    from storage.db import make_engine\n    import datetime\n"
                     "    open('x')\n    return datetime.datetime.now()\n")
    assert len(_impurities("rules.example", tree)) == 4
    MODULES.setdefault("rules.example", ROOT / "rules" / "example.py")
    try:
        assert [i.target for i in _imports("rules.example", tree)] == ["os", "storage.db", "datetime"]
    finally:
        del MODULES["rules.example"]
