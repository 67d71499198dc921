"""Public market data by Sequencer time on a real cluster: every node answers the same trades (with the same
times), candles and ticker; StreamTrades replays from a sequence and resumes; bad input is refused and changes
nothing."""

from __future__ import annotations

import asyncio
import itertools
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import TypeVar

import grpc
import pytest
from google.protobuf.message import Message

from devtools.local_cluster import Cluster, wait_until
from devtools.verify import market_data_differences, replay_cluster
from exchange.client import AsyncClient, Client, PublicTrade
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc, types_pb2

pytestmark = pytest.mark.integration

MARKET = "BTC-USD"
INTERVALS = ("1m", "5m", "15m", "1h", "1d")
AnswerT = TypeVar("AnswerT", bound=Message)


@pytest.fixture(scope="module")
def traders(module_cluster: Cluster) -> Iterator[list[exchange_pb2_grpc.ExchangeNodeStub]]:
    """alice on node 1, bob on node 2, alice on node 3: orders of different nodes trade with each other."""
    channels = [module_cluster.channel(address, account)
                for address, account in zip(module_cluster.node_addresses, ("alice", "bob", "alice"), strict=True)]
    yield [exchange_pb2_grpc.ExchangeNodeStub(channel) for channel in channels]
    for channel in channels:
        channel.close()


def order(stub: exchange_pb2_grpc.ExchangeNodeStub, size: int, price: int) -> pb.CreateOrderResponse:
    return stub.CreateOrder(pb.CreateOrderRequest(market=MARKET, size=size, limit_price=price), timeout=15)


def trade_some(traders: list[exchange_pb2_grpc.ExchangeNodeStub]) -> list[pb.Trade]:
    """Makes trades on every node: resting sells of alice (node 1), then bob's buys (node 2) that take one or
    several levels, then alice's sells (node 3) that hit bob's rest."""
    trades: list[pb.Trade] = []
    for price in (101, 102, 103):
        order(traders[0], -3, price)
    trades += order(traders[1], 4, 102).trades  # two levels: 3 at 101, 1 at 102
    trades += order(traders[1], 5, 103).trades  # 2 at 102, 3 at 103 (rests nothing)
    order(traders[1], 6, 99)
    trades += order(traders[2], -2, 99).trades
    trades += order(traders[2], -1, 98).trades
    return trades


def every_node(cluster: Cluster, call: str, request: Message, answer: type[AnswerT]) -> list[AnswerT]:
    """Each node's `answer` to `call`."""
    answers = []
    for address in cluster.node_addresses:
        with cluster.channel(address, None) as channel:  # market data needs no key
            response = getattr(exchange_pb2_grpc.ExchangeNodeStub(channel), call)(request, timeout=10)
        assert isinstance(response, answer)
        answers.append(response)
    return answers


def test_every_node_gives_the_same_trades_with_the_same_times_candles_and_ticker(
    module_cluster: Cluster, traders: list[exchange_pb2_grpc.ExchangeNodeStub]
) -> None:
    before_ms = time.time_ns() // 1_000_000
    made = trade_some(traders)
    after_ms = time.time_ns() // 1_000_000
    module_cluster.wait_converged()

    pages = every_node(module_cluster, "GetTrades", pb.GetTradesRequest(market=MARKET, limit=1000),
                       pb.GetTradesResponse)
    assert all(page == pages[0] for page in pages), "every node: the same trades, ids, sequences and times"
    tape = list(reversed(pages[0].trades))  # oldest first
    ours = tape[-len(made):]
    assert [(t.trade_id, t.price, t.size) for t in ours] == [(t.trade_id, t.price, t.size) for t in made]
    assert [t.aggressor_side for t in ours] == [types_pb2.BUY] * 4 + [types_pb2.SELL] * 2
    times = [t.time_ms for t in tape]
    assert times == sorted(times), "time never decreases along the log"
    assert all(before_ms - 60_000 <= t.time_ms <= after_ms + 60_000 for t in ours), "UNIX milliseconds"
    assert [t.seq for t in tape] == sorted(t.seq for t in tape)

    for interval in INTERVALS:
        answers = every_node(module_cluster, "GetCandles",
                             pb.GetCandlesRequest(market=MARKET, interval=interval, limit=1000), pb.GetCandlesResponse)
        assert all(answer == answers[0] for answer in answers), interval
        candles = answers[0].candles
        assert sum(c.volume for c in candles) == sum(t.size for t in tape), interval
        assert sum(c.trade_count for c in candles) == len(tape), interval
        assert candles[-1].close == tape[-1].price
    tickers = every_node(module_cluster, "GetTicker", pb.GetTickerRequest(market=MARKET), pb.Ticker)
    assert all(ticker == tickers[0] for ticker in tickers)
    ticker = tickers[0]
    book = traders[0].GetOrderBook(pb.GetOrderBookRequest(market=MARKET, depth=1), timeout=10)
    assert ticker.seq == book.seq and ticker.last_price == tape[-1].price and ticker.last_trade_id == tape[-1].trade_id
    assert (ticker.best_bid, ticker.best_bid_size) == (book.bids[0].price, book.bids[0].size)
    assert ticker.volume_24h == sum(t.size for t in tape) and ticker.trade_count_24h == len(tape)
    assert ticker.change_24h == tape[-1].price - tape[0].price and ticker.time_ms >= tape[-1].time_ms
    assert market_data_differences(module_cluster, replay_cluster(module_cluster)) == [], \
        "every node's market data is the log's, replayed: times come from the log alone"


def test_stream_trades_replays_from_a_sequence_and_the_client_resumes_then_follows_live(
    module_cluster: Cluster, traders: list[exchange_pb2_grpc.ExchangeNodeStub]
) -> None:
    made = trade_some(traders)
    module_cluster.wait_converged()
    page = traders[2].GetTrades(pb.GetTradesRequest(market=MARKET, limit=1000), timeout=10)
    tape = list(reversed(page.trades))
    first = next(t for t in tape if t.trade_id == made[0].trade_id)
    later = [t for t in tape if t.seq >= first.seq]

    call = traders[2].StreamTrades(pb.StreamTradesRequest(market=MARKET, from_seq=first.seq), timeout=20)
    streamed: list[pb.PublicTrade] = []
    for message in call:
        streamed += message.trades
        if len(streamed) >= len(later):
            break
    call.cancel()
    assert streamed == later
    middle = later[len(later) // 2]
    with Client(module_cluster.node_addresses[1:]) as client:
        resumed = list(itertools.islice(client.trades(MARKET, from_seq=middle.seq), 2))
        assert [(t.trade_id, t.seq, t.price, t.size, t.time_ms) for t in resumed] == [
            (t.trade_id, t.seq, t.price, t.size, t.time_ms) for t in later if t.seq >= middle.seq][:2]

        live: list[PublicTrade] = []
        start = traders[1].GetOrderBook(pb.GetOrderBookRequest(market=MARKET), timeout=10).seq + 1
        follower = threading.Thread(  # from the next sequence: whenever the stream opens, nothing is missed
            target=lambda: live.extend(itertools.islice(client.trades(MARKET, start, timeout=20), 1)), daemon=True)
        follower.start()
        fresh = order(traders[1], 1, 200).trades
        order(traders[0], -1, 200)  # bob's bid at 200, hit by alice
        follower.join(20)
        assert len(live) == 1 and not fresh
        page = client.get_trades(MARKET, 1)
        assert [t.trade_id for t in page.trades] == [live[0].trade_id]
        assert client.get_ticker(MARKET).last_price == 200
        assert client.get_candles(MARKET, "1d", limit=1).candles[-1].close == 200


@pytest.mark.parametrize(("call", "request_", "code"), [
    ("GetTrades", pb.GetTradesRequest(market="NOPE", limit=5), grpc.StatusCode.NOT_FOUND),
    ("GetTrades", pb.GetTradesRequest(market=MARKET, limit=0), grpc.StatusCode.INVALID_ARGUMENT),
    ("GetTrades", pb.GetTradesRequest(market=MARKET, limit=100_000), grpc.StatusCode.INVALID_ARGUMENT),
    ("GetTrades", pb.GetTradesRequest(market=MARKET, limit=5, before=-1), grpc.StatusCode.INVALID_ARGUMENT),
    ("GetCandles", pb.GetCandlesRequest(market=MARKET, interval="2m", limit=5), grpc.StatusCode.INVALID_ARGUMENT),
    ("GetCandles", pb.GetCandlesRequest(market=MARKET, interval="", limit=5), grpc.StatusCode.INVALID_ARGUMENT),
    ("GetCandles", pb.GetCandlesRequest(market=MARKET, interval="1m", from_ms=10, to_ms=5, limit=5),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("GetCandles", pb.GetCandlesRequest(market=MARKET, interval="1m", from_ms=-1, limit=5),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("GetCandles", pb.GetCandlesRequest(market=MARKET, interval="1h", limit=0), grpc.StatusCode.INVALID_ARGUMENT),
    ("GetCandles", pb.GetCandlesRequest(market=MARKET, interval="1h", limit=1001), grpc.StatusCode.INVALID_ARGUMENT),
    ("GetCandles", pb.GetCandlesRequest(market="NOPE", interval="1h", limit=5), grpc.StatusCode.NOT_FOUND),
    ("GetTicker", pb.GetTickerRequest(market="NOPE"), grpc.StatusCode.NOT_FOUND),
])
def test_bad_input_is_refused_with_a_clear_message_and_changes_nothing(
    module_cluster: Cluster, traders: list[exchange_pb2_grpc.ExchangeNodeStub], call: str, request_: object,
    code: grpc.StatusCode,
) -> None:
    before = module_cluster.status(0)
    with pytest.raises(grpc.RpcError) as refused:
        getattr(traders[0], call)(request_, timeout=10)
    assert refused.value.code() == code
    assert len(refused.value.details()) > 20
    after = module_cluster.status(0)
    assert [(m.applied_seq, m.checksum) for m in after.markets] == [(m.applied_seq, m.checksum) for m in before.markets]


@pytest.mark.parametrize(("from_seq", "market", "code"), [
    (-1, MARKET, grpc.StatusCode.INVALID_ARGUMENT), (0, "NOPE", grpc.StatusCode.NOT_FOUND)])
def test_stream_trades_refuses_bad_input(
    traders: list[exchange_pb2_grpc.ExchangeNodeStub], from_seq: int, market: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        next(iter(traders[0].StreamTrades(pb.StreamTradesRequest(market=market, from_seq=from_seq), timeout=10)))
    assert refused.value.code() == code


def test_market_data_needs_no_key(module_cluster: Cluster) -> None:
    with module_cluster.channel(module_cluster.node_address(0), None) as channel:
        ticker = exchange_pb2_grpc.ExchangeNodeStub(channel).GetTicker(pb.GetTickerRequest(), timeout=10)
    wait_until(lambda: ticker.market == MARKET, 1, "the default market's ticker")


def test_the_cli_shows_trades_candles_and_the_ticker_and_watches_new_trades(
    module_cluster: Cluster, traders: list[exchange_pb2_grpc.ExchangeNodeStub]
) -> None:
    trade_some(traders)
    cli = [sys.executable, "-m", "exchange.cli", "--node", module_cluster.node_address(0), "--market", MARKET]
    ticker = subprocess.run([*cli, "ticker"], capture_output=True, text=True, timeout=60)
    assert ticker.returncode == 0 and "24h volume" in ticker.stdout and "best bid" in ticker.stdout, ticker
    candles = subprocess.run([*cli, "candles", "--interval", "1d", "--limit", "3"], capture_output=True, text=True,
                             timeout=60)
    assert candles.returncode == 0 and "1d candles at seq" in candles.stdout and "close" in candles.stdout, candles
    refused = subprocess.run([*cli, "trades", "--limit", "0"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and refused.stderr.startswith("INVALID_ARGUMENT: "), refused

    watch = subprocess.Popen([*cli, "trades", "--watch", "--limit", "2"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in watch.stdout or []:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        seen = [lines.get(timeout=30) for _ in range(3)]  # the header and the 2 latest trades
        assert seen[0].split()[:3] == ["time", "(UTC)", "trade"], seen
        order(traders[1], 1, 300)
        made = order(traders[0], -1, 300).trades
        assert len(made) == 1
        live = lines.get(timeout=30).split()
        assert live[2:] == [str(made[0].trade_id), live[3], "SELL", "300", "1"], live
    finally:
        watch.kill()
        watch.wait(10)


def test_the_async_client_reads_the_same_trades_candles_and_ticker(
    module_cluster: Cluster, traders: list[exchange_pb2_grpc.ExchangeNodeStub]
) -> None:
    made = trade_some(traders)
    module_cluster.wait_converged()

    async def run() -> tuple[list[int], int, int, int]:
        async with AsyncClient(module_cluster.node_addresses) as client:
            page = await client.get_trades(MARKET, len(made))
            first = page.trades[-1]
            streamed = []
            async for trade in client.trades(MARKET, from_seq=first.seq, timeout=20):
                streamed.append(trade.trade_id)
                if len(streamed) == len(made):
                    break
            candles = await client.get_candles(MARKET, "1d", limit=1)
            ticker = await client.get_ticker(MARKET)
            return streamed, candles.candles[-1].close, ticker.last_price or 0, page.trades[0].price

    streamed, close, last, latest = asyncio.run(asyncio.wait_for(run(), 60))
    assert streamed == [t.trade_id for t in made]
    assert close == last == latest == made[-1].price
