"""`exchange-cli`: place, amend and cancel orders, look at a book live, and check a cluster.

Built on the client library (`exchange.client`); `--node` may list several addresses (comma-separated), and
the CLI then fails over between them as any client does."""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from discovery import DiscoveryError
from discovery.consul_kv import ConsulKV
from exchange import cli_market_data
from exchange.accounts import AccountError, add_account, add_key, list_accounts, set_active
from exchange.client import (
    Book,
    BookLevel,
    Client,
    Fill,
    NewOrder,
    OrderResult,
    OrderType,
    RetryPolicy,
    SelfTradePrevention,
    Side,
    SubscriptionStats,
    add_connection_arguments,
    connection_from_arguments,
    types,
)
from exchange.cluster_common import add_consul_arguments, add_secret_argument
from exchange.errors import ExchangeError, Unavailable
from exchange.shared.tls import consul_endpoint

ORDER_TYPES = [order_type.name for order_type in OrderType]


T = TypeVar("T")
# `exchange-cli fills` without --watch: the stream's silence that ends the listing (the replay of what happened
# comes at once; only the caller's own events come at all)
FILLS_QUIET_S = 2.0

def format_book(book: Book) -> str:
    lines = [f"{book.market}  seq {book.seq}  checksum {book.checksum}"
             + (f"  (LAGGING: sequencer at {book.known_seq})" if book.known_seq > book.seq else "")]
    lines.append(f"{'orders':>8} {'size':>12} {'bid':>12} | {'ask':<12} {'size':<12} {'orders':<8}")
    for i in range(max(len(book.bids), len(book.asks))):
        bid = book.bids[i] if i < len(book.bids) else None
        ask = book.asks[i] if i < len(book.asks) else None
        left = f"{bid.order_count:>8} {bid.size:>12} {bid.price:>12}" if bid else " " * 34
        right = f"{ask.price:<12} {ask.size:<12} {ask.order_count:<8}" if ask else ""
        lines.append(f"{left} | {right}")
    if not book.bids and not book.asks:
        lines.append(f"{'(empty book)':^70}")
    return "\n".join(lines)


def format_ladder(book: Book, stats: SubscriptionStats, width: int = 30) -> str:
    """A live L2 view (`book --watch`): asks above bids, best prices in the middle, each level's size as a bar,
    with the view's sequence and its checksum status."""
    reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(stats.resyncs_by_reason.items()))
    lines = [f"{book.market}  seq {book.seq}  top-10 checksum {book.checksum:#010x} verified "
             f"({stats.verified} checks, {stats.updates} updates, {stats.resyncs} resyncs"
             + (f": {reasons}" if reasons else "") + ")"]
    largest = max((level.size for level in (*book.bids, *book.asks)), default=1)

    def row(label: str, level: BookLevel) -> str:
        bar = "#" * max(1, round(width * level.size / largest))
        return f"{label} {level.price:>12} {level.size:>12} {level.order_count:>6}  {bar}"

    lines.append(f"    {'price':>12} {'size':>12} {'orders':>6}")
    lines += [row("ask", level) for level in reversed(book.asks)]
    spread = f"spread {book.best_ask - book.best_bid}" if book.best_ask and book.best_bid else "no spread"
    lines.append(f"    {'-' * 12} {spread:^12} {'-' * 6}")
    lines += [row("bid", level) for level in book.bids]
    if not book.bids and not book.asks:
        lines.append(f"{'(empty book)':^40}")
    return "\n".join(lines)


def watch_book(client: Client, node: str, market: str, depth: int) -> None:
    """Redraws the L2 view kept from StreamBook in place, at most 5 times a second, until interrupted. Shows
    `depth` levels a side of a view of at least 10 levels (StreamBook's least: its checksum covers the top 10)."""
    from exchange.engine.l2 import MIN_STREAM_DEPTH  # only here: the other commands load no engine code

    with client.subscribe_book(market, max(depth, MIN_STREAM_DEPTH)) as subscription:
        shown = [-1]  # the sequence on screen
        while True:
            subscription.wait_until(lambda: subscription.seq != shown[0], timeout=1.0)
            shown[0] = subscription.seq
            try:
                text = format_ladder(subscription.book(depth), subscription.stats)
            except Unavailable as resyncing:  # between a failed check and the new snapshot
                text = f"{market}: {resyncing.message} ({subscription.stats})"
            print("\033[2J\033[H" + f"{subscription.address or node}  {time.strftime('%H:%M:%S')}\n" + text,
                  flush=True)
            time.sleep(0.2)


def format_order_result(result: OrderResult) -> str:
    status = result.status.name
    lines = [f"order {result.order_id} ({result.market}, seq {result.seq}): {status}"
             f"  filled {result.filled_size}  resting {result.remaining_size}"
             + (f"  cancelled {result.cancelled_size}" if result.cancelled_size else "")
             + (f"  reason {result.reject_reason}" if result.reject_reason else "")
             + ("  (duplicate: first result)" if result.duplicate else "")]
    for trade in result.trades:
        lines.append(f"  trade {trade.trade_id}: {trade.size} @ {trade.price}  "
                     f"maker {trade.maker_order_id} / taker {trade.taker_order_id}")
    return "\n".join(lines)


def print_cluster_status(addresses: list[str], client: Client | None = None) -> int:
    client = client or Client(addresses)
    rows = []
    failures = 0
    for address in addresses:
        try:
            status = client.node_status(address, timeout=3)
        except ExchangeError as error:
            failures += 1
            rows.append((address, "-", "DOWN", "-", "-", "-", "-", "-", error.code.name))
            continue
        for market in status.markets:
            rows.append((address, status.node_id, status.state, market.market, str(market.applied_seq),
                         str(market.checksum), str(market.lag), str(market.pending), f"{len(status.peers)} peers"))
    header = ("address", "node", "state", "market", "seq", "checksum", "lag", "pending", "peers")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    by_market: dict[str, set[tuple[str, str]]] = {}
    for row in rows:
        if row[2] != "DOWN":
            by_market.setdefault(row[3], set()).add((row[4], row[5]))
    agree = all(len(views) == 1 for views in by_market.values())
    print("replicas agree" if agree and not failures else "replicas DIFFER or are down (may be in flight)")
    return 0 if agree and not failures else 1


def print_fills(client: Client, market: str, from_seq: int, watch: bool, everything: bool,
                quiet_s: float = FILLS_QUIET_S) -> int:
    """Your fills from `from_seq`; without `watch`, up to what has happened so far: StreamOrders carries only your
    own orders' events, so it may say nothing more once it has replayed them, and the listing then ends when the
    stream has been quiet for `quiet_s` (or at an event of the market's current sequence)."""
    until = client.get_book(market, depth=1, timeout=5).seq
    events: Iterable[types.OrderEvent] = client.order_events(market, from_seq)
    for event in events if watch else _until_quiet(events, quiet_s):
        if everything or isinstance(event, Fill):
            body = types.describe(event, skip=("market", "seq")).replace("\n", " ")
            print(f"{event.market} #{event.seq} {event.kind}: {body}", flush=True)
        if not watch and event.seq >= until:
            break
    return 0


def _until_quiet(events: Iterable[T], quiet_s: float) -> Iterator[T]:
    """The items of `events` until none comes for `quiet_s`. They are read in a daemon thread, which the blocked
    stream leaves behind for the process's end (closing the client ends the call)."""
    items: queue.Queue[tuple[str, Any]] = queue.Queue()

    def pump() -> None:
        try:
            for event in events:
                items.put(("event", event))
            items.put(("end", None))
        except BaseException as error:  # noqa: BLE001 - handed to the reader, which raises it
            items.put(("error", error))

    threading.Thread(target=pump, name="fills-stream", daemon=True).start()
    while True:
        try:
            kind, item = items.get(timeout=quiet_s)
        except queue.Empty:
            return
        if kind == "end":
            return
        if kind == "error":
            raise item
        yield item


def manage_accounts(consul: str, token: str | None, secret: bytes, action: str, name: str | None,
                    tls_dir: Path | None = None) -> int:
    """`exchange-cli accounts ...`: writes the registry every node follows (exchange/accounts.py), its records
    signed with the cluster secret, through Consul with the accounts role's token."""
    host, port, https = consul_endpoint(consul, tls_dir)
    kv = ConsulKV(host, port, token=token, https=https)
    try:
        if action == "list":
            accounts, forged = list_accounts(kv, secret)
            for account in accounts:
                state = "active" if account.active else "DISABLED"
                print(f"{account.name:<24} {state:<9} {len(account.key_hashes)} key(s)")
            for forged_name in forged:
                print(f"{forged_name:<24} REFUSED   its record does not verify with this cluster secret (nodes "
                      "ignore it)")
            return 0
        if name is None:
            print(f"accounts {action} needs the account's name", file=sys.stderr)
            return 2
        if action in ("add", "add-key"):
            key = add_account(kv, secret, name) if action == "add" else add_key(kv, secret, name)
            print(f"account {name}: new API key (shown once; keep it secret):\n{key}")
        else:
            account = set_active(kv, secret, name, action == "enable")
            print(f"account {account.name} is {'active' if account.active else 'disabled'}")
    except (AccountError, DiscoveryError) as error:
        print(f"accounts {action}: {error}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exchange-cli", description=__doc__)
    parser.add_argument("--node", default=os.environ.get("EXCHANGE_NODE", "127.0.0.1:50051"),
                        help="node address host:port, or several comma-separated to fail over (env EXCHANGE_NODE)")
    parser.add_argument("--market", default="", help="market symbol (default: the cluster's default market)")
    add_connection_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    for side in ("buy", "sell"):
        order = commands.add_parser(side, help=f"place a {side} order")
        order.add_argument("size", type=int, help="size in lots")
        order.add_argument("--price", type=int, default=0, help="limit price in ticks (not for market orders)")
        order.add_argument("--type", choices=ORDER_TYPES, default="LIMIT")
        order.add_argument("--client-order-id", default=None, help="idempotency key (default: a new random one)")
        order.add_argument("--stp", choices=[mode.name for mode in SelfTradePrevention], default=None,
                           help="self-trade prevention (default CANCEL_TAKER)")
    cancel = commands.add_parser("cancel", help="cancel a resting order")
    cancel.add_argument("order_id", type=int)
    amend = commands.add_parser("amend", help="change a resting order's size and/or price")
    amend.add_argument("order_id", type=int)
    amend.add_argument("--size", type=int, required=True, help="new remaining size in lots")
    amend.add_argument("--price", type=int, default=0, help="new price in ticks (default: keep)")
    book = commands.add_parser("book", help="show the book; --watch follows it live (the L2 stream, verified)")
    book.add_argument("--depth", type=int, default=10)
    book.add_argument("--watch", action="store_true")
    order = commands.add_parser("order", help="show one order")
    order.add_argument("order_id", type=int)
    events = commands.add_parser("events", help="stream a market's events")
    events.add_argument("--from-seq", type=int, default=1)
    status = commands.add_parser("status", help="sequence and checksum of every node: do the replicas agree?")
    status.add_argument("addresses", nargs="*", help="node addresses (default: --node)")
    commands.add_parser("orders", help="your open orders in the market")
    fills = commands.add_parser("fills", help="your fills (and other order events with --all); --watch follows")
    fills.add_argument("--from-seq", type=int, default=1)
    fills.add_argument("--watch", action="store_true", help="go on with new ones as they happen")
    fills.add_argument("--all", action="store_true", help="every event of your orders, not only fills")
    cli_market_data.add_commands(commands)  # trades [--watch], candles, ticker
    accounts = commands.add_parser("accounts", help="the account registry in Consul KV (administrators)")
    add_consul_arguments(accounts)
    add_secret_argument(accounts)
    accounts.add_argument("action", choices=["add", "add-key", "disable", "enable", "list"])
    accounts.add_argument("name", nargs="?", help="the account (all but list)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "accounts":
        return manage_accounts(args.consul, args.consul_token, args.cluster_secret.encode(), args.action, args.name,
                               args.tls_dir)

    try:
        # a person waits: give up after 30 s (5 s for reads), as the CLI always did
        client = Client(args.node, connection=connection_from_arguments(args),
                        policy=RetryPolicy(timeout=30, attempt_timeout=30))
    except (ExchangeError, ValueError) as error:  # no address in --node, an --api-key no key can be
        print(f"exchange-cli: {error}", file=sys.stderr)
        return 2
    try:
        return _run(client, args)
    except ExchangeError as error:
        print(f"{error.code.name}: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


def _run(client: Client, args: argparse.Namespace) -> int:
    """One command of a person's (not `accounts`), on `client`: its exit status."""
    if args.command in ("buy", "sell"):
        result = client.place(NewOrder(
            Side[args.command.upper()], args.size, args.price or None, OrderType[args.type], args.market,
            args.client_order_id, SelfTradePrevention[args.stp] if args.stp else None))
        print(format_order_result(result))
    elif args.command == "cancel":
        cancelled = client.cancel_order(args.order_id, market=args.market)
        if cancelled.uncertain:
            print(f"order {cancelled.order_id} no longer rests (a retried cancel: removed by it, or before)")
        else:
            print(f"order {cancelled.order_id} cancelled ({cancelled.cancelled_size} lots), seq {cancelled.seq}")
    elif args.command == "amend":
        amended = client.amend_order(args.order_id, args.size, args.price or None, market=args.market)
        print(f"order {amended.order_id} now {amended.remaining_size} @ {amended.price}"
              f" ({'kept' if amended.priority_kept else 'lost'} priority), seq {amended.seq}")
    elif args.command == "book":
        if args.watch:
            watch_book(client, args.node, args.market, args.depth)
        else:
            print(format_book(client.get_book(args.market, args.depth, timeout=5)))
    elif args.command == "order":
        print(types.describe(client.get_order(args.order_id, market=args.market, timeout=5)))
    elif args.command == "events":
        for event in client.events(args.market, args.from_seq):
            body = types.describe(event, skip=("market", "seq")).replace("\n", " ")
            print(f"{event.market} #{event.seq} {event.kind}: {body} ", flush=True)
    elif args.command == "status":
        return print_cluster_status(args.addresses or args.node.split(","), client)
    elif args.command == "orders":
        orders = client.list_orders(args.market)
        for open_order in orders:
            print(f"order {open_order.order_id} {open_order.side.name if open_order.side else '?'} "
                  f"{open_order.remaining_size}/{open_order.size} @ {open_order.price}  filled "
                  f"{open_order.filled_size}" + (f"  ({open_order.client_order_id})" if open_order.client_order_id
                                                 else ""))
        print(f"{len(orders)} open order(s)")
    elif args.command == "fills":
        return print_fills(client, args.market, args.from_seq, args.watch, args.all)
    elif args.command in cli_market_data.COMMANDS:
        return cli_market_data.run(client, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
