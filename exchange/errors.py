"""The one table that maps failures to gRPC status codes, and the decorator every servicer uses.

Handlers raise an `ExchangeError` subclass with a message a person can act on; the decorator turns
it into the matching status. Anything else is a bug: logged with its traceback and answered INTERNAL,
so UNKNOWN never escapes a server.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc

log = logging.getLogger(__name__)


class ExchangeError(Exception):
    """A failure with a message for the caller; its class decides the gRPC status."""


class InvalidArgument(ExchangeError):
    """The request is malformed or impossible, whatever the state of the book."""


class NotFound(ExchangeError):
    """Unknown market, unknown or finished order."""


class Aborted(ExchangeError):
    """The order was invalidated by a stale view more times than allowed; nothing of it exists."""


class Unavailable(ExchangeError):
    """The Sequencer or peers cannot be reached, or the node is still catching up."""


class PermissionDenied(ExchangeError):
    """A peer-only call from a caller without the cluster token."""


class FailedPrecondition(ExchangeError):
    """The system is not in a state where the call can work (e.g. a node ahead of the Sequencer)."""


class OutOfRange(ExchangeError):
    """A resume point that this node no longer retains."""


STATUS_BY_ERROR: dict[type[ExchangeError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Aborted: grpc.StatusCode.ABORTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
}


def status_of(error: ExchangeError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return grpc.StatusCode.INTERNAL


async def _abort(context: grpc.aio.ServicerContext, error: BaseException, method: str) -> None:
    if isinstance(error, ExchangeError):
        await context.abort(status_of(error), str(error))
    log.exception("unexpected error in %s", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(error).__name__}")


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
