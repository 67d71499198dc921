"""What every gRPC process of the cluster shares: server options, health, reflection, shutdown.

Follows grpc's Python examples: reflection names come from the service descriptors, health is set
to NOT_SERVING before a graceful stop so Consul and clients move away before the port closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import hmac
import importlib.util
import inspect
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from exchange.grpc_metrics import ServerMetrics, channel_interceptors
from exchange.metrics import observe_gc_pauses
from exchange.shared.tls import TlsConfig
from exchange.shared.wire import CHANNEL_OPTIONS, CLUSTER_ONLY_METHODS, SERVER_OPTIONS, TOKEN_HEADER


def aio_channel(target: str, tls: TlsConfig | None = None) -> grpc.aio.Channel:
    """A channel of the cluster's processes: their options, TLS when the cluster runs with it, the gRPC client
    metrics when the process serves metrics."""
    interceptors = channel_interceptors()
    if tls is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=interceptors)
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=CHANNEL_OPTIONS,
                                   interceptors=interceptors)


def sync_channel(target: str, tls: TlsConfig | None = None) -> grpc.Channel:
    """The same for blocking callers (tools)."""
    if tls is None:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(target, tls.channel_credentials(), options=CHANNEL_OPTIONS)


# The gRPC transport the cluster's own processes run with (their launch environment: grpc reads it once, when it
# is imported, so it cannot be set from inside a running service). grpcio's default TCP client and listener, the
# EventEngine ones, cost more per message than the older iomgr transport on these machines: a bare bidi
# ping-pong took 140-160 us instead of 215-230 us, with ~30% less CPU per message on each side. The cluster is
# message-bound (gate requests, broadcasts, client calls), and with these two experiments off its unary
# throughput at 64 in flight rose 5-12% (docs/operations.md, "The gRPC transport"). An operator's own
# GRPC_EXPERIMENTS wins.
SERVICE_GRPC_ENV = {"GRPC_EXPERIMENTS": "-event_engine_client,-event_engine_listener"}


# The event loop the services run on: uvloop (libuv) unless EXCHANGE_EVENT_LOOP=asyncio. Every order costs a
# node dozens of loop callbacks (grpc's completions, futures, tasks): measured on a 3-node cluster, unary at 64
# in flight, alternating runs, uvloop took the cluster's CPU per order from 653-710 us to 562-608 us (-14%).
EVENT_LOOP_ENV = "EXCHANGE_EVENT_LOOP"


def event_loop_name() -> str:
    """The event loop this process runs on ("uvloop" or "asyncio": asked for, or uvloop is not installed)."""
    if os.environ.get(EVENT_LOOP_ENV, "uvloop") == "asyncio" or importlib.util.find_spec("uvloop") is None:
        return "asyncio"
    return "uvloop"


def grpc_transport() -> str:
    """The transport and event loop this process runs with, for its start-up log line."""
    experiments = os.environ.get("GRPC_EXPERIMENTS")
    transport = f"GRPC_EXPERIMENTS={experiments}" if experiments else "grpc defaults"
    return f"{transport}, event loop {event_loop_name()}"


LOG_FORMATS = ("text", "json")
# The fields of a log record that name what it is about, when it is about one (set with `extra=log_fields(...)`)
CONTEXT_FIELDS = ("market", "seq", "order_id")


def log_fields(market: str | None = None, seq: int | None = None, order_id: int | None = None) -> dict[str, object]:
    """A log call's `extra`: the market, sequence and order id it is about (docs/operations.md: the JSON logs)."""
    return {name: value for name, value in (("market", market), ("seq", seq), ("order_id", order_id))
            if value is not None}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, process, node, logger, message, and market, seq and
    order_id where the record has them; error: the traceback of a logged exception."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process
        self.node: str | None = None

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "process": self.process,
        }
        if self.node is not None:
            entry["node"] = self.node
        entry["logger"] = record.name
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(name: str, level: str = "INFO", log_format: str = "text") -> None:
    """Logs to stderr, as text lines or (`log_format` "json") one JSON object per line (JsonLogFormatter)."""
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLogFormatter(name))
        logging.basicConfig(level=level.upper(), handlers=[handler])
        return
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def set_log_node(node: str) -> None:
    """Names the process's node (or Sequencer replica) in every JSON log line from now on."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonLogFormatter):
            handler.formatter.node = node


# What a server interceptor is given to resolve a call's handler (grpc.aio's signature).
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class Malformed:
    """Stands in for a request whose bytes did not decode."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def receives_malformed_items(handler: Callable[..., object]) -> Callable[..., object]:
    """Marks a request-streaming handler that gets an undecodable stream item as a `Malformed` value (and
    answers it) instead of grpc failing the whole call."""
    handler.receives_malformed_items = True  # type: ignore[attr-defined]  # a marker attribute on the function
    return handler


class RejectMalformedRequests(grpc.aio.ServerInterceptor):
    """Answers INVALID_ARGUMENT to a request body that is not a valid protobuf message.

    grpc decodes the body before any handler runs, and a decoding error would escape as UNKNOWN. The
    decoder is made safe and the handler refuses what did not decode. Request-streaming handlers marked
    with `receives_malformed_items` get the safe decoder too and answer each `Malformed` item themselves.
    Wrapped handlers are cached per served method, so a call pays one dict lookup; an unknown method name (any
    caller can send any number of them) is not kept.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if (wrapped := self._wrapped.get(method)) is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if handler.request_deserializer is not None:
            if not handler.request_streaming:
                handler = _safely_decoding(handler, method)
            elif getattr(handler.stream_stream or handler.stream_unary, "receives_malformed_items", False):
                handler = handler._replace(request_deserializer=_safe_decoder(handler.request_deserializer))
        self._wrapped[method] = handler
        return handler


def _safe_decoder(decode: Callable[[bytes], object]) -> Callable[[bytes], object]:
    def safe_decode(data: bytes) -> object:
        try:
            return decode(data)
        except Exception as error:  # noqa: BLE001 - any undecodable body is the caller's error
            return Malformed(error)

    return safe_decode


def _safely_decoding(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    safe_decode = _safe_decoder(handler.request_deserializer)

    async def refuse(context: grpc.aio.ServicerContext, request: Malformed) -> None:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request body is not a valid message for {method}: {request.error}",
        )

    if handler.unary_unary is not None:
        behavior = handler.unary_unary

        async def unary(request: object, context: grpc.aio.ServicerContext) -> object:
            if isinstance(request, Malformed):
                await refuse(context, request)
            return await behavior(request, context)

        return handler._replace(request_deserializer=safe_decode, unary_unary=unary)
    stream_behavior = handler.unary_stream

    async def stream(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
        if isinstance(request, Malformed):
            await refuse(context, request)
        produced = stream_behavior(request, context)
        if inspect.isasyncgen(produced):  # handlers that yield ...
            async for item in produced:
                yield item
        else:  # ... and handlers that call context.write(), like health's Watch
            await produced

    return handler._replace(request_deserializer=safe_decode, unary_stream=stream,
                            response_serializer=_passing_serialised(handler.response_serializer))


def _passing_serialised(serialize: Callable[[object], bytes] | None) -> Callable[[object], bytes] | None:
    """A response-streaming handler may yield a message already serialised (bytes): a public stream builds one
    update's message once for all its subscribers (exchange/node/pacing.py); it is sent as it is."""
    if serialize is None:
        return None

    def serialize_or_pass(message: object) -> bytes:
        return message if type(message) is bytes else serialize(message)

    return serialize_or_pass


class RequireClusterToken(grpc.aio.ServerInterceptor):
    """PERMISSION_DENIED, before any handler runs, for a cluster-internal method (`methods`) called without
    the cluster token in its `header` metadata. The one check for every such method of a server."""

    def __init__(self, token: str, methods: Collection[str], header: str) -> None:
        self._token = token
        self._methods = frozenset(methods)
        self._header = header
        self._denials: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method not in self._methods:
            return await continuation(handler_call_details)
        for key, value in handler_call_details.invocation_metadata or ():
            if key == self._header and hmac.compare_digest(str(value), self._token):
                return await continuation(handler_call_details)
        denial = self._denials.get(method)
        if denial is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            denial = self._denials[method] = _denying(handler, method, self._header)
        return denial


def _denying(handler: grpc.RpcMethodHandler, method: str, header: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers PERMISSION_DENIED without reading the request."""
    message = (f"{method} is for the cluster's own processes only: the {header} metadata is missing or wrong "
               "(it is derived from the cluster secret, EXCHANGE_CLUSTER_SECRET)")

    async def deny(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

    async def deny_stream(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
        yield  # pragma: no cover - an async generator, for the streaming-response kinds

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler(deny),
        (True, False): grpc.stream_unary_rpc_method_handler(deny),
        (False, True): grpc.unary_stream_rpc_method_handler(deny_stream),
        (True, True): grpc.stream_stream_rpc_method_handler(deny_stream),
    }
    return kinds[(handler.request_streaming, handler.response_streaming)]


class LongLivedStreams:
    """A server's open long-lived streams (peer broadcast streams, gate streams).

    A graceful stop waits its whole grace period for the RPCs in progress, and these never end by
    themselves: the service tracks them, and they are ended with UNAVAILABLE right before the server stops.
    """

    def __init__(self) -> None:
        self._open: set[grpc.aio.ServicerContext] = set()

    @contextlib.contextmanager
    def track(self, context: grpc.aio.ServicerContext) -> Iterator[None]:
        self._open.add(context)
        try:
            yield
        finally:
            self._open.discard(context)

    async def end_all(self, why: str) -> None:
        for context in list(self._open):
            try:
                await context.abort(grpc.StatusCode.UNAVAILABLE, why)
            except grpc.aio.AbortError:
                pass
            except Exception as error:  # noqa: BLE001 - the call ended meanwhile (its client went away): no status
                # can be sent on it any more, and grpc says so with its core's ExecuteBatchError (chaos --ha seed 8:
                # a Sequencer stepping down, uncaught in its task, logged a traceback)
                logging.getLogger(__name__).debug("a long-lived stream had ended before it was ended: %r", error)


Request = TypeVar("Request")
Started = TypeVar("Started")
Answer = TypeVar("Answer")


@dataclass(frozen=True, slots=True)
class _ReadFailed:
    """The request side of a stream failed (the stream ends with this error)."""

    error: BaseException


async def answered_in_order(
    requests: AsyncIterator[Request], start: Callable[[Request], Awaitable[Started]],
    finish: Callable[[Started], Awaitable[Answer]], window: int,
) -> AsyncIterator[Answer]:
    """The pipeline of a bidi stream (the order-entry streams, the Sequencer's gate stream): starts each
    request as it arrives, one after the other in request order (the next is read once `start` returned; at
    most `window` started and not yet answered), and yields their answers in request order. A `start` that
    raises ends the stream with its error once the answers before it are sent. Started requests complete
    even if the stream ends first (the client is gone: they stay unanswered)."""
    slots = asyncio.Semaphore(window)
    started: asyncio.Queue[Started | _ReadFailed | None] = asyncio.Queue()

    async def read() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                started.put_nowait(await start(request))
            started.put_nowait(None)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 - handed to the stream, which answers it
            started.put_nowait(_ReadFailed(error))

    reader = asyncio.ensure_future(read())
    try:
        while (item := await started.get()) is not None:
            if isinstance(item, _ReadFailed):
                raise item.error
            answer = await finish(item)
            slots.release()
            yield answer
    finally:
        reader.cancel()


def at_once(start: Callable[[Request], Started]) -> Callable[[Request], Awaitable[Started]]:
    """A `start` of `answered_in_order` that needs no await."""

    async def begin(request: Request) -> Started:
        return start(request)

    return begin


class GrpcServer:
    """An aio server with health and reflection, bound to one address; the cluster-internal methods among
    its services (exchange.shared.wire.CLUSTER_ONLY_METHODS) require the cluster token."""

    def __init__(
        self, bind: str, services: Iterable[ServiceDescriptor], cluster_token: str, tls: TlsConfig | None = None,
        metrics: bool = False,
    ) -> None:
        """`metrics`: record every call (exchange/grpc_metrics.py), those the other interceptors refuse too."""
        interceptors: list[grpc.aio.ServerInterceptor] = [
            RequireClusterToken(cluster_token, CLUSTER_ONLY_METHODS, TOKEN_HEADER),
            RejectMalformedRequests(),
        ]
        if metrics:
            interceptors.insert(0, ServerMetrics())
        self.server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = [service.full_name for service in services]
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        try:
            if tls is None:
                self.port = self.server.add_insecure_port(bind)
            else:
                self.port = self.server.add_secure_port(bind, tls.server_credentials())
        except RuntimeError:  # grpc's "Failed to bind"
            self.port = 0
        if self.port == 0:
            raise SystemExit(f"cannot listen on {bind}: the address is in use or not this machine's")

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)


def log_tasks() -> None:
    """Logs the stack of every asyncio task of the running loop (what a hung process waits for)."""
    log = logging.getLogger("tasks")
    tasks = asyncio.all_tasks()
    log.warning("SIGUSR1: %d asyncio tasks", len(tasks))
    for task in tasks:
        frames = "".join(f"\n    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
                         for frame in task.get_stack())
        log.warning("task %s:%s", task.get_name(), frames)


async def wait_for_signal() -> str:
    """Returns the name of the first SIGTERM or SIGINT received. Meanwhile SIGUSR1 logs every asyncio task's
    stack (the test harness sends it before printing the logs of a failed test)."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, log_tasks)
    received: asyncio.Future[str] = loop.create_future()

    def note(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig.name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, note, sig)
    return await received


# Python's default collector thresholds (700, 10, 10) suit small heaps. A node keeps a large long-lived one
# (the journal: ~3 tracked objects per command, up to 100k commands per market; the books' orders), and a
# collection costs about a microsecond per object it scans here. Measured on a 3-node cluster under 36 s of mixed
# load (unary at 8 and 64 in flight, batches of 100; exchange_gc_pause_seconds over each node's CPU time): at
# (10_000, 10, 10) a node spent 14% of its CPU in the collector, half of it in generation-1 collections of ~165 ms
# each; at these, 8%, all of it young collections (~80 ms each, one every ~2 s), and no full collection.
GC_THRESHOLDS = (50_000, 20, 100)


def configure_gc() -> None:
    """Fewer collections of the older generations, the start-up heap (modules, descriptors) frozen out of every
    scan, and every pause timed (exchange_gc_pause_seconds)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    observe_gc_pauses()


def run(main: Callable[[], Coroutine[object, object, None]]) -> None:
    """Runs a service's main coroutine on its event loop (with the collector configured for a long-lived
    heap)."""
    configure_gc()
    with contextlib.suppress(KeyboardInterrupt):
        if event_loop_name() == "uvloop":
            import uvloop

            uvloop.run(main())
        else:
            asyncio.run(main())
