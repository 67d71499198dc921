"""The event loop the services run on: uvloop by default, the standard library's when asked for."""

from __future__ import annotations

import asyncio

import pytest

from exchange import runtime


def test_services_run_on_uvloop_unless_asked_for_asyncio_and_say_which(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "configure_gc", lambda: None)  # not this test process's collector
    loops: list[str] = []

    async def main() -> None:
        loops.append(type(asyncio.get_running_loop()).__module__.split(".")[0])

    monkeypatch.delenv(runtime.EVENT_LOOP_ENV, raising=False)
    runtime.run(main)
    assert runtime.grpc_transport().endswith("event loop uvloop")
    monkeypatch.setenv(runtime.EVENT_LOOP_ENV, "asyncio")
    runtime.run(main)
    assert runtime.grpc_transport().endswith("event loop asyncio")
    assert loops == ["uvloop", "asyncio"]
