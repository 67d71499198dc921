"""The web console's one window on the cluster: every read the web server makes, and every order it forwards.

`exchange-web` is a client of the cluster like any other: Consul for discovery (the `peer-server` and
`sequencer` services, read only), the nodes' public gRPC API through the client library
(`exchange.client.AsyncClient`: failover between nodes, retries, typed errors) and the Sequencer replicas'
public `GetSequence` (their role and position). Never a peer's or the Sequencer's cluster-internal RPC, never
the cluster secret. Per market: the book (StreamBook), the trade tape (GetTrades, then StreamTrades),
the 1-minute candles and the ticker (GetCandles, GetTicker, polled), all as the nodes answer them. Switching a
data source is a change of this module only: the server and the page see the same messages.

What it keeps is what it last saw (no state of its own survives a restart): the cluster's view, each market's
book, recent trades, candles and ticker, and the nodes and leader changes seen since it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

from discovery import DiscoveryError, ServiceInstance
from discovery.consul import ConsulRegistry
from exchange.client import AsyncClient, Connection, PublicTrade, RetryPolicy, connection_of, types
from exchange.errors import ExchangeError, OutOfRange
from exchange.runtime import aio_channel
from exchange.shared.tls import TlsConfig, consul_endpoint
from exchange.shared.wire import PEER_SERVICE, SEQUENCER_SERVICE
from exchange.v1 import sequencer_pb2, sequencer_pb2_grpc

log = logging.getLogger("web.feed")

TAPE_LENGTH = 100  # trades kept per market for a page that opens
CANDLE_INTERVAL, CANDLES = "1m", 60  # the candle chart: the last hour of 1-minute candles
LEADER_CHANGES = 20  # leader changes kept
FILLS_REREAD = 1_000  # sequences before the head a fills page reads again (see Feed.fills)
# a person waits for an order's answer: the library's failover within 10 s
ORDER_POLICY = RetryPolicy(timeout=10, attempt_timeout=5)
READ_POLICY = RetryPolicy(timeout=5, attempt_timeout=2)

Publish = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class FeedConfig:
    consul: str = "127.0.0.1:8500"  # a Consul agent's HTTP API: host:port, http://host:port or https://host:port
    consul_token: str | None = None  # a Consul ACL token that may read services and nodes
    tls: TlsConfig | None = None  # the cluster's mutual TLS (a client's --tls-dir), None: plaintext
    poll_s: float = 1.0  # how often the cluster's status is read
    book_depth: int = 20


class DiscoveredNodes:
    """The client library's node source: the passing nodes of the feed's last Consul read (never blocks)."""

    def __init__(self) -> None:
        self.passing: list[str] = []

    def addresses(self) -> list[str]:
        return list(self.passing)


def consul_registry(config: FeedConfig) -> ConsulRegistry:
    host, port, https = consul_endpoint(config.consul, config.tls.directory if config.tls else None)
    return ConsulRegistry(host, port, token=config.consul_token, https=https)


@dataclass
class ClusterView:
    """What the cluster view of the page shows; `as_message()` is its JSON."""

    nodes: list[dict[str, Any]] = field(default_factory=list)
    sequencers: list[dict[str, Any]] = field(default_factory=list)
    leader: str | None = None
    leader_changes: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LEADER_CHANGES))
    divergent: list[dict[str, Any]] = field(default_factory=list)
    consul_error: str | None = None
    markets: list[str] = field(default_factory=list)

    def as_message(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "sequencers": self.sequencers, "leader": self.leader,
                "leader_changes": list(self.leader_changes), "divergent": self.divergent,
                "consul_error": self.consul_error, "markets": self.markets}


def node_health(status: types.NodeStatus | None) -> str:
    """"down" (no answer), "catching-up" (syncing, or behind what it knows exists, or holding commands it cannot
    apply yet) or "ok"."""
    if status is None:
        return "down"
    if status.state != "SERVING" or any(m.lag or m.buffered for m in status.markets):
        return "catching-up"
    return "ok"


def divergences(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Markets where two nodes at the same applied sequence report different checksums (replicas that differ)."""
    seen: dict[tuple[str, int], dict[int, list[str]]] = {}
    for node in nodes:
        for market in node.get("markets") or []:
            checksums = seen.setdefault((market["market"], market["applied_seq"]), {})
            checksums.setdefault(market["checksum"], []).append(node["id"])
    return [{"market": market, "seq": seq, "checksums": {str(c): ids for c, ids in checksums.items()}}
            for (market, seq), checksums in sorted(seen.items()) if len(checksums) > 1]


class Feed:
    """The cluster seen by the web console, live. `publish(kind, message)` is called with every change; `state()`
    is everything a page that opens needs."""

    def __init__(self, config: FeedConfig, publish: Publish) -> None:
        self.config = config
        self.publish = publish
        self.nodes = DiscoveredNodes()
        self.public = AsyncClient(self.nodes, connection=connection_of(config.tls), policy=READ_POLICY)
        self.view = ClusterView()
        self.books: dict[str, dict[str, Any]] = {}
        self.tapes: dict[str, deque[dict[str, Any]]] = {}
        self.candles: dict[str, dict[str, Any]] = {}
        self.tickers: dict[str, dict[str, Any]] = {}
        self._last_leader: str | None = None
        self._known_nodes: dict[str, str] = {}  # id -> address: nodes seen since start (a reaped one stays, down)
        self._sequencer_channels: dict[str, grpc.aio.Channel] = {}
        self._registry: ConsulRegistry | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._market_tasks: dict[str, list[asyncio.Task[None]]] = {}

    # -- life -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._registry = consul_registry(self.config)
        self._tasks.append(asyncio.create_task(self._every(self.config.poll_s, self.refresh_cluster)))

    async def stop(self) -> None:
        tasks = self._tasks + [task for tasks in self._market_tasks.values() for task in tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.public.close()
        for channel in self._sequencer_channels.values():
            await channel.close()
        if self._registry is not None:
            self._registry.close()

    def state(self) -> dict[str, Any]:
        return {"cluster": self.view.as_message(), "books": dict(self.books),
                "tapes": {market: list(tape) for market, tape in self.tapes.items()},
                "candles": dict(self.candles), "tickers": dict(self.tickers)}

    @staticmethod
    async def _every(interval: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            started = time.monotonic()
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a view that failed once is tried again; the page keeps the last
                log.exception("reading the cluster failed")
            await asyncio.sleep(max(0.05, interval - (time.monotonic() - started)))

    # -- the cluster view -----------------------------------------------------------------------------------

    async def _consul(self, service: str) -> list[tuple[ServiceInstance, bool]]:
        assert self._registry is not None
        return await asyncio.to_thread(self._registry.instances, service)

    async def refresh_cluster(self) -> None:
        """One read of Consul, of every node's GetStatus and of every Sequencer replica's role."""
        try:
            peers, sequencers = await asyncio.gather(self._consul(PEER_SERVICE), self._consul(SEQUENCER_SERVICE))
            self.view.consul_error = None
        except DiscoveryError as error:
            peers, sequencers = [], []
            self.view.consul_error = str(error)
        consul_state = {instance.instance_id: passing for instance, passing in peers}
        for instance, _ in peers:
            self._known_nodes[instance.instance_id] = instance.target
        if not self.view.consul_error:
            self.nodes.passing = [instance.target for instance, passing in peers if passing]
        ids = sorted(self._known_nodes)
        statuses = await asyncio.gather(*(self._node_status(self._known_nodes[i]) for i in ids))
        nodes: list[dict[str, Any]] = []
        for node_id, (status, failure) in zip(ids, statuses, strict=True):
            consul = ("passing" if consul_state[node_id] else "critical") if node_id in consul_state else "absent"
            nodes.append({
                "id": node_id, "address": self._known_nodes[node_id], "health": node_health(status),
                "consul": consul, "error": failure,
                "state": status.state if status else None,
                "sequencer": status.sequencer if status else None,
                "peers": len(status.peers) if status else 0,
                "markets": [asdict(m) for m in status.markets] if status else [],
            })
        self.view.nodes = nodes
        self.view.divergent = divergences(nodes)
        markets = next((m for m in ([mk["market"] for mk in n["markets"]] for n in nodes) if m), self.view.markets)
        if markets != self.view.markets:
            self.view.markets = markets
        self._follow_markets(markets)
        self.view.sequencers = await self._sequencer_views(sequencers, markets)
        leader = next((s["id"] for s in self.view.sequencers if s["role"] == "leader"), None)
        if leader is not None and leader != self._last_leader:
            if self._last_leader is not None:  # a change seen by this process (it keeps no history of its own)
                self.view.leader_changes.append({"at_ms": int(time.time() * 1000), "from": self._last_leader,
                                                 "to": leader})
            self._last_leader = leader
        self.view.leader = leader  # None while no replica leads (a takeover in progress)
        self.publish("cluster", self.view.as_message())

    async def _node_status(self, address: str) -> tuple[types.NodeStatus | None, str | None]:
        try:
            return await self.public.node_status(address, timeout=1.5), None
        except ExchangeError as error:
            return None, f"{error.code.name}: {error.message}"

    async def _sequencer_views(self, instances: list[tuple[ServiceInstance, bool]],
                               markets: list[str]) -> list[dict[str, Any]]:
        async def view(instance: ServiceInstance, passing: bool) -> dict[str, Any]:
            entry: dict[str, Any] = {"id": instance.instance_id, "address": instance.target,
                                     "consul": "passing" if passing else "critical", "role": "down",
                                     "positions": {}, "error": None}
            stub = sequencer_pb2_grpc.SequencerStub(self._sequencer_channel(instance.target))
            try:
                for market in markets:
                    answer = await stub.GetSequence(sequencer_pb2.GetSequenceRequest(market=market), timeout=1.5)
                    entry["role"] = answer.role or "leader"  # the embedded Sequencer leads alone
                    entry["positions"][market] = answer.current_seq
            except grpc.aio.AioRpcError as error:
                entry["role"], entry["error"] = "down", f"{error.code().name}: {error.details()}"
            return entry

        return list(await asyncio.gather(*(view(i, p) for i, p in instances)))

    def _sequencer_channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._sequencer_channels:
            self._sequencer_channels[address] = aio_channel(address, self.config.tls)
        return self._sequencer_channels[address]

    # -- markets --------------------------------------------------------------------------------------------

    def _follow_markets(self, markets: list[str]) -> None:
        for market in markets:
            if market not in self._market_tasks:
                self.tapes[market] = deque(maxlen=TAPE_LENGTH)
                read_charts = functools.partial(self._read_candles_and_ticker, market)
                self._market_tasks[market] = [
                    asyncio.create_task(self._follow_book(market)),
                    asyncio.create_task(self._follow_trades(market)),
                    asyncio.create_task(self._every(self.config.poll_s, read_charts)),
                ]

    async def _follow_book(self, market: str) -> None:
        """The market's ladder from StreamBook: the client library's self-verifying L2 view (a snapshot, then
        updates, each checked against the node's top-10 checksum; it resynchronises and fails over by itself)."""
        while True:
            try:
                async with await self.public.subscribe_book(market, self.config.book_depth, timeout=30) as view:
                    seen = -1
                    while True:
                        changed = await view.wait_until(lambda last=seen: view.seq != last, 5.0)  # type: ignore[misc]
                        seen = view.seq
                        if changed and seen == 0:
                            continue  # resynchronising: a new snapshot comes
                        book = view.book()  # raises why the subscription ended (or a resync that takes 5 s)
                        if self.books.get(market, {}).get("seq") != book.seq:
                            self._publish_book(book)
            except ExchangeError as error:
                log.info("the book of %s: %s; subscribing again shortly", market, error)
            await asyncio.sleep(1.0)

    def _publish_book(self, book: types.Book) -> None:
        message = {"market": book.market, "seq": book.seq, "checksum": book.checksum,
                   "bids": [[level.price, level.size, level.order_count] for level in book.bids],
                   "asks": [[level.price, level.size, level.order_count] for level in book.asks]}
        self.books[book.market] = message
        self.publish("book", message)

    async def _follow_trades(self, market: str) -> None:
        """The market's public tape: the latest trades (GetTrades), then every trade after them (StreamTrades; the
        client library resumes it on any node without a gap or a repeat)."""
        tape = self.tapes[market]
        while True:
            try:
                if tape:
                    start = tape[-1]["seq"]  # trades of that seq already seen are skipped by their id
                else:
                    page = await self.public.get_trades(market, TAPE_LENGTH, timeout=5)
                    for trade in reversed(page.trades):
                        self._add_trade(trade, publish=False)
                    start = page.seq + 1
                async for trade in self.public.trades(market, start, timeout=30):
                    self._add_trade(trade)
            except OutOfRange:
                tape.clear()  # the node no longer retains where the tape was: start again from the latest
                self.publish("tape", {"market": market, "trades": []})
            except ExchangeError as error:
                log.info("trades of %s: %s; following again shortly", market, error)
            await asyncio.sleep(1.0)

    def _add_trade(self, trade: PublicTrade, publish: bool = True) -> None:
        tape = self.tapes[trade.market]
        if tape and trade.trade_id <= tape[-1]["trade_id"]:
            return
        message = {"market": trade.market, "seq": trade.seq, "trade_id": trade.trade_id, "price": trade.price,
                   "size": trade.size, "side": trade.aggressor_side.name, "time_ms": trade.time_ms}
        tape.append(message)
        if publish:
            self.publish("trade", message)

    async def _read_candles_and_ticker(self, market: str) -> None:
        """The market's 1-minute candles and its ticker, as the nodes answer them (by Sequencer time)."""
        try:
            candles = await self.public.get_candles(market, CANDLE_INTERVAL, limit=CANDLES, timeout=3)
            ticker = await self.public.get_ticker(market, timeout=3)
        except ExchangeError:
            return  # no node answers now: the page keeps the last ones
        last = self.candles.get(market)
        if last is None or last["seq"] != candles.seq:
            self.candles[market] = {"market": market, "interval": candles.interval, "seq": candles.seq,
                                    "candles": [asdict(candle) for candle in candles.candles]}
            self.publish("candles", self.candles[market])
        last = self.tickers.get(market)
        if last is None or last["seq"] != ticker.seq:
            self.tickers[market] = asdict(ticker)
            self.publish("ticker", self.tickers[market])

    # -- a person's orders (the key travels with each request; it is never kept) ----------------------------

    def trader(self, api_key: str) -> AsyncClient:
        """A client of the nodes with `api_key`, on the feed's channels (close it: nothing of it is kept)."""
        base = self.public.connection
        connection = Connection(credentials=base.credentials, api_key=api_key or None, options=base.options)
        return AsyncClient(self.nodes, connection=connection, policy=ORDER_POLICY, stub_factory=self.public.stub)

    async def fills(self, client: AsyncClient, market: str, from_seq: int, quiet_s: float = 0.3,
                    limit: int = 200) -> tuple[list[dict[str, Any]], int]:
        """The caller's fills in `market` from `from_seq` (0: the recent ones) up to now, and where to go on from:
        StreamOrders read until it has nothing more to say for `quiet_s`, or until `limit` fills are read and the
        next event is of a later command (the fills of one command are never split between two answers; the next
        answer starts at that command). The next answer may repeat fills of this one (FILLS_REREAD)."""
        head = (await client.get_book(market, 1, timeout=5)).seq
        start = from_seq or max(1, head - 5000)
        fills: list[dict[str, Any]] = []
        events = client.order_events(market, start, timeout=5)
        # Quiet is not proof that the stream's node has applied up to `head` (another node may have answered it):
        # the next page reads the last FILLS_REREAD sequences again, so a fill a lagging node had not yet applied
        # shows then (a page may repeat a fill; the console keeps one of each).
        next_seq = max(start, head + 1 - FILLS_REREAD)
        try:
            while True:
                try:
                    event = await asyncio.wait_for(anext(events), quiet_s)
                except (TimeoutError, StopAsyncIteration):
                    break
                if len(fills) >= limit and event.seq > fills[-1]["seq"]:
                    next_seq = event.seq  # not sent: the next answer starts with it
                    break
                next_seq = max(next_seq, event.seq + 1)
                if isinstance(event, types.Fill):
                    fills.append({"seq": event.seq, "order_id": event.order_id, "trade_id": event.trade_id,
                                  "price": event.price, "size": event.size, "side": event.side.name,
                                  "maker": event.maker, "remaining": event.remaining})
        except OutOfRange:
            if from_seq:
                raise
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]
        return fills, next_seq
