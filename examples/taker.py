"""A taker: sends immediate-or-cancel orders across the spread, alternating buys and sells, and reports fills.

    python examples/taker.py                                 # against `make cluster-up` (127.0.0.1:50051-50053)
    python examples/taker.py --orders 50 --interval 0.1 HOST:PORT ... --market BTC-USD --size 2
"""

from __future__ import annotations

import argparse
import time

from exchange.client import DEFAULT_NODES, Client, OrderType, Side, add_connection_arguments, connection_from_arguments
from exchange.errors import ExchangeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("nodes", nargs="*", default=list(DEFAULT_NODES), help="node addresses host:port")
    parser.add_argument("--market", default="BTC-USD")
    parser.add_argument("--size", type=int, default=2, help="lots per order")
    parser.add_argument("--orders", type=int, default=20, help="how many orders to send")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between orders")
    add_connection_arguments(parser)
    args = parser.parse_args(argv)

    filled = traded = 0
    with Client(args.nodes, connection=connection_from_arguments(args)) as client:
        for number in range(args.orders):
            book = client.get_book(args.market, depth=1)
            side = Side.BUY if number % 2 == 0 else Side.SELL
            price = book.best_ask if side is Side.BUY else book.best_bid
            if price is None:
                print(f"{side.name}: nothing to take")
                time.sleep(args.interval)
                continue
            try:
                result = client.create_order(side, args.size, price, order_type=OrderType.IOC, market=args.market)
            except ExchangeError as error:
                print(f"{side.name} refused: {error.code.name}: {error.message}")
                return 1
            filled += result.filled_size
            traded += len(result.trades)
            print(f"{side.name} {args.size} @ {price}: filled {result.filled_size} in {len(result.trades)} trades",
                  flush=True)
            time.sleep(args.interval)
    print(f"done: {traded} trades, {filled} lots filled")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
