"""`exchange-cli trades [--watch]`, `candles` and `ticker`: public market data by Sequencer time, as tables.

Times are the Sequencer's (UNIX milliseconds in the API), shown in UTC."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Sequence

from exchange.client import Client
from exchange.client.market_data import INTERVALS, Candles, PublicTrade, Ticker


def utc(time_ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(time_ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{time_ms % 1000:03d}"


def table(header: tuple[str, ...], rows: Sequence[tuple[object, ...]]) -> str:
    cells = [tuple(str(cell) for cell in row) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


TRADE_HEADER = ("time (UTC)", "trade", "seq", "side", "price", "size")


def trade_row(trade: PublicTrade) -> tuple[object, ...]:
    return (utc(trade.time_ms), trade.trade_id, trade.seq, trade.aggressor_side.name, trade.price, trade.size)


def format_candles(candles: Candles) -> str:
    rows = [(utc(c.start_ms)[:16], c.open, c.high, c.low, c.close, c.volume, c.trade_count) for c in candles.candles]
    text = table(("start (UTC)", "open", "high", "low", "close", "volume", "trades"), rows)
    note = f"\n(candles before {utc(candles.retained_from_ms)} are no longer retained by this node)" \
        if candles.retained_from_ms else ""
    return f"{candles.market} {candles.interval} candles at seq {candles.seq}\n{text}" + \
        ("" if rows else "\n(no trades in the range)") + note


def format_ticker(ticker: Ticker) -> str:
    def price(value: int | None, size: int) -> str:
        return "-" if value is None else f"{value} ({size})"

    change = f"{ticker.change_24h:+d}" if ticker.trade_count_24h else "-"
    rows: list[tuple[object, ...]] = [
        ("last", price(ticker.last_price, ticker.last_size)),
        ("best bid", price(ticker.best_bid, ticker.best_bid_size)),
        ("best ask", price(ticker.best_ask, ticker.best_ask_size)),
        ("24h open", ticker.open_24h if ticker.trade_count_24h else "-"),
        ("24h high", ticker.high_24h if ticker.trade_count_24h else "-"),
        ("24h low", ticker.low_24h if ticker.trade_count_24h else "-"),
        ("24h change", change),
        ("24h volume", ticker.volume_24h),
        ("24h trades", ticker.trade_count_24h),
    ]
    width = max(len(str(name)) for name, _ in rows)
    lines = [f"{ticker.market} at seq {ticker.seq}, {utc(ticker.time_ms)} UTC (Sequencer time)"]
    lines += [f"  {str(name).ljust(width)}  {value}" for name, value in rows]
    return "\n".join(lines)


def add_commands(commands: argparse._SubParsersAction) -> None:
    trades = commands.add_parser("trades", help="recent public trades; --watch follows new ones live")
    trades.add_argument("--limit", type=int, default=20, help="recent trades to show (1-1000)")
    trades.add_argument("--watch", action="store_true", help="then go on with new trades as they happen")
    candles = commands.add_parser("candles", help="OHLCV candles by Sequencer time")
    candles.add_argument("--interval", choices=INTERVALS, default="1m")
    candles.add_argument("--limit", type=int, default=20, help="the latest N candles of the range (1-1000)")
    candles.add_argument("--from-ms", type=int, default=0, help="candles starting at or after (UNIX ms)")
    candles.add_argument("--to-ms", type=int, default=0, help="candles starting before (UNIX ms)")
    commands.add_parser("ticker", help="last price, best bid and ask, and the last 24 hours")


COMMANDS = ("trades", "candles", "ticker")


def run(client: Client, args: argparse.Namespace) -> int:
    """Runs one of COMMANDS (ExchangeError escapes to the CLI's handler)."""
    if args.command == "candles":
        print(format_candles(client.get_candles(args.market, args.interval, from_ms=args.from_ms, to_ms=args.to_ms,
                                                limit=args.limit, timeout=5)))
    elif args.command == "ticker":
        print(format_ticker(client.get_ticker(args.market, timeout=5)))
    else:
        page = client.get_trades(args.market, args.limit, timeout=5)
        recent = list(reversed(page.trades))
        print(table(TRADE_HEADER, [trade_row(t) for t in recent]), flush=True)
        if args.watch:
            from_seq = recent[-1].seq + 1 if recent else page.seq + 1
            for trade in client.trades(args.market, from_seq):
                print(table(TRADE_HEADER, [trade_row(trade)]).splitlines()[1], flush=True)
    return 0
