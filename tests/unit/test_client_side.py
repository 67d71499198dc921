"""The client side (the library, the CLI, the web console) against what its docs and docstrings promise: cases a
review found wrong (2026-12-02), each test failing before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from exchange import cli
from exchange.client import AsyncClient, Client, NewOrder, RetryPolicy, Side
from exchange.client import types as t
from exchange.v1 import exchange_pb2 as pb
from exchange.web.feed import Feed, FeedConfig
from tests.unit.fakes import FakeRpcError, run_scenario
from tests.unit.test_web_server import ScriptedNode, order_answer, run

FAST = RetryPolicy(timeout=2.0, attempt_timeout=0.5, backoff_initial=0.001, backoff_max=0.01,
                   node_backoff_initial=0.05, node_backoff_max=0.2)


def fill_event(seq: int, order_id: int = 1) -> pb.OrderEvent:
    return pb.OrderEvent(market="BTC-USD", seq=seq, fill=pb.Fill(order_id=order_id, trade_id=seq, price=100, size=1,
                                                                 remaining=0))


# 1. exchange-cli fills (without --watch) never returns when the caller's last order event is before the head


def test_cli_fills_without_watch_returns_once_it_has_shown_what_happened_so_far() -> None:
    release = threading.Event()

    class Stub:
        def GetOrderBook(self, request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
            return pb.GetOrderBookResponse(market="BTC-USD", seq=10)  # other accounts traded up to seq 10

        def StreamOrders(self, request: Any, metadata: Any = None) -> Iterator[pb.OrderEvent]:
            yield fill_event(3)  # the caller's only fill; the live stream then waits for new events
            release.wait()
            raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "test over")

    client = Client(["n1:1"], policy=FAST, stub_factory=lambda address: Stub())
    def fills() -> None:
        with contextlib.suppress(Exception):  # the stream the test ends
            cli.print_fills(client, "", 1, False, False)  # `exchange-cli fills` (no --watch)

    worker = threading.Thread(target=fills, daemon=True)
    worker.start()
    worker.join(timeout=2 + 3)  # the listing ends after cli.FILLS_QUIET_S of silence
    hung = worker.is_alive()
    release.set()
    worker.join(timeout=3)
    assert not hung, "`exchange-cli fills` (no --watch) still waits for events after the head (seq 10) after 3 s"


# 2. the web console's /api/fills reports next_seq past fills it never returned (they are lost to the page)


def test_web_fills_next_seq_does_not_skip_fills_it_did_not_return() -> None:
    class Node:
        async def GetOrderBook(self, request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
            await asyncio.sleep(0)
            return pb.GetOrderBookResponse(market="BTC-USD", seq=250)

        async def _stream(self, start: int) -> Any:
            for seq in range(max(1, start), 251):
                await asyncio.sleep(0)
                yield fill_event(seq, order_id=seq)
            await asyncio.sleep(3600)  # live: nothing more

        def StreamOrders(self, request: Any, metadata: Any = None) -> Any:
            return self._stream(request.from_seq)

    async def scenario() -> tuple[list[int], int, list[int]]:
        feed = Feed(FeedConfig(consul="127.0.0.1:1"), lambda kind, message: None)
        client = AsyncClient(["n1:1"], policy=FAST, stub_factory=lambda address: Node())
        first, next_seq = await feed.fills(client, "BTC-USD", 1)
        second, _ = await feed.fills(client, "BTC-USD", next_seq)  # what the page asks next (app.js)
        return [f["seq"] for f in first], next_seq, [f["seq"] for f in second]

    first, next_seq, second = run_scenario(scenario())
    assert len(first) == 200  # the limit
    seen = set(first) | set(second)
    assert seen == set(range(1, 251)), (
        f"fills {min(set(range(1, 251)) - seen)}..{max(set(range(1, 251)) - seen)} never reach the page: "
        f"next_seq={next_seq} after the last fill returned at seq {first[-1]}")


# 3. the web console accepts a fractional size / price and silently truncates it


def test_web_order_with_a_fractional_size_or_price_is_refused() -> None:
    node = ScriptedNode({"CreateOrder": order_answer})

    async def test(client: Any, app: Any) -> None:
        response = await client.post("/api/orders", json={"side": "buy", "size": 1.9, "price": 100.7},
                                     headers={"Authorization": "Bearer k"})
        sent = [(r.size, r.limit_price) for m, r, _ in node.calls if m == "CreateOrder"]
        assert response.status == 400 and sent == [], (
            f"HTTP {response.status}; the node was sent (size, price) = {sent} for 1.9 lots at 100.7 ticks")

    run(node, test)


# 4. submit_many: a batch answered with the wrong number of results is dropped, its orders reported "not sent"


def test_submit_many_resends_a_batch_whose_answer_was_malformed() -> None:
    sent: list[str] = []

    class Stream:
        def __init__(self, requests: Iterator[pb.OrderBatch], short: bool) -> None:
            self.requests, self.short = requests, short

        def __iter__(self) -> Stream:
            return self

        def __next__(self) -> pb.OrderBatchResult:
            batch = next(self.requests)
            sent.extend(o.client_order_id for o in batch.orders)
            results = [pb.OrderEntryResult(order=order_answer(o)) for o in batch.orders]
            return pb.OrderBatchResult(results=results[:-1] if self.short else results)

        def cancel(self) -> None:
            pass

    streams = iter([True, False, False, False])

    class Stub:
        def OrderEntryBatch(self, requests: Iterator[pb.OrderBatch], metadata: Any = None) -> Stream:
            return Stream(requests, next(streams))

    client = Client(["n1:1", "n2:1"], policy=FAST, stub_factory=lambda address: Stub())
    results = client.submit_many([NewOrder(Side.BUY, 1, 100) for _ in range(3)], batch_size=3, window=3)
    assert all(isinstance(r, t.OrderResult) for r in results), (
        f"results: {[type(r).__name__ + ':' + getattr(r, 'message', '') for r in results]}; "
        f"orders sent {len(sent)} times ({len(set(sent))} distinct)")
