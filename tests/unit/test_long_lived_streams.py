"""Ending a server's long-lived streams before it stops or steps down."""

from __future__ import annotations

import asyncio

import grpc

from exchange.runtime import LongLivedStreams


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

    asyncio.run(scenario())
    assert [context.aborted for context in contexts] == [[grpc.StatusCode.UNAVAILABLE]] * 3
