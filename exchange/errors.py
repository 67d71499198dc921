"""The one hierarchy of the exchange's failures, for both directions, and the decorator every servicer uses.

Servers: handlers raise an `ExchangeError` subclass with a message a person can act on; the decorator turns it
into the matching status (`STATUS_BY_ERROR`). Anything else is a bug: logged with its traceback and answered
INTERNAL, so UNKNOWN never escapes a server.

Clients (`exchange.client`): `error_from_status` turns a status code and message back into the same classes, so
a caller catches `NotFound` or `InvalidArgument` whichever side raised it. Every error has its `code` (a
grpc.StatusCode) and `retriable`: True where sending the same request again may succeed (UNAVAILABLE,
DEADLINE_EXCEEDED, ABORTED). Retrying is safe only for a request that is idempotent (a new order with a
client_order_id, a read); see docs/client.md for what the client library retries.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable
from typing import Any, ClassVar

import grpc

log = logging.getLogger(__name__)


class ExchangeError(Exception):
    """A failure with a message for the caller; its class decides the gRPC status (`code`).

    `retriable`: whether the same request may succeed if sent again (to this node or another). A bare
    ExchangeError stands for a status with no class of its own (e.g. UNKNOWN, from a proxy): `code` says which."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retriable: ClassVar[bool] = False

    def __init__(self, message: str = "", *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code.name})"


class InvalidArgument(ExchangeError):
    """The request is malformed or impossible, whatever the state of the book."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ExchangeError):
    """Unknown market, unknown or finished order."""

    code = grpc.StatusCode.NOT_FOUND


class Aborted(ExchangeError):
    """The order was invalidated by a stale view more times than allowed; nothing of it exists."""

    code = grpc.StatusCode.ABORTED
    retriable = True


class Unavailable(ExchangeError):
    """The Sequencer or peers cannot be reached, or the node is still catching up (or, seen by a client, the
    node itself cannot be reached or the connection dropped)."""

    code = grpc.StatusCode.UNAVAILABLE
    retriable = True


class PermissionDenied(ExchangeError):
    """A peer-only call from a caller without the cluster token."""

    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(ExchangeError):
    """The system is not in a state where the call can work (e.g. a node ahead of the Sequencer)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(ExchangeError):
    """A resume point that this node no longer retains."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unauthenticated(ExchangeError):
    """The call carries no valid credentials (an API key, when the cluster requires one)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(ExchangeError):
    """A request over the size limit, or an account over its rate limit: then the message ends with
    `retry_hint` (when the same request may succeed), which `retry_after_s` reads back (the client paces)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    @property
    def retry_after_s(self) -> float | None:
        """Seconds to wait before the same request may succeed; None if it never will (no hint)."""
        found = _RETRY_HINT.search(self.message)
        return int(found.group(1)) / 1000 if found else None


_RETRY_HINT = re.compile(r"retry in (\d+) ms$")


def retry_hint(wait_ms: int) -> str:
    """The end of a rate limit's message: when to retry (the one format `ResourceExhausted.retry_after_s` reads)."""
    return f"retry in {wait_ms} ms"


class DeadlineExceeded(ExchangeError):
    """No answer in time: the request may or may not have taken effect."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    retriable = True


class Internal(ExchangeError):
    """A bug on the other side (its log has the traceback)."""

    code = grpc.StatusCode.INTERNAL


class Cancelled(ExchangeError):
    """The call was cancelled (by the caller, or the server stopping it)."""

    code = grpc.StatusCode.CANCELLED


class Unimplemented(ExchangeError):
    """The server does not have this method (an older node)."""

    code = grpc.StatusCode.UNIMPLEMENTED


ERROR_CLASSES: tuple[type[ExchangeError], ...] = (
    InvalidArgument, NotFound, Aborted, Unavailable, PermissionDenied, FailedPrecondition, OutOfRange,
    Unauthenticated, ResourceExhausted, DeadlineExceeded, Internal, Cancelled, Unimplemented,
)
STATUS_BY_ERROR: dict[type[ExchangeError], grpc.StatusCode] = {cls: cls.code for cls in ERROR_CLASSES}
ERROR_BY_STATUS: dict[grpc.StatusCode, type[ExchangeError]] = {cls.code: cls for cls in ERROR_CLASSES}
_STATUS_BY_NAME = {code.name: code for code in grpc.StatusCode}


def status_of(error: ExchangeError) -> grpc.StatusCode:
    return error.code


def error_from_status(code: grpc.StatusCode | str, message: str = "") -> ExchangeError:
    """The exception for a status: `code` a grpc.StatusCode or its name (as OrderEntryError carries it).
    A code without a class of its own (UNKNOWN, ALREADY_EXISTS, DATA_LOSS, a name not known) gives a bare
    ExchangeError carrying it (an unknown name: UNKNOWN)."""
    if isinstance(code, str):
        code = _STATUS_BY_NAME.get(code, grpc.StatusCode.UNKNOWN)
    cls = ERROR_BY_STATUS.get(code)
    return cls(message) if cls is not None else ExchangeError(message, code=code)


def error_from_rpc(error: grpc.RpcError) -> ExchangeError:
    """The exception for a failed grpc call (sync or asyncio), with its status and details."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    exception = error_from_status(code or grpc.StatusCode.UNKNOWN, details or "")
    exception.__cause__ = error
    return exception


async def _abort(context: grpc.aio.ServicerContext, error: BaseException, method: str) -> None:
    """Ends the call with the status for `error` (a bug: INTERNAL, and its traceback in the log). A call already
    ended keeps its status: a long-lived stream ended from outside its handler (LongLivedStreams.end_all, as a
    Sequencer steps down) often fails right after, and grpc refuses a second abort with a UsageError it logs as a
    servicer's bug. The handler then ends quietly, and grpc finishes the call with the status it has."""
    if isinstance(error, ExchangeError):
        code, details = status_of(error), str(error)
    else:
        log.exception("unexpected error in %s", method, exc_info=error)
        code, details = grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(error).__name__}"
    if context.done():
        log.debug("%s failed after its call had ended: %r", method, error)
        return
    await context.abort(code, details)


def rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps an async grpc.aio handler with the error table: unary, or (an async generator) server- or
    bidi-streaming; a bidi handler gets the request iterator as `request`."""
    name = method.__name__
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except (grpc.aio.AbortError, GeneratorExit):
                raise
            except Exception as error:  # noqa: BLE001 - every failure gets a status
                await _abort(context, error, name)

        return stream_wrapper

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # noqa: BLE001 - every failure gets a status
            await _abort(context, error, name)

    return unary_wrapper
