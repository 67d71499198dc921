"""The web console's HTTP endpoints without a browser or a cluster: aiohttp's test server in front of the real
server code, whose feed talks to scripted node stubs (the client library's `stub_factory`) instead of the network.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from exchange.client import AsyncClient, RetryPolicy, StaticNodes, types
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2
from exchange.web import feed as feed_module
from exchange.web.feed import Feed, FeedConfig, divergences, node_health
from exchange.web.main import parse_args
from exchange.web.server import CONTENT_SECURITY_POLICY, FEED, HUB, make_app
from tests.unit.fakes import FakeRpcError, run_scenario

FAST = RetryPolicy(timeout=1.0, attempt_timeout=0.5, backoff_initial=0.001, backoff_max=0.01)


class ScriptedNode:
    """A node's stub: each method answers with `answers[method]` (a callable of the request, or an error);
    every call's request and metadata are recorded."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, Any, dict[str, str]]] = []

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
            self.calls.append((method, request, dict(metadata or ())))
            answer = self.answers[method]
            if isinstance(answer, Exception):
                raise answer
            return answer(request)

        return call


def run(node: ScriptedNode, test: Callable[[TestClient, web.Application], Awaitable[None]]) -> None:
    """Runs `test` against the console's app, its feed's nodes being `node` (the feed's own loops stay off)."""

    async def main() -> None:
        app = make_app(FeedConfig(consul="127.0.0.1:1"))
        feed = app[FEED]
        feed.start = _nothing  # type: ignore[method-assign]  # the feed's own loops stay off
        feed.public = AsyncClient(StaticNodes(("n1:1",)), policy=FAST, stub_factory=lambda address: node)
        feed.nodes.passing = ["n1:1"]
        async with TestClient(TestServer(app)) as client:
            await test(client, app)

    run_scenario(main())


async def _nothing() -> None:
    return None


def order_answer(request: pb.CreateOrderRequest) -> pb.CreateOrderResponse:
    return pb.CreateOrderResponse(market="BTC-USD", order_id=7, seq=7, status=pb.RESTING, side=request.side,
                                  remaining_size=request.size, client_order_id=request.client_order_id)


UNAUTHENTICATED = FakeRpcError(grpc.StatusCode.UNAUTHENTICATED,
                           "unknown API key: send the metadata `authorization: Bearer <api key>`")


def test_every_response_carries_the_security_headers_and_the_page_has_no_inline_code() -> None:
    async def test(client: TestClient, app: web.Application) -> None:
        for path, content_type in (("/", "text/html"), ("/static/app.js", "text/javascript"),
                                   ("/static/charts.js", "text/javascript"), ("/static/app.css", "text/css"),
                                   ("/api/state", "application/json")):
            response = await client.get(path)
            assert response.status == 200, path
            assert response.content_type == content_type, path
            assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY and "default-src 'self'" in CONTENT_SECURITY_POLICY
        page = await (await client.get("/")).text()
        assert "<script>" not in page and "style=" not in page and " on" + "click" not in page
        for path in ("/static/nothing.js", "/static/..%2Fserver.py", "/static/__init__.py"):
            missing = await client.get(path)
            assert missing.status == 404
            assert missing.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY

    run(ScriptedNode({}), test)


def test_an_order_goes_to_the_node_with_the_pages_key_as_bearer_metadata_and_no_key_is_kept() -> None:
    node = ScriptedNode({"CreateOrder": order_answer})

    async def test(client: TestClient, app: web.Application) -> None:
        response = await client.post("/api/orders", json={"market": "BTC-USD", "side": "sell", "size": "5",
                                                          "price": 101, "client_order_id": "<b>x</b>"},
                                     headers={"Authorization": "Bearer pxk_alice"})
        assert response.status == 200
        assert (await response.json())["order_id"] == 7
        method, request, metadata = node.calls[-1]
        assert method == "CreateOrder" and metadata["authorization"] == "Bearer pxk_alice"
        assert (request.side, request.size, request.limit_price) == (types.Side.SELL, 5, 101)
        assert request.client_order_id == "<b>x</b>"
        assert "pxk_alice" not in json.dumps(app[FEED].state())
        assert "Set-Cookie" not in response.headers

    run(node, test)


def test_a_node_error_comes_back_with_its_code_and_message_and_unauthenticated_says_how_to_pass_a_key() -> None:
    node = ScriptedNode({"CreateOrder": UNAUTHENTICATED, "CancelOrder": FakeRpcError(grpc.StatusCode.NOT_FOUND,
                                                                                 "order 9 is not resting")})

    async def test(client: TestClient, app: web.Application) -> None:
        response = await client.post("/api/orders", json={"size": 1, "price": 1})
        assert response.status == 401
        error = (await response.json())["error"]
        assert error["code"] == "UNAUTHENTICATED" and "authorization: Bearer" in error["message"]
        assert "API key" in error["hint"]
        assert "authorization" not in node.calls[-1][2]  # no key given: none sent
        response = await client.post("/api/orders/9/cancel", json={}, headers={"Authorization": "Bearer k"})
        assert response.status == 404
        assert await response.json() == {"error": {"code": "NOT_FOUND", "message": "order 9 is not resting"}}

    run(node, test)


def test_bad_input_is_invalid_argument_before_any_node_is_asked() -> None:
    node = ScriptedNode({})

    async def test(client: TestClient, app: web.Application) -> None:
        for body, why in (({"size": "ten"}, "size must be an integer"), ({"size": 1, "side": "UP"}, "side must be"),
                          ({"size": True}, "size must be an integer"), ([1], "must be a JSON object")):
            response = await client.post("/api/orders", json=body)
            assert response.status == 400
            error = (await response.json())["error"]
            assert error["code"] == "INVALID_ARGUMENT" and why in error["message"]
        form = await client.post("/api/orders", data={"size": "1"})  # what a cross-site form could send
        assert form.status == 400 and "application/json" in (await form.json())["error"]["message"]
        amend = await client.post("/api/orders/x/amend", json={"size": 1})
        assert amend.status == 400
        assert node.calls == []

    run(node, test)


def test_amend_cancel_open_orders_and_fills_are_the_client_librarys() -> None:
    node = ScriptedNode({
        "AmendOrder": lambda r: pb.AmendOrderResponse(market="BTC-USD", order_id=r.order_id, seq=9, price=102,
                                                      remaining_size=r.size, priority_kept=False),
        "CancelOrder": lambda r: pb.CancelOrderResponse(market="BTC-USD", order_id=r.order_id, seq=10,
                                                        cancelled_size=2),
        "ListOrders": lambda r: pb.ListOrdersResponse(orders=[pb.Order(
            market="BTC-USD", order_id=7, side=types_pb2.BUY, price=100, size=3, remaining_size=3, status=pb.RESTING,
            client_order_id="<img src=x onerror=alert(1)>")]),
    })

    async def test(client: TestClient, app: web.Application) -> None:
        headers = {"Authorization": "Bearer k"}
        amended = await client.post("/api/orders/7/amend", json={"size": 2, "price": 102}, headers=headers)
        assert await amended.json() == {"order_id": 7, "seq": 9, "price": 102, "remaining": 2,
                                        "priority_kept": False, "trades": []}
        cancelled = await client.post("/api/orders/7/cancel", json={"market": "BTC-USD"}, headers=headers)
        assert await cancelled.json() == {"order_id": 7, "seq": 10, "cancelled": 2}
        orders = await (await client.get("/api/orders?market=BTC-USD", headers=headers)).json()
        assert orders["orders"][0]["client_order_id"] == "<img src=x onerror=alert(1)>"  # data; the page escapes it
        assert [call[0] for call in node.calls] == ["AmendOrder", "CancelOrder", "ListOrders"]

    run(node, test)


def test_the_event_stream_sends_the_state_first_then_every_published_change() -> None:
    async def test(client: TestClient, app: web.Application) -> None:
        response = await client.get("/api/stream")
        assert response.headers["Content-Type"] == "text/event-stream"
        assert await response.content.readuntil(b"\n\n") == b"retry: 1000\n\n"
        first = await response.content.readuntil(b"\n\n")
        assert first.startswith(b"event: state\ndata: ")
        assert set(json.loads(first.split(b"data: ", 1)[1])) >= {"cluster", "books", "tapes"}
        while not app[HUB].queues:
            await asyncio.sleep(0.01)
        app[HUB].publish("trade", {"market": "BTC-USD", "seq": 3, "price": 100})
        assert await response.content.readuntil(b"\n\n") == \
            b'event: trade\ndata: {"market":"BTC-USD","seq":3,"price":100}\n\n'
        app[HUB].close()  # the server stops: the stream ends, and the page reconnects
        assert await response.content.read() == b""

    run(ScriptedNode({}), test)


def market(name: str, seq: int, checksum: int) -> dict[str, Any]:
    return {"market": name, "applied_seq": seq, "checksum": checksum}


def test_two_nodes_at_the_same_sequence_with_different_checksums_are_marked_and_nothing_else_is() -> None:
    nodes: list[dict[str, Any]] = [{"id": "node-1", "markets": [market("A", 5, 11), market("B", 2, 7)]},
             {"id": "node-2", "markets": [market("A", 5, 12), market("B", 3, 8)]},  # B: at another seq, fine
             {"id": "node-3", "markets": [market("A", 5, 11)]}, {"id": "node-4", "markets": []}]
    assert divergences(nodes) == [{"market": "A", "seq": 5, "checksums": {"11": ["node-1", "node-3"],
                                                                          "12": ["node-2"]}}]
    assert divergences(nodes[:1] + nodes[2:]) == []


@pytest.mark.parametrize(("state", "lag", "buffered", "health"), [
    ("SERVING", 0, 0, "ok"), ("SYNCING", 0, 0, "catching-up"), ("SERVING", 3, 0, "catching-up"),
    ("SERVING", 0, 2, "catching-up"), ("STOPPING", 0, 0, "catching-up"),
])
def test_a_nodes_health_says_when_it_is_catching_up(state: str, lag: int, buffered: int, health: str) -> None:
    status = types.NodeStatus("a:1", "node-1", state, (types.MarketStatus("A", 5, 5 + lag, lag, 1, buffered, 0),),
                              (), "")
    assert node_health(status) == health
    assert node_health(None) == "down"


def test_the_feed_reads_only_the_public_rpcs_of_nodes_and_sequencers() -> None:
    """One module reads the cluster; it never names a cluster-internal RPC or the cluster secret."""
    source = Path(feed_module.__file__).read_text()
    for internal in ("BroadcastOrder", "GetSnapshot", "ReadLog", "SequenceStream", "cluster_secret",
                     "token_metadata", "peer_token"):
        assert internal not in source
    assert Feed.__module__ == "exchange.web.feed"


def test_exchange_web_listens_on_loopback_by_default_and_refuses_another_address_without_tls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert parse_args([]).listen == "127.0.0.1:8080"
    assert parse_args(["--listen", "[::1]:9000"]).tls_dir is None
    for address in ("0.0.0.0:8080", "10.0.0.5:8080", "example.org:443"):
        with pytest.raises(SystemExit):
            parse_args(["--listen", address])
        assert "without TLS" in capsys.readouterr().err
    assert parse_args(["--listen", "0.0.0.0:8443", "--tls-dir", "certs"]).tls_dir == Path("certs")
