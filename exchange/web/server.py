"""The web console's HTTP side (aiohttp): one page, its static files, a Server-Sent Events stream of the cluster and
its markets, and a small JSON API for a person's orders.

Security (docs/security.md, "The web console"): the API key lives only in the page's memory and comes with each
request in the `Authorization: Bearer <key>` header; it is forwarded to the node as the same metadata and never
stored, logged or set as a cookie, so no other site's page can send a request that carries it. Every response
carries a strict Content-Security-Policy (scripts and styles only from this origin's files, no inline code, no
framing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.resources import files
from typing import Any

import grpc
from aiohttp import web

from exchange.client import AsyncClient, NewOrder, OrderType, Side
from exchange.errors import ExchangeError, InvalidArgument
from exchange.web.feed import Feed, FeedConfig

log = logging.getLogger("web")

STATIC = files("exchange.web") / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATIC_TYPES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css",
                "charts.js": "text/javascript", "favicon.svg": "image/svg+xml"}
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ABORTED: 409, grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
KEY_HINT = "paste your API key in the key field above (the demo's are in .cluster/api-keys); it stays in this page"
HEARTBEAT_S = 15.0
SUBSCRIBER_QUEUE = 1000  # messages a slow page may fall behind by before its stream is ended (it reconnects)

FEED = web.AppKey("feed", Feed)


class Hub:
    """Fans the feed's messages out to every open event stream."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[tuple[str, Any] | None]] = set()

    def publish(self, kind: str, message: dict[str, Any]) -> None:
        for queue in list(self.queues):
            if queue.qsize() >= SUBSCRIBER_QUEUE:
                self.queues.discard(queue)
                queue.put_nowait(None)  # too slow: its stream ends, the page reconnects and starts afresh
            else:
                queue.put_nowait((kind, message))

    @contextlib.contextmanager
    def subscribe(self) -> Any:
        queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()
        self.queues.add(queue)
        try:
            yield queue
        finally:
            self.queues.discard(queue)

    def close(self) -> None:
        for queue in list(self.queues):
            queue.put_nowait(None)
        self.queues.clear()


HUB = web.AppKey("hub", Hub)


@web.middleware
async def security_headers(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as error:
        error.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"
    return response


def error_response(error: ExchangeError) -> web.Response:
    body = {"code": error.code.name, "message": error.message}
    if error.code == grpc.StatusCode.UNAUTHENTICATED:
        body["hint"] = KEY_HINT
    return web.json_response({"error": body}, status=HTTP_STATUS.get(error.code, 500))


def api_key(request: web.Request) -> str:
    """The key of `Authorization: Bearer <key>` ("" without one: the node then says UNAUTHENTICATED)."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; a body that is not one is INVALID_ARGUMENT. JSON only: a cross-site form
    cannot send it without the browser asking this server first (which it refuses)."""
    if request.content_type != "application/json":
        raise InvalidArgument("send the request as application/json")
    try:
        body = await request.json()
    except (ValueError, LookupError) as error:  # LookupError: a charset Python does not know
        raise InvalidArgument(f"the body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the body must be a JSON object")
    return body


def integer(body: dict[str, Any], name: str, required: bool = True) -> int | None:
    value = body.get(name)
    if value in (None, "") and not required:
        return None
    try:
        if isinstance(value, bool | float) or value is None:  # int(1.9) would be 1: a fraction is refused
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name} must be an integer, got {value!r}") from None


def choice(body: dict[str, Any], name: str, enum: type[Side] | type[OrderType], default: str) -> Any:
    value = str(body.get(name) or default).upper()
    if value not in enum.__members__:
        raise InvalidArgument(f"{name} must be one of {', '.join(enum.__members__)}, got {value!r}")
    return enum[value]


def trade_json(trade: Any) -> dict[str, Any]:
    return {"trade_id": trade.trade_id, "price": trade.price, "size": trade.size}


def order_json(order: Any) -> dict[str, Any]:
    return {"order_id": order.order_id, "market": order.market, "side": order.side.name if order.side else None,
            "type": order.order_type.name if order.order_type else None, "price": order.price, "size": order.size,
            "filled": order.filled_size, "remaining": order.remaining_size, "status": order.status.name,
            "client_order_id": order.client_order_id}


async def with_trader(request: web.Request, call: Callable[[AsyncClient], Awaitable[dict[str, Any]]]) -> web.Response:
    """Runs `call` with a client carrying the request's key; an exchange error becomes its code and message."""
    client: AsyncClient | None = None
    try:
        client = request.app[FEED].trader(api_key(request))
        return web.json_response(await call(client))
    except ExchangeError as error:
        return error_response(error)
    finally:
        if client is not None:
            await client.close()


# -- handlers --------------------------------------------------------------------------------------------------


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "index.html")
    if name not in STATIC_TYPES:
        raise web.HTTPNotFound()
    return web.Response(body=(STATIC / name).read_bytes(), content_type=STATIC_TYPES[name], charset="utf-8")


async def state(request: web.Request) -> web.Response:
    return web.json_response(request.app[FEED].state())


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: first everything a page needs, then every change. A page that loses it reconnects."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await response.prepare(request)

    async def send(kind: str, message: Any) -> None:
        await response.write(f"event: {kind}\ndata: {json.dumps(message, separators=(',', ':'))}\n\n".encode())

    with request.app[HUB].subscribe() as queue, contextlib.suppress(ConnectionResetError):  # the page went away
        await response.write(b"retry: 1000\n\n")
        await send("state", request.app[FEED].state())
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if item is None:
                break
            await send(*item)
    return response


async def place(request: web.Request) -> web.Response:
    try:
        body = await json_body(request)
        order = NewOrder(choice(body, "side", Side, "BUY"), integer(body, "size") or 0, integer(body, "price", False),
                         choice(body, "type", OrderType, "LIMIT"), str(body.get("market") or ""),
                         str(body.get("client_order_id") or "") or None)
    except ExchangeError as error:
        return error_response(error)

    async def call(client: AsyncClient) -> dict[str, Any]:
        result = await client.place(order)
        return {"order_id": result.order_id, "seq": result.seq, "status": result.status.name,
                "filled": result.filled_size, "remaining": result.remaining_size, "reject_reason": result.reject_reason,
                "duplicate": result.duplicate, "trades": [trade_json(t) for t in result.trades]}

    return await with_trader(request, call)


async def cancel(request: web.Request) -> web.Response:
    try:
        body = await json_body(request)
        order_id = integer(dict(request.match_info), "order_id") or 0
    except ExchangeError as error:
        return error_response(error)

    async def call(client: AsyncClient) -> dict[str, Any]:
        result = await client.cancel_order(order_id, market=str(body.get("market") or ""))
        return {"order_id": result.order_id, "seq": result.seq, "cancelled": result.cancelled_size}

    return await with_trader(request, call)


async def amend(request: web.Request) -> web.Response:
    try:
        body = await json_body(request)
        order_id = integer(dict(request.match_info), "order_id") or 0
        size, price = integer(body, "size") or 0, integer(body, "price", False)
    except ExchangeError as error:
        return error_response(error)

    async def call(client: AsyncClient) -> dict[str, Any]:
        result = await client.amend_order(order_id, size, price, market=str(body.get("market") or ""))
        return {"order_id": result.order_id, "seq": result.seq, "price": result.price,
                "remaining": result.remaining_size, "priority_kept": result.priority_kept,
                "trades": [trade_json(t) for t in result.trades]}

    return await with_trader(request, call)


async def open_orders(request: web.Request) -> web.Response:
    market = request.query.get("market", "")

    async def call(client: AsyncClient) -> dict[str, Any]:
        return {"orders": [order_json(order) for order in await client.list_orders(market, timeout=5)]}

    return await with_trader(request, call)


async def fills(request: web.Request) -> web.Response:
    market = request.query.get("market", "")
    try:
        from_seq = integer(dict(request.query), "from_seq", False) or 0
    except ExchangeError as error:
        return error_response(error)

    async def call(client: AsyncClient) -> dict[str, Any]:
        found, next_seq = await request.app[FEED].fills(client, market, from_seq)
        return {"fills": found, "next_seq": next_seq}

    return await with_trader(request, call)


# -- the application -------------------------------------------------------------------------------------------


def make_app(config: FeedConfig) -> web.Application:
    app = web.Application(middlewares=[security_headers], client_max_size=64 * 1024)
    hub = Hub()
    app[HUB] = hub
    app[FEED] = Feed(config, hub.publish)

    async def feed_context(app: web.Application) -> AsyncIterator[None]:
        await app[FEED].start()
        yield
        await app[FEED].stop()

    async def end_streams(app: web.Application) -> None:
        app[HUB].close()

    app.cleanup_ctx.append(feed_context)
    app.on_shutdown.append(end_streams)
    app.router.add_get("/", static_file)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/stream", stream)
    app.router.add_post("/api/orders", place)
    app.router.add_get("/api/orders", open_orders)
    app.router.add_post("/api/orders/{order_id}/cancel", cancel)
    app.router.add_post("/api/orders/{order_id}/amend", amend)
    app.router.add_get("/api/fills", fills)
    return app
