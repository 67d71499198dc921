"""The log replay checker: reads the Sequencer's log and replays it through a fresh engine.

The log is the truth. A fresh engine fed the whole log must reproduce every node's checksum and
every trade the nodes reported to clients; tests and the convergence checker rely on this.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from devtools.local_cluster import Cluster
from exchange import engine as eng
from exchange.cluster_common import parse_markets, token_metadata
from exchange.node.market_data import INTERVALS_MS, MarketData
from exchange.node.market_data_rpcs import candle_message, public_trade
from exchange.node.order_messages import create_order_response, engine_command
from exchange.v1 import exchange_pb2, exchange_pb2_grpc, sequencer_pb2, sequencer_pb2_grpc, types_pb2


def read_log(cluster: Cluster, market: str, timeout: float = 60.0) -> list[types_pb2.SequencedCommand]:
    """The whole log of `market` from the Sequencer (in HA mode, the leader)."""
    address = cluster.sequencer_address
    with cluster.channel(address) as channel:
        stub = sequencer_pb2_grpc.SequencerStub(channel)
        current = stub.GetSequence(sequencer_pb2.GetSequenceRequest(market=market), timeout=timeout).current_seq
    return _read(cluster, address, market, current, timeout) if current else []


def read_replica_log(cluster: Cluster, index: int, market: str, to_seq: int = 0,
                     timeout: float = 60.0) -> list[types_pb2.SequencedCommand]:
    """The log of `market` as Sequencer replica `index` holds it (its archive), up to `to_seq` (0: all)."""
    return _read(cluster, cluster.sequencer_address_of(index), market, to_seq, timeout)


def _read(cluster: Cluster, address: str, market: str, to_seq: int, timeout: float) -> list[types_pb2.SequencedCommand]:
    """ReadLog 1..to_seq (0: to the end; ReadLog is cluster-internal: the call carries the cluster's token)."""
    with cluster.channel(address) as channel:
        stub = sequencer_pb2_grpc.SequencerStub(channel)
        request = sequencer_pb2.ReadLogRequest(market=market, from_seq=1, to_seq=to_seq)
        metadata = token_metadata(cluster.secret.encode())
        return [entry for batch in stub.ReadLog(request, timeout=timeout, metadata=metadata) for entry in batch.entries]


@dataclass
class Replay:
    engine: eng.Engine
    events: dict[str, dict[int, list[eng.Event]]]  # market -> seq -> events
    commands: dict[str, dict[int, types_pb2.Command]]

    def expected_answer(self, response: exchange_pb2.CreateOrderResponse) -> exchange_pb2.CreateOrderResponse | None:
        """What the log says a node must have answered for the order of `response` (None if that
        sequence number is not in the log)."""
        command = self.commands.get(response.market, {}).get(response.seq)
        if command is None:
            return None
        events = self.events[response.market][response.seq]
        return create_order_response(command, response.seq, events, response.duplicate)

    def trades(self, market: str) -> list[eng.OrderFilled]:
        return [e for events in self.events[market].values() for e in events if isinstance(e, eng.OrderFilled)]


def replay(markets: Iterable[eng.MarketConfig], logs: dict[str, list[types_pb2.SequencedCommand]]) -> Replay:
    """Applies each market's log, in order, to a fresh engine; raises if the log has a gap."""
    engine = eng.Engine(markets)
    result = Replay(engine, {m: {} for m in engine.markets}, {m: {} for m in engine.markets})
    for market, entries in logs.items():
        for expected, entry in enumerate(entries, start=1):
            if entry.seq != expected:
                raise AssertionError(f"{market}: log has seq {entry.seq} where {expected} was expected")
            command = types_pb2.Command.FromString(entry.command)
            result.commands[market][entry.seq] = command
            result.events[market][entry.seq] = engine.apply(engine_command(command, entry.seq))
    return result


def market_data_of(result: Replay) -> MarketData:
    """The public market data the replayed log makes (trades, candles, ticker): what every node must answer."""
    data = MarketData(result.engine.markets)
    for market, commands in result.commands.items():
        for seq in sorted(commands):
            data.apply(market, seq, commands[seq].time_ms, result.events[market][seq])
    return data


def market_data_differences(cluster: Cluster, result: Replay, limit: int = 1000) -> list[str]:
    """Where a node's GetTrades, GetCandles or GetTicker (the latest `limit` trades and candles of every interval)
    differs from the replayed log's; empty if none does. The nodes must be at the log's end."""
    data = market_data_of(result)
    found = []
    for index, address in enumerate(cluster.node_addresses):
        with cluster.channel(address, None) as channel:
            stub = exchange_pb2_grpc.ExchangeNodeStub(channel)
            for market in result.commands:
                tape = data.tape(market)
                trades = stub.GetTrades(exchange_pb2.GetTradesRequest(market=market, limit=limit), timeout=30)
                if list(trades.trades) != [public_trade(market, t) for t in tape.trades_before(market, 0, limit)]:
                    found.append(f"node-{index + 1} {market}: GetTrades differs from the log's trades")
                for interval in INTERVALS_MS:
                    request = exchange_pb2.GetCandlesRequest(market=market, interval=interval, limit=limit)
                    candles = stub.GetCandles(request, timeout=30).candles
                    if list(candles) != [candle_message(c) for c in tape.candles_between(interval, 0, 0, limit)]:
                        found.append(f"node-{index + 1} {market}: {interval} candles differ from the log's")
                ticker = stub.GetTicker(exchange_pb2.GetTickerRequest(market=market), timeout=30)
                window, last = tape.window(), tape.last_trade
                if (ticker.seq, ticker.time_ms, ticker.last_trade_id, ticker.open_24h, ticker.high_24h,
                        ticker.low_24h, ticker.volume_24h) != (tape.seq, tape.time_ms, last.trade_id if last else 0,
                                                               window.open, window.high, window.low, window.volume):
                    found.append(f"node-{index + 1} {market}: the ticker differs from the log's")
    return found


def replay_cluster(cluster: Cluster) -> Replay:
    """The replay of every market's whole log."""
    configs = parse_markets(cluster.markets)
    return replay(configs, {m.symbol: read_log(cluster, m.symbol) for m in configs})
