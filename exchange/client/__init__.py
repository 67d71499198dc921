"""The exchange's client library, for the programs traders write: sync (`Client`) and asyncio (`AsyncClient`).

    from exchange.client import Client

    with Client(["127.0.0.1:50051", "127.0.0.1:50052"]) as client:   # or Client.from_consul("127.0.0.1:8500")
        result = client.buy(10, 100)                                  # 10 lots at 100 ticks: an OrderResult
        print(result.status.name, result.filled_size, [t.price for t in result.trades])
        print(client.get_book(depth=5).best_ask)
        with client.subscribe_book("BTC-USD", depth=10) as book:     # a local L2 book (StreamBook), verified
            print(book.book(depth=3), book.stats)

Results are frozen dataclasses (`exchange.client.types`) with ints for prices (ticks) and sizes (lots). Failures
are the exchange's one error hierarchy (`exchange.errors`: `NotFound`, `InvalidArgument`, ... each with `code`,
`message` and `retriable`). Retries and failover: `exchange.client.core` (docs/client.md). `sync.py` is generated
from `aio.py` (devtools/unasync.py, `make client-sync`): edit `aio.py`.

May import only the shared floor (`exchange.shared`, `exchange.errors`, the stubs `exchange.v1`): importing
the client loads neither the engine, the node, the Sequencer, discovery, py-consul nor sortedcontainers
(tests/unit/test_layout.py). `ConsulNodes` imports py-consul, and a book subscription the level book,
inside the code that needs them.
"""

from exchange.client.aio import AsyncBookSubscription, AsyncClient
from exchange.client.book import SubscriptionStats
from exchange.client.core import (
    DEFAULT_NODES,
    Connection,
    add_connection_arguments,
    connection_from_arguments,
    connection_of,
    new_client_order_id,
)
from exchange.client.market_data import Candle, Candles, PublicTrade, Ticker, TradesPage
from exchange.client.nodes import ClientStats, ConsulNodes, NodeSource, RetryPolicy, StaticNodes
from exchange.client.sync import BookSubscription, Client
from exchange.client.types import (
    AmendResult,
    Book,
    BookLevel,
    BookOrder,
    CancelResult,
    Event,
    Fill,
    MarketStatus,
    NewOrder,
    NodeStatus,
    Order,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderEvent,
    OrderReduced,
    OrderRejected,
    OrderRested,
    OrderResult,
    OrderStatus,
    OrderType,
    PreventedTrade,
    SelfTradePrevention,
    Side,
    Trade,
    TradeExecuted,
)
from exchange.errors import ExchangeError

__all__ = [
    "DEFAULT_NODES", "AmendResult", "AsyncBookSubscription", "AsyncClient", "Book", "BookLevel", "BookOrder",
    "BookSubscription", "CancelResult", "Client", "ClientStats", "Connection", "ConsulNodes", "Event", "ExchangeError",
    "Fill", "MarketStatus", "NewOrder", "NodeSource", "NodeStatus", "Order", "OrderAccepted", "OrderAmended",
    "OrderCancelled", "OrderEvent", "OrderReduced", "OrderRejected", "OrderRested", "OrderResult", "OrderStatus",
    "OrderType", "PreventedTrade", "RetryPolicy", "SelfTradePrevention", "Side", "StaticNodes", "SubscriptionStats",
    "Trade", "TradeExecuted", "add_connection_arguments",
    "Candle", "Candles", "PublicTrade", "Ticker", "TradesPage",
    "connection_from_arguments", "connection_of", "new_client_order_id",
]
