"""gRPC metrics under go-grpc-prometheus's names, from one grpc.aio server interceptor and one client interceptor.

py-grpc-prometheus has no asyncio support; these are the same series, written on prometheus_client:
`grpc_server_started_total`, `grpc_server_handled_total` (with `grpc_code`), `grpc_server_msg_received_total`,
`grpc_server_msg_sent_total`, `grpc_server_handling_seconds` (histogram), each labelled `grpc_type`
(unary, client_stream, server_stream, bidi_stream), `grpc_service` and `grpc_method`; `grpc_client_*` likewise
(`grpc_client_handling_seconds` is the whole call as the client sees it).

Hot-path cost: each method's label children are bound once (the first call of the method), so a call pays a few
counter increments and one histogram observation, never a label lookup or a string format.

The client interceptor covers the calls with one request (unary and server-streaming). A channel with a
request-streaming interceptor routes every `write` of every such call through a queue and two asyncio tasks
(grpc.aio's InterceptedStreamStreamCall), which costs each message of the node's long-lived gate and broadcast
streams and changes when `write` returns, which the gate stream relies on (exchange/node/sequencer_link.py, GateStream).
Those streams record the same client series through `ClientStream` instead.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from exchange.metrics import STREAM_SUBSCRIBERS

# go-grpc-prometheus's default buckets (prometheus.DefBuckets)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LABELS = ("grpc_type", "grpc_service", "grpc_method")
UNARY, CLIENT_STREAM, SERVER_STREAM, BIDI_STREAM = "unary", "client_stream", "server_stream", "bidi_stream"
OK = grpc.StatusCode.OK


def _family(side: str) -> tuple[Counter, Counter, Counter, Counter, Histogram]:
    what = "the server" if side == "server" else "the client"
    return (
        Counter(f"grpc_{side}_started_total", f"RPCs started on {what}.", LABELS),
        Counter(f"grpc_{side}_handled_total", f"RPCs completed on {what}, whatever their status.",
                (*LABELS, "grpc_code")),
        Counter(f"grpc_{side}_msg_received_total", f"Stream messages received by {what}.", LABELS),
        Counter(f"grpc_{side}_msg_sent_total", f"Stream messages sent by {what}.", LABELS),
        Histogram(f"grpc_{side}_handling_seconds", f"RPC duration until completed by {what}.", LABELS,
                  buckets=BUCKETS),
    )


SERVER = _family("server")
CLIENT = _family("client")


def rpc_type(request_streaming: bool, response_streaming: bool) -> str:
    if request_streaming:
        return BIDI_STREAM if response_streaming else CLIENT_STREAM
    return SERVER_STREAM if response_streaming else UNARY


class MethodMetrics:
    """One method's label children on one side (server or client), bound once."""

    __slots__ = ("started", "received", "sent", "seconds", "_handled", "_handled_children", "_labels")

    def __init__(self, family: tuple[Counter, Counter, Counter, Counter, Histogram], full_method: str,
                 kind: str) -> None:
        service, _, method = full_method.lstrip("/").rpartition("/")
        self._labels = (kind, service, method)
        started, self._handled, received, sent, seconds = family
        self.started = started.labels(*self._labels)
        self.received = received.labels(*self._labels)
        self.sent = sent.labels(*self._labels)
        self.seconds = seconds.labels(*self._labels)
        self._handled_children: dict[grpc.StatusCode, Any] = {}

    def start(self) -> float:
        """Counts a call started; returns when, for `handled`."""
        self.started.inc()
        return time.perf_counter()

    def handled(self, code: grpc.StatusCode, began: float) -> None:
        child = self._handled_children.get(code)
        if child is None:
            child = self._handled_children[code] = self._handled.labels(*self._labels, code.name)
        child.inc()
        self.seconds.observe(time.perf_counter() - began)


def _status_of(error: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status a server handler that raised `error` ends its call with."""
    if isinstance(error, grpc.aio.AbortError):
        return context.code() or grpc.StatusCode.UNKNOWN
    if isinstance(error, asyncio.CancelledError | GeneratorExit):  # the call was cancelled, or the client left
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class ServerMetrics(grpc.aio.ServerInterceptor):
    """Records every call of a server (put it first among the server's interceptors, so that calls refused by
    the others count too). Wrapped handlers are kept per handler: a call pays one dict lookup."""

    def __init__(self) -> None:
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        known = self._wrapped.get(id(handler))
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = _recording(handler, handler_call_details.method)
        self._wrapped[id(handler)] = (handler, wrapped)  # keeps `handler` alive: its id stays its own
        return wrapped


def _recording(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    kind = rpc_type(handler.request_streaming, handler.response_streaming)
    m = MethodMetrics(SERVER, method, kind)

    async def counted(requests: AsyncIterable[Any]) -> AsyncIterator[Any]:
        received = m.received
        async for request in requests:
            received.inc()
            yield request

    def started(request: Any) -> tuple[float, Any]:
        """Counts a call started and its request (a request stream: each message as the handler reads it)."""
        if handler.request_streaming:
            request = counted(request)
        else:
            m.received.inc()
        return m.start(), request

    def code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
        code = context.code()
        return OK if code is None else code

    if not handler.response_streaming:
        behavior = handler.unary_unary or handler.stream_unary

        async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
            began, request = started(request)
            try:
                response = await behavior(request, context)
            except BaseException as error:
                m.handled(_status_of(error, context), began)
                raise
            code = code_of(context)
            if code is OK:
                m.sent.inc()
            m.handled(code, began)
            return response

        if handler.request_streaming:
            return handler._replace(stream_unary=unary_response)
        return handler._replace(unary_unary=unary_response)

    stream_behavior = handler.unary_stream or handler.stream_stream
    subscribers = STREAM_SUBSCRIBERS.labels(method.rpartition("/")[2])

    async def streamed_response(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        began, request = started(request)
        subscribers.inc()
        try:
            produced = stream_behavior(request, context)
            if inspect.isasyncgen(produced):  # handlers that yield ...
                sent = m.sent
                async for item in produced:
                    sent.inc()
                    yield item
            else:  # ... and handlers that call context.write() (not counted: grpc sends those itself)
                await produced
        except BaseException as error:
            m.handled(_status_of(error, context), began)
            raise
        finally:
            subscribers.dec()
        m.handled(code_of(context), began)

    if handler.request_streaming:
        return handler._replace(stream_stream=streamed_response)
    return handler._replace(unary_stream=streamed_response)


class ClientMetrics:
    """Records every call with one request made on a channel (see the module docstring for the others).

    grpc.aio gives an interceptor object the calls of one kind only (the first of its interceptor classes it
    derives from), so a channel gets this interceptor as two objects, one per kind: `client_interceptors()`."""

    def __init__(self) -> None:
        self._methods: dict[tuple[str, str], MethodMetrics] = {}

    def _method(self, method: str | bytes, kind: str) -> MethodMetrics:
        name = method.decode() if isinstance(method, bytes) else method
        m = self._methods.get((name, kind))
        if m is None:
            m = self._methods[(name, kind)] = MethodMetrics(CLIENT, name, kind)
        return m

    async def _call(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any,
                    kind: str) -> tuple[MethodMetrics, float, Any]:
        """Counts a call started and its one request, and starts it."""
        m = self._method(client_call_details.method, kind)
        began = m.start()
        m.sent.inc()
        return m, began, await continuation(client_call_details, request)

    async def intercept_unary_unary(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
                                    request: Any) -> Any:
        m, began, call = await self._call(continuation, client_call_details, request, UNARY)
        try:
            await call
        except grpc.aio.AioRpcError as error:
            m.handled(error.code(), began)
            return call
        except BaseException:
            m.handled(grpc.StatusCode.CANCELLED, began)
            raise
        m.received.inc()
        m.handled(OK, began)
        return call

    async def intercept_unary_stream(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
                                     request: Any) -> Any:
        m, began, call = await self._call(continuation, client_call_details, request, SERVER_STREAM)
        return _received(call, m, began)


async def _received(call: AsyncIterable[Any], m: MethodMetrics, began: float) -> AsyncIterator[Any]:
    code = OK
    try:
        async for response in call:
            m.received.inc()
            yield response
    except grpc.aio.AioRpcError as error:
        code = error.code()
        raise
    except BaseException:  # cancelled, or the caller stopped reading (GeneratorExit)
        code = grpc.StatusCode.CANCELLED
        raise
    finally:
        m.handled(code, began)


class ClientStream:
    """The client series of a long-lived request stream the caller writes itself (see the module docstring):
    `opened` per call, `sent` and `received` per message, `ended` once per call."""

    def __init__(self, full_method: str, kind: str = BIDI_STREAM) -> None:
        self.m = MethodMetrics(CLIENT, full_method, kind)
        self.sent = self.m.sent.inc
        self.received = self.m.received.inc
        self._began: float | None = None

    def opened(self) -> None:
        if self._began is not None:
            self.ended(grpc.StatusCode.CANCELLED)
        self._began = self.m.start()

    def ended(self, code: grpc.StatusCode) -> None:
        if self._began is not None:
            self.m.handled(code, self._began)
            self._began = None


class _UnaryUnaryMetrics(ClientMetrics, grpc.aio.UnaryUnaryClientInterceptor):
    pass


class _UnaryStreamMetrics(ClientMetrics, grpc.aio.UnaryStreamClientInterceptor):
    pass


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """The client interceptor for a channel's `interceptors`: the unary and the server-streaming calls."""
    return [_UnaryUnaryMetrics(), _UnaryStreamMetrics()]


_client_interceptors: list[grpc.aio.ClientInterceptor] = []


def enable_client_metrics() -> None:
    """From now on the process's channels (exchange.runtime.aio_channel) record their calls."""
    if not _client_interceptors:
        _client_interceptors.extend(client_interceptors())


def channel_interceptors() -> list[grpc.aio.ClientInterceptor] | None:
    """The interceptors of a new channel of this process (None while client metrics are off)."""
    return list(_client_interceptors) or None


def client_stream(full_method: str) -> ClientStream | None:
    """A long-lived stream's client series (None while client metrics are off)."""
    return ClientStream(full_method) if _client_interceptors else None
