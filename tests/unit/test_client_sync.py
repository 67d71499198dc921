"""The sync client is generated from the asyncio one (devtools/unasync.py): the committed exchange/client/sync.py
must be what exchange/client/aio.py makes, and blocking code throughout."""

from __future__ import annotations

import ast

import pytest

from devtools import unasync


def test_the_committed_sync_client_is_what_the_asyncio_one_generates() -> None:
    committed = (unasync.ROOT / unasync.TARGET).read_text()
    assert committed == unasync.expected(), "exchange/client/sync.py is out of date: run `make client-sync`"


def test_the_generated_client_has_no_asyncio_left() -> None:
    tree = ast.parse(unasync.expected())
    left = [type(node).__name__ for node in ast.walk(tree)
            if isinstance(node, ast.AsyncFunctionDef | ast.AsyncFor | ast.AsyncWith | ast.Await)]
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in node.names} | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert left == []
    assert not {"asyncio", "exchange.client.aio_concurrency", "AsyncIterator"} & imported


def test_a_substitution_that_matches_nothing_is_an_error() -> None:
    source = (unasync.ROOT / unasync.SOURCE).read_text()
    with pytest.raises(ValueError, match="no_such_name"):
        unasync.unasync(source, [*unasync.SUBS, (r"\bno_such_name\b", "x")])
