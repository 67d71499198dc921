"""The product's layout rules, read from the source with ast: how long files and functions may be, and what
each folder may import. `python3 -m devtools.layout` prints every breach; tests/unit/test_layout.py keeps
the list empty (or no longer than the known debts below).

Folders, from the floor up (each may import the ones above it in this list, never one below):

* ``exchange/shared/`` and ``exchange/errors.py``: what the processes and the client share (wire constants,
  errors, TLS, market rules). The standard library, grpc, protobuf and the stubs ``exchange.v1`` only.
* ``exchange/engine/``: the pure matching engine. The standard library, sortedcontainers and
  ``exchange.shared.markets`` (the market rules it re-exports).
* ``exchange/client/``: the client library. The shared floor only: no engine, node, Sequencer, discovery,
  py-consul, sortedcontainers (two lazy imports inside functions are listed in LAZY).
* ``exchange/*.py``: what the processes share (cluster token and records, accounts, the markets in Consul,
  servers and channels, metrics, the CLIs). The floor, the engine, discovery; never the node, the Sequencer.
* ``exchange/node/``: the exchange node. All of the above; never the Sequencer or the client.
* ``exchange/web/``: the web console (``exchange-web``). The floor, the client, ``exchange/*.py`` and
  discovery; never the engine, the node or the Sequencer.
* ``sequencer/``: the Sequencer. The floor, ``exchange/*.py`` and discovery; never the engine, the node or
  the client.
* ``discovery/``: service discovery and the Consul KV. The standard library and py-consul only.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("exchange", "sequencer", "discovery")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80

FLOOR = ("exchange.shared", "exchange.errors", "exchange.v1")
PROCESS_SHARED = "exchange.<top>"  # a module directly in exchange/ (exchange.cluster_common, exchange.runtime...)
# folder -> first-party modules it may import (a prefix, or PROCESS_SHARED), checked first match wins
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("exchange/shared/", FLOOR),
    ("exchange/errors.py", FLOOR),
    ("exchange/v1/", FLOOR),
    ("exchange/engine/", ("exchange.engine", "exchange.shared.markets")),
    ("exchange/client/", (*FLOOR, "exchange.client")),
    ("exchange/node/", (*FLOOR, "exchange.engine", "exchange.node", PROCESS_SHARED, "discovery")),
    ("exchange/web/", (*FLOOR, "exchange.client", PROCESS_SHARED, "discovery", "exchange.web")),
    ("exchange/", (*FLOOR, "exchange.engine", "exchange.client", PROCESS_SHARED, "discovery")),
    ("sequencer/", (*FLOOR, "sequencer", PROCESS_SHARED, "discovery")),
    ("discovery/", ("discovery",)),
]
# third-party packages a folder must not load (py-consul, sortedcontainers: only where they are needed)
FORBIDDEN_THIRD_PARTY: dict[str, tuple[str, ...]] = {
    "exchange/shared/": ("consul", "sortedcontainers", "prometheus_client"),
    "exchange/client/": ("consul", "sortedcontainers", "prometheus_client"),
    "exchange/engine/": ("consul", "grpc", "google", "prometheus_client"),
}
# imports inside a function, kept out of the module's import on purpose: (file, module)
LAZY = {
    ("exchange/shared/tls.py", "discovery.consul"),  # consul_endpoint: the processes' Consul over HTTPS
    ("exchange/client/nodes.py", "discovery.consul"),  # ConsulNodes: clients that find nodes in Consul
    ("exchange/client/book.py", "exchange.engine.l2"),  # the level book of a book subscription
}
FIRST_PARTY = ("exchange", "sequencer", "discovery", "devtools")

# Known debts: files and functions over the limits that the next steps split (issue 25). The test fails when
# one is added, and when one listed here is fixed (so the list only shrinks).
KNOWN_LONG_FILES: set[str] = set()
KNOWN_LONG_FUNCTIONS: set[str] = set()


@dataclass(frozen=True)
class Breach:
    where: str  # path[:qualified function name]
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def product_files(root: Path = ROOT) -> Iterator[Path]:
    for package in PRODUCT:
        for path in sorted((root / package).rglob("*.py")):
            if "/v1/" not in path.as_posix():  # the generated stubs
                yield path


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield prefix + node.name, node
            yield from _functions(node, prefix + node.name + ".")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, prefix + node.name + ".")


def long_files(root: Path = ROOT) -> dict[str, int]:
    sizes = {path.relative_to(root).as_posix(): len(path.read_text().splitlines()) for path in product_files(root)}
    return {name: lines for name, lines in sizes.items() if lines > MAX_FILE_LINES}


def long_functions(root: Path = ROOT) -> dict[str, int]:
    found = {}
    for path in product_files(root):
        name = path.relative_to(root).as_posix()
        for qualname, node in _functions(ast.parse(path.read_text())):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found[f"{name}:{qualname}"] = lines
    return found


def _imports(tree: ast.Module) -> Iterator[tuple[str, bool]]:
    """(module, lazy) for every import that runs, lazy when inside a function; TYPE_CHECKING blocks skipped."""

    def walk(node: ast.AST, lazy: bool) -> Iterator[tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from (item for other in child.orelse for item in walk_one(other, lazy))
                continue
            yield from walk_one(child, lazy)

    def walk_one(child: ast.AST, lazy: bool) -> Iterator[tuple[str, bool]]:
        if isinstance(child, ast.Import):
            yield from ((alias.name, lazy) for alias in child.names)
        elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
            if child.module in FIRST_PARTY:  # `from exchange import engine`: the module is exchange.engine
                yield from ((f"{child.module}.{alias.name}", lazy) for alias in child.names)
            else:
                yield child.module, lazy
        else:
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from walk(child, inner)

    return walk(tree, False)


def _allowed(module: str, allowed: tuple[str, ...]) -> bool:
    for prefix in allowed:
        if prefix == PROCESS_SHARED:
            parts = module.split(".")
            top_level = parts[0] == "exchange" and len(parts) == 2 and not module.startswith(FLOOR)
            if top_level and (ROOT / "exchange" / f"{parts[1]}.py").is_file():
                return True
        elif module == prefix or module.startswith(prefix + "."):
            return True
    return False


def import_breaches(root: Path = ROOT) -> list[Breach]:
    breaches = []
    for path in product_files(root):
        name = path.relative_to(root).as_posix()
        allowed = next(rule for folder, rule in RULES if name.startswith(folder) or name == folder)
        forbidden = next((bad for folder, bad in FORBIDDEN_THIRD_PARTY.items() if name.startswith(folder)), ())
        for module, lazy in _imports(ast.parse(path.read_text())):
            if lazy and (name, module) in LAZY:
                continue
            top = module.split(".")[0]
            if (top in FIRST_PARTY and not _allowed(module, allowed)) or top in forbidden:
                breaches.append(Breach(name, f"imports {module}"))
    return breaches


def main() -> int:
    breaches = [Breach(name, f"{lines} lines (> {MAX_FILE_LINES})") for name, lines in long_files().items()]
    breaches += [Breach(name, f"{lines} lines (> {MAX_FUNCTION_LINES})") for name, lines in long_functions().items()]
    breaches += import_breaches()
    for breach in breaches:
        print(breach)
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
