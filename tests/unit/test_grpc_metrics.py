"""The gRPC metrics interceptors (exchange/grpc_metrics.py) on a real in-process grpc.aio server on loopback:
every kind of call, every status code, message counts, on both sides."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from prometheus_client import REGISTRY

from exchange.grpc_metrics import BIDI_STREAM, ClientStream, ServerMetrics, client_interceptors
from tests.unit.fakes import run_scenario

SERVICE = "test.metrics.Echo"
# a status a handler ends with, named by the request (raw bytes: no serializers)
CODES = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def settled(name: str, expected: float, **labels: str) -> float:
    """The value of a server-side series once it reaches `expected` (or after 5 s): the server records a call
    right after it sends the status, which the client may see first."""
    for _ in range(500):
        if value(name, **labels) == expected:
            break
        await asyncio.sleep(0.01)
    return value(name, **labels)


def labels(kind: str, method: str, **more: str) -> dict[str, str]:
    return {"grpc_type": kind, "grpc_service": SERVICE, "grpc_method": method, **more}


async def _end(context: grpc.aio.ServicerContext, wanted: bytes) -> None:
    if wanted == b"OK":
        return
    if wanted == b"RAISE":
        raise RuntimeError("a handler's bug")
    await context.abort(grpc.StatusCode[wanted.decode()], "as asked")


async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await _end(context, request)
    return request


async def server_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    count, _, wanted = request.partition(b":")
    for _ in range(int(count)):
        yield b"item"
    await _end(context, wanted)


async def client_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    last = b"OK"
    async for request in requests:
        last = request
    await _end(context, last)
    return b"done"


async def bidi(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for request in requests:
        if request != b"item":
            await _end(context, request)
            return
        yield request


def on_channel(scenario: Callable[[grpc.aio.Channel], Awaitable[None]]) -> None:
    """Runs `scenario` with a channel (client interceptor) to a fresh server (server interceptor) on loopback,
    within the test's own deadline."""
    run_scenario(_on_channel(scenario))


async def _on_channel(scenario: Callable[[grpc.aio.Channel], Awaitable[None]]) -> None:
    server = grpc.aio.server(interceptors=[ServerMetrics()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=client_interceptors()) as channel:
            await scenario(channel)
    finally:
        await server.stop(None)


@pytest.mark.parametrize("wanted", ["OK", *(code.name for code in CODES), "RAISE"])
def test_unary_calls_count_once_per_side_with_their_status(wanted: str) -> None:
    async def scenario(channel: grpc.aio.Channel) -> None:
        code = "UNKNOWN" if wanted == "RAISE" else wanted
        method = labels("unary", "Unary")
        before = {side: (value(f"grpc_{side}_started_total", **method),
                         value(f"grpc_{side}_handled_total", **method, grpc_code=code),
                         value(f"grpc_{side}_handling_seconds_count", **method),
                         value(f"grpc_{side}_msg_received_total", **method),
                         value(f"grpc_{side}_msg_sent_total", **method)) for side in ("server", "client")}
        call = channel.unary_unary(f"/{SERVICE}/Unary")(wanted.encode(), timeout=10)
        if code == "OK":
            assert await call == b"OK"
        else:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            assert raised.value.code().name == code
        ok = 1 if code == "OK" else 0
        server, client = before["server"], before["client"]
        assert await settled("grpc_server_started_total", server[0] + 1, **method) == server[0] + 1
        assert await settled("grpc_server_handled_total", server[1] + 1, **method, grpc_code=code) == server[1] + 1
        assert await settled("grpc_server_handling_seconds_count", server[2] + 1, **method) == server[2] + 1
        assert await settled("grpc_server_msg_received_total", server[3] + 1, **method) == server[3] + 1
        assert await settled("grpc_server_msg_sent_total", server[4] + ok, **method) == server[4] + ok
        assert value("grpc_client_started_total", **method) == client[0] + 1
        assert value("grpc_client_handled_total", **method, grpc_code=code) == client[1] + 1
        assert value("grpc_client_handling_seconds_count", **method) == client[2] + 1
        assert value("grpc_client_msg_sent_total", **method) == client[4] + 1
        assert value("grpc_client_msg_received_total", **method) == client[3] + ok

    on_channel(scenario)


@pytest.mark.parametrize("wanted", ["OK", "RESOURCE_EXHAUSTED", "RAISE"])
def test_server_streams_count_each_message(wanted: str) -> None:
    async def scenario(channel: grpc.aio.Channel) -> None:
        code = "UNKNOWN" if wanted == "RAISE" else wanted
        method = labels("server_stream", "ServerStream")
        sent = value("grpc_server_msg_sent_total", **method)
        received = value("grpc_client_msg_received_total", **method)
        handled = [value(f"grpc_{side}_handled_total", **method, grpc_code=code) for side in ("server", "client")]
        got = []
        try:
            async for item in channel.unary_stream(f"/{SERVICE}/ServerStream")(f"3:{wanted}".encode(), timeout=10):
                got.append(item)
        except grpc.aio.AioRpcError as error:
            assert error.code().name == code
        assert got == [b"item"] * 3
        assert await settled("grpc_server_msg_sent_total", sent + 3, **method) == sent + 3
        assert value("grpc_client_msg_received_total", **method) == received + 3
        assert [value(f"grpc_{side}_handled_total", **method, grpc_code=code) for side in ("server", "client")] == [
            h + 1 for h in handled]

    on_channel(scenario)


@pytest.mark.parametrize("wanted", ["OK", "INVALID_ARGUMENT"])
def test_client_streams_count_each_message_on_the_server(wanted: str) -> None:
    async def scenario(channel: grpc.aio.Channel) -> None:
        method = labels("client_stream", "ClientStream")
        received = value("grpc_server_msg_received_total", **method)
        handled = value("grpc_server_handled_total", **method, grpc_code=wanted)
        sent = value("grpc_server_msg_sent_total", **method)

        async def requests() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"item"
            yield wanted.encode()

        try:
            assert await channel.stream_unary(f"/{SERVICE}/ClientStream")(requests(), timeout=10) == b"done"
        except grpc.aio.AioRpcError as error:
            assert error.code().name == wanted
        assert await settled("grpc_server_msg_received_total", received + 4, **method) == received + 4
        assert await settled("grpc_server_handled_total", handled + 1, **method, grpc_code=wanted) == handled + 1
        assert await settled("grpc_server_msg_sent_total", sent + (wanted == "OK"), **method) == sent + (wanted == "OK")

    on_channel(scenario)


def test_bidi_streams_count_both_ways_and_the_client_stream_helper() -> None:
    async def scenario(channel: grpc.aio.Channel) -> None:
        method = labels(BIDI_STREAM, "Bidi")
        names = ("grpc_server_msg_received_total", "grpc_server_msg_sent_total", "grpc_client_msg_sent_total",
                 "grpc_client_msg_received_total", "grpc_client_started_total")
        before = [value(name, **method) for name in names]
        server_ok = value("grpc_server_handled_total", **method, grpc_code="OK")
        client_aborted = value("grpc_client_handled_total", **method, grpc_code="ABORTED")
        stream = ClientStream(f"/{SERVICE}/Bidi")
        stream.opened()
        call = channel.stream_stream(f"/{SERVICE}/Bidi")(timeout=10)
        for _ in range(5):
            await call.write(b"item")
            stream.sent()
            assert await call.read() == b"item"
            stream.received()
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
        stream.ended(grpc.StatusCode.ABORTED)  # whatever the caller saw: the helper records what it is told
        expected = [b + n for b, n in zip(before, (5, 5, 5, 5, 1), strict=True)]
        assert [value(name, **method) for name in names] == expected
        assert value("grpc_server_handled_total", **method, grpc_code="OK") == server_ok + 1
        assert value("grpc_client_handled_total", **method, grpc_code="ABORTED") == client_aborted + 1

    on_channel(scenario)


def test_a_cancelled_call_counts_as_cancelled_on_the_server() -> None:
    async def scenario(channel: grpc.aio.Channel) -> None:
        method = labels("server_stream", "ServerStream")
        cancelled = value("grpc_server_handled_total", **method, grpc_code="CANCELLED")
        call = channel.unary_stream(f"/{SERVICE}/ServerStream")(b"1000000:OK", timeout=10)
        await call.read()
        call.cancel()
        for _ in range(200):
            if value("grpc_server_handled_total", **method, grpc_code="CANCELLED") == cancelled + 1:
                break
            await asyncio.sleep(0.01)
        assert value("grpc_server_handled_total", **method, grpc_code="CANCELLED") == cancelled + 1

    on_channel(scenario)
