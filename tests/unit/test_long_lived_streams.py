"""Ending a server's long-lived streams before it stops or steps down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from exchange.errors import Unavailable, rpc
from exchange.runtime import LongLivedStreams
from tests.unit.fakes import run_scenario


class Context:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.aborted: list[grpc.StatusCode] = []

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted.append(code)
        if self.error is not None:
            raise self.error


def test_every_open_stream_is_ended_even_when_one_had_already_ended() -> None:
    """grpc raises its core's ExecuteBatchError (no AbortError) aborting a call that ended meanwhile; that must not
    stop the others being ended, nor escape (the Sequencer ends its streams in a task of its own)."""
    streams = LongLivedStreams()
    contexts = [Context(grpc.aio.AbortError()), Context(RuntimeError("Failed execute_batch")), Context(None)]

    async def scenario() -> None:
        with streams.track(contexts[0]), streams.track(contexts[1]), streams.track(contexts[2]):
            await streams.end_all("stopping")

    run_scenario(scenario())
    assert [context.aborted for context in contexts] == [[grpc.StatusCode.UNAVAILABLE]] * 3


class Stepping:
    """Handlers that fail (as a Sequencer's do once it has lost its leadership) right after their call was ended
    from outside them."""

    def __init__(self, streams: LongLivedStreams) -> None:
        self.streams = streams
        self.ended = asyncio.Event()
        self.finished = 0

    async def _fail_once_ended(self) -> None:
        await self.ended.wait()
        self.finished += 1
        raise Unavailable("the leadership was lost")

    @rpc
    async def Bidi(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        with self.streams.track(context):
            async for request in requests:
                yield request
                await self._fail_once_ended()

    @rpc
    async def Unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        with self.streams.track(context):
            await self._fail_once_ended()
        return request


@pytest.mark.parametrize("bug", [False, True])
def test_a_handler_failing_after_its_stream_was_ended_keeps_the_status_it_was_ended_with(
    bug: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    """Seen in chaos --ha (seed 3305): a Sequencer stepping down ended its gate streams, their handlers then failed
    with LeadershipLost, and the error table aborted them a second time; grpc refused it (UsageError, logged as a
    servicer's bug). The client must see the first status, and the server report no error of its own; a bug in a
    handler is still logged."""
    streams = LongLivedStreams()
    service = Stepping(streams)
    if bug:
        async def buggy() -> None:
            await service.ended.wait()
            service.finished += 1
            raise KeyError("a handler's bug")
        service._fail_once_ended = buggy  # type: ignore[method-assign]

    async def scenario() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Stepping", {
            "Bidi": grpc.stream_stream_rpc_method_handler(service.Bidi),
            "Unary": grpc.unary_unary_rpc_method_handler(service.Unary),
        })])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stream = channel.stream_stream("/test.Stepping/Bidi")(iter([b"a"]), timeout=10)
                unary = channel.unary_unary("/test.Stepping/Unary")(b"u", timeout=10)
                assert await stream.read() == b"a"
                while len(streams._open) < 2:
                    await asyncio.sleep(0.01)
                await streams.end_all("the Sequencer stepped down")
                service.ended.set()
                for call in (stream, unary):
                    assert (await call.code(), await call.details()) == (
                        grpc.StatusCode.UNAVAILABLE, "the Sequencer stepped down")
                while service.finished < 2:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)  # grpc reports a servicer's error after the handler has ended
        finally:
            await server.stop(None)

    with caplog.at_level(logging.DEBUG):
        run_scenario(scenario())
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [record.name for record in errors] == (["exchange.errors"] * 2 if bug else [])
