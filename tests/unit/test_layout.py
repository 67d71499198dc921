"""The layout stays as the folders say (devtools/layout.py): file and function lengths, imports per folder, and
what a trader's `import exchange.client` and the Sequencer load."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from devtools.layout import (
    KNOWN_LONG_FILES,
    KNOWN_LONG_FUNCTIONS,
    MAX_FILE_LINES,
    MAX_FUNCTION_LINES,
    ROOT,
    _imports,
    import_breaches,
    long_files,
    long_functions,
)

SERVER_SIDE = ("exchange.engine", "exchange.node", "sequencer", "discovery", "consul", "sortedcontainers",
               "exchange.cluster_common", "exchange.accounts", "exchange.runtime", "prometheus_client")


def _loaded_after(statement: str) -> list[str]:
    """The modules a fresh interpreter holds after `statement`."""
    script = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    return json.loads(out.stdout)


def _named(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)]


def test_importing_the_client_loads_no_server_code() -> None:
    modules = _loaded_after("import exchange.client")
    assert "exchange.client" in modules
    assert _named(modules, SERVER_SIDE) == []


def test_the_sequencer_loads_neither_the_engine_nor_the_node_nor_the_client() -> None:
    modules = _loaded_after("import sequencer.main")
    assert "sequencer.service" in modules
    assert _named(modules, ("exchange.engine", "exchange.node", "exchange.client", "sortedcontainers")) == []


def test_every_folder_imports_only_what_its_rule_allows() -> None:
    breaches = import_breaches()
    assert not breaches, "\n".join(map(str, breaches))


def test_the_import_check_sees_a_breach(tmp_path: Path) -> None:
    """The rules find an engine import from the Sequencer, in a function or not, but not under TYPE_CHECKING."""
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import exchange.node\n"
                     "from exchange import engine\ndef f():\n    from discovery.consul import X\n")
    assert list(_imports(tree)) == [("typing", False), ("exchange.engine", False), ("discovery.consul", True)]


def test_no_product_file_grows_over_the_limit() -> None:
    """The known debts (KNOWN_LONG_FILES) only shrink: a new long file fails, and so does a fixed one still listed."""
    assert set(long_files()) == KNOWN_LONG_FILES, f"files over {MAX_FILE_LINES} lines: {long_files()}"


def test_no_product_function_grows_over_the_limit() -> None:
    assert set(long_functions()) == KNOWN_LONG_FUNCTIONS, f"over {MAX_FUNCTION_LINES} lines: {long_functions()}"
