"""The client side (the library, the CLI, the web console) against what its docs and docstrings promise: cases a
review found wrong (2026-12-02), each test failing before its fix."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from exchange import cli
from exchange.client import AsyncClient, Client, NewOrder, RetryPolicy, Side, StaticNodes
from exchange.client import types as t
from exchange.errors import ExchangeError, InvalidArgument
from exchange.v1 import exchange_pb2 as pb
from exchange.web.feed import Feed, FeedConfig
from exchange.web.server import FEED, make_app
from tests.unit.fakes import FakeRpcError, run_scenario
from tests.unit.test_client_sync import AsyncBookStream
from tests.unit.test_web_server import ScriptedNode, order_answer, run

HEADERS = {"Authorization": "Bearer k"}
BEYOND_INT64 = 2**63  # one more than the largest int64: the API's prices, sizes, ids and sequences are int64
FAST = RetryPolicy(timeout=2.0, attempt_timeout=0.5, backoff_initial=0.001, backoff_max=0.01,
                   node_backoff_initial=0.05, node_backoff_max=0.2)


def fill_event(seq: int, order_id: int = 1) -> pb.OrderEvent:
    return pb.OrderEvent(market="BTC-USD", seq=seq, fill=pb.Fill(order_id=order_id, trade_id=seq, price=100, size=1,
                                                                 remaining=0))


# 1. exchange-cli fills (without --watch) never returns when the caller's last order event is before the head


def test_cli_fills_without_watch_returns_once_it_has_shown_what_happened_so_far(
    capsys: pytest.CaptureFixture[str],
) -> None:
    release = threading.Event()

    class Stub:
        def GetOrderBook(self, request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
            return pb.GetOrderBookResponse(market="BTC-USD", seq=10)  # other accounts traded up to seq 10

        def StreamOrders(self, request: Any, metadata: Any = None) -> Iterator[pb.OrderEvent]:
            yield fill_event(3)  # the caller's only fill; the live stream then waits for new events
            release.wait()
            raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "test over")

    client = Client(["n1:1"], policy=FAST, stub_factory=lambda address: Stub())
    outcome: list[object] = []

    def fills() -> None:
        try:
            outcome.append(cli.print_fills(client, "", 1, False, False))  # `exchange-cli fills` (no --watch)
        except Exception as error:  # noqa: BLE001 - what the listing ended with, for the assertion
            outcome.append(error)

    worker = threading.Thread(target=fills, daemon=True)
    worker.start()
    worker.join(timeout=2 + 3)  # the listing ends after cli.FILLS_QUIET_S of silence
    hung = worker.is_alive()
    release.set()
    worker.join(timeout=3)
    assert not hung, "`exchange-cli fills` (no --watch) still waits for events after the head (seq 10) after 3 s"
    assert outcome == [0], outcome
    assert "BTC-USD #3 fill" in capsys.readouterr().out


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


# 5. found by a second review (2026-12-03): input beyond int64, a key grpc refuses, a charset, --node ",", a
#    diverged node, a lagging node


@pytest.mark.parametrize(("path", "body"), [
    ("/api/orders", {"size": BEYOND_INT64, "price": 100}),
    ("/api/orders", {"size": 1, "price": BEYOND_INT64}),
    (f"/api/orders/{BEYOND_INT64}/cancel", {}),
    ("/api/orders/7/amend", {"size": BEYOND_INT64}),
    ("/api/orders/7/amend", {"size": 1, "price": BEYOND_INT64}),
])
def test_web_a_number_beyond_int64_is_invalid_argument_not_a_500(path: str, body: dict[str, Any]) -> None:
    node = ScriptedNode({"CreateOrder": order_answer})

    async def test(client: TestClient, app: web.Application) -> None:
        response = await client.post(path, json=body, headers=HEADERS)
        assert response.status == 400, f"{path} {body}: HTTP {response.status} {await response.text()}"
        assert (await response.json())["error"]["code"] == "INVALID_ARGUMENT"

    run(node, test)


def test_web_fills_from_seq_beyond_int64_is_invalid_argument_not_a_500() -> None:
    node = ScriptedNode({"GetOrderBook": lambda r: pb.GetOrderBookResponse(market="BTC-USD", seq=5)})

    async def test(client: TestClient, app: web.Application) -> None:
        response = await client.get(f"/api/fills?market=BTC-USD&from_seq={BEYOND_INT64}", headers=HEADERS)
        assert response.status == 400, f"HTTP {response.status} {await response.text()}"

    run(node, test)


def test_web_a_json_body_with_an_unknown_charset_is_a_400_not_a_500() -> None:
    async def test(client: TestClient, app: web.Application) -> None:
        response = await client.post("/api/orders", data=b'{"size": 1, "price": 1}',
                                     headers={**HEADERS, "Content-Type": "application/json; charset=nonsense"})
        assert response.status == 400, f"HTTP {response.status} {await response.text()}"

    run(ScriptedNode({}), test)


def test_web_an_api_key_that_is_not_valid_grpc_metadata_is_a_4xx_not_a_500() -> None:
    """A key with a character grpc refuses in metadata (a typo when pasting: 'é', a control character). The call
    never leaves this process (grpc checks the metadata first), so the node address needs no server."""

    async def nothing() -> None:
        return None

    async def main() -> None:
        app = make_app(FeedConfig(consul="127.0.0.1:1"))
        feed = app[FEED]
        feed.start = nothing  # type: ignore[method-assign]
        feed.public = AsyncClient(StaticNodes(("127.0.0.1:1",)), policy=FAST)  # a real grpc.aio channel
        feed.nodes.passing = ["127.0.0.1:1"]
        async with TestClient(TestServer(app)) as client:
            response = await client.post("/api/orders", json={"size": 1, "price": 1},
                                         headers={"Authorization": "Bearer k\u00e9y"})
            assert response.status < 500, f"HTTP {response.status} {await response.text()}"
        await feed.public.close()

    run_scenario(main())


def test_client_an_order_size_beyond_int64_is_invalid_argument_not_a_bare_value_error() -> None:
    async def main() -> None:
        node = ScriptedNode({"CreateOrder": order_answer})
        async with AsyncClient(["n1:1"], policy=FAST, stub_factory=lambda _: node) as client:
            with pytest.raises(ExchangeError) as raised:  # the library's one error hierarchy (exchange.errors)
                await client.place(NewOrder(Side.BUY, BEYOND_INT64, 100))
            assert isinstance(raised.value, InvalidArgument)

    run_scenario(main())


class BookNode:
    def __init__(self, checksum: int) -> None:
        self.checksum = checksum
        self.calls = 0

    def StreamBook(self, request: pb.StreamBookRequest, metadata: Any = None) -> AsyncBookStream:
        self.calls += 1
        # an empty book: its top-10 checksum is crc32(b"") == 0; any other value does not verify
        go = asyncio.Event()
        go.set()
        return AsyncBookStream([pb.BookUpdate(market="M", snapshot=True, first_seq=5, last_seq=5,
                                              checksum=self.checksum)], go)


def test_client_a_book_subscription_fails_over_from_a_node_whose_checksum_never_verifies() -> None:
    """A diverged replica (what the top-10 checksum exists to catch) answers every StreamBook with a snapshot whose
    checksum does not verify. The subscription resubscribes for a new snapshot, but always to that same node: a
    Diverged resync never counts as the node's failure, so it spins on it (no backoff) until its deadline, and never
    tries the healthy second node (docs: "resubscribe ... on another node if need be")."""
    nodes = {"n1:1": BookNode(checksum=12345), "n2:1": BookNode(checksum=0)}

    async def main() -> None:
        async with AsyncClient(["n1:1", "n2:1"], policy=FAST, stub_factory=nodes.__getitem__) as client:
            try:
                subscription = await client.subscribe_book("M", depth=10, timeout=1.0)
            except ExchangeError as error:
                raise AssertionError(f"no book: {error!r}; StreamBook calls: n1 {nodes['n1:1'].calls}, "
                                     f"n2 {nodes['n2:1'].calls}") from None
            async with subscription:
                assert subscription.address == "n2:1"
                assert subscription.book().seq == 5

    run_scenario(main())


@pytest.mark.parametrize("argv", [
    ["--node", "127.0.0.1:1", "buy", str(BEYOND_INT64), "--price", "100"],
    ["--node", "127.0.0.1:1", "sell", "1", "--price", str(BEYOND_INT64)],
    ["--node", "127.0.0.1:1", "cancel", str(BEYOND_INT64)],
    ["--node", "127.0.0.1:1", "book", "--depth", str(2**31)],
    ["--node", "127.0.0.1:1", "events", "--from-seq", str(BEYOND_INT64)],
    ["--node", ",", "book"],
])
def test_cli_bad_input_exits_with_a_message_not_a_traceback(argv: list[str], capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    code: int | str | None
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse's own refusal is a message too
        code = exit_.code
    except Exception as error:  # noqa: BLE001
        raise AssertionError(f"exchange-cli {' '.join(argv)} ended with a traceback: {error!r}") from None
    assert code not in (0, None)
    assert capsys.readouterr().err.strip()


def test_web_fills_show_a_fill_the_node_streaming_them_had_not_yet_applied() -> None:
    """The head comes from one answer (GetOrderBook), the fills from a stream that may be served by a node still
    behind it: quiet for 0.3 s is not proof the fills up to the head were read. The next page reads the last
    FILLS_REREAD sequences again, so the fill shows then."""

    class LaggingNode:
        def __init__(self) -> None:
            self.streams = 0

        async def GetOrderBook(self, request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
            await asyncio.sleep(0)
            return pb.GetOrderBookResponse(market="BTC-USD", seq=100)

        async def _stream(self, start: int, applied: int) -> Any:
            if start <= 50 <= applied:
                await asyncio.sleep(0)
                yield fill_event(50)
            await asyncio.sleep(3600)  # live: nothing more

        def StreamOrders(self, request: Any, metadata: Any = None) -> Any:
            self.streams += 1  # the first stream's node had applied up to 40, the next one all of it
            return self._stream(request.from_seq, 40 if self.streams == 1 else 100)

    async def scenario() -> list[int]:
        node = LaggingNode()
        feed = Feed(FeedConfig(consul="127.0.0.1:1"), lambda kind, message: None)
        client = AsyncClient(["n1:1"], policy=FAST, stub_factory=lambda address: node)
        first, next_seq = await feed.fills(client, "BTC-USD", 0)
        second, _ = await feed.fills(client, "BTC-USD", next_seq)
        return [f["seq"] for f in first + second]

    assert run_scenario(scenario()) == [50]


def test_an_event_stream_from_now_that_breaks_before_its_first_event_resumes_where_now_was() -> None:
    """`events()` promises no event lost: opened "from now" (0) and broken before its first event, it resumed
    "from now" again, and the events in between were lost. Now is the node's position when it is opened."""

    class Node:
        def __init__(self) -> None:
            self.streams: list[int] = []

        async def GetOrderBook(self, request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
            await asyncio.sleep(0)
            return pb.GetOrderBookResponse(market="BTC-USD", seq=41)

        async def _stream(self, number: int) -> Any:
            await asyncio.sleep(0)
            if number == 1:
                raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "the node went away")
            yield pb.MarketEvent(market="BTC-USD", seq=42, order_cancelled=pb.OrderCancelled(order_id=7))
            await asyncio.sleep(3600)

        def StreamEvents(self, request: Any, metadata: Any = None) -> Any:
            self.streams.append(request.from_seq)
            return self._stream(len(self.streams))

    async def scenario() -> tuple[int, list[int]]:
        node = Node()
        client = AsyncClient(["n1:1"], policy=FAST, stub_factory=lambda address: node)
        events = client.events("BTC-USD")
        first = await asyncio.wait_for(anext(events), 5)
        await events.aclose()  # type: ignore[attr-defined]
        return first.seq, node.streams

    seq, streams = run_scenario(scenario())
    assert seq == 42 and streams == [42, 42]
