"""A market maker: quotes a bid and an ask around a mid price and re-quotes a side as soon as it is filled.

    python examples/market_maker.py                          # against `make cluster-up` (127.0.0.1:50051-50053)
    python examples/market_maker.py --duration 30 HOST:PORT ... --market ETH-USD --mid 2000 --spread 2 --size 5

Fills are seen on the market's event stream (trades whose maker is one of our quotes); the quotes are post-only,
so a quote that would cross is refused rather than trading as a taker. On exit the quotes are cancelled.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import threading
import time

from exchange.client import (
    DEFAULT_NODES,
    Client,
    OrderStatus,
    OrderType,
    Side,
    TradeExecuted,
    add_connection_arguments,
    connection_from_arguments,
)
from exchange.errors import ExchangeError


def watch_fills(client: Client, market: str, fills: queue.Queue[TradeExecuted], stop: threading.Event) -> None:
    """Puts every trade of the market on `fills` (the maker decides which are its own)."""
    with contextlib.suppress(ExchangeError):  # the client was closed
        for event in client.events(market):
            if stop.is_set():
                return
            if isinstance(event, TradeExecuted):
                fills.put(event)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("nodes", nargs="*", default=list(DEFAULT_NODES), help="node addresses host:port")
    parser.add_argument("--market", default="BTC-USD")
    parser.add_argument("--mid", type=int, default=100, help="price to quote around (ticks)")
    parser.add_argument("--spread", type=int, default=1, help="ticks between the mid and each quote")
    parser.add_argument("--size", type=int, default=5, help="lots per quote")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds to run")
    add_connection_arguments(parser)
    args = parser.parse_args(argv)

    fills: queue.Queue[TradeExecuted] = queue.Queue()
    stop = threading.Event()
    quotes: dict[Side, int] = {}  # side -> order id of the live quote
    placed = filled = 0
    with Client(args.nodes, connection=connection_from_arguments(args)) as client:
        threading.Thread(target=watch_fills, args=(client, args.market, fills, stop), daemon=True).start()
        time.sleep(0.3)  # let the event stream open before quoting

        def quote(side: Side) -> None:
            nonlocal placed
            price = args.mid - args.spread if side is Side.BUY else args.mid + args.spread
            result = client.create_order(side, args.size, price, order_type=OrderType.POST_ONLY, market=args.market)
            placed += 1
            if result.status is OrderStatus.RESTING:
                quotes[side] = result.order_id
                print(f"quote {side.name} {args.size} @ {price}: order {result.order_id}", flush=True)
            else:
                quotes.pop(side, None)
                print(f"quote {side.name} @ {price} not resting: {result.status.name} {result.reject_reason}")

        deadline = time.monotonic() + args.duration
        try:
            for side in Side:
                quote(side)
            while time.monotonic() < deadline:
                try:
                    trade = fills.get(timeout=0.2)
                except queue.Empty:
                    for side in Side:
                        if side not in quotes:  # a quote that could not rest: try again
                            quote(side)
                    continue
                for side, order_id in list(quotes.items()):
                    if trade.maker_order_id != order_id:
                        continue
                    filled += trade.size
                    print(f"filled {trade.size} of {side.name} quote {order_id} @ {trade.price}", flush=True)
                    left = client.get_order(order_id, market=args.market)
                    if left.status is not OrderStatus.RESTING:
                        print(f"re-quote {side.name}", flush=True)
                        quote(side)
        except ExchangeError as error:
            print(f"stopped: {error.code.name}: {error.message}")
            return 1
        finally:
            stop.set()
            for order_id in quotes.values():
                with contextlib.suppress(ExchangeError):  # filled meanwhile
                    client.cancel_order(order_id, market=args.market, timeout=5)
    print(f"done: {placed} quotes placed, {filled} lots filled")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
