"""Random orders: the one generator behind the bench, the chaos checker's clients and the tests.

A `Workload` says what the orders look like (markets, price and size ranges, order-type weights, how
the side is given, how often an order is deliberately invalid and in which ways, which orders carry a
client_order_id); `Workload.orders(rng)` gives an `OrderGenerator` that draws them from that random
source. Every invalid order comes with the gRPC status name a node must answer it with:

    gen = Workload(markets=("BTC-USD", "ETH-USD"), invalid_share=0.1).orders(random.Random(1), ids="c1-")
    order = gen.next()          # order.request: a CreateOrderRequest; order.error: "" or e.g. "NOT_FOUND"

The same Workload and seed give the same orders. (The engine-level command stream of the unit tests,
tests/unit/conftest.py, is another layer and does not use this.)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2


@dataclass(frozen=True)
class Invalid:
    """One way to make an order invalid, and the status (gRPC code name) a node must refuse it with."""

    name: str
    error: str
    spoil: Callable[[random.Random, pb.CreateOrderRequest], None]


def _size_zero(rng: random.Random, request: pb.CreateOrderRequest) -> None:
    request.size = 0


def _negative_price(rng: random.Random, request: pb.CreateOrderRequest) -> None:
    request.order_type, request.limit_price = types_pb2.LIMIT, -rng.randint(1, 100)


def _unknown_market(rng: random.Random, request: pb.CreateOrderRequest) -> None:
    request.market = "DOGE-USD"


SIZE_ZERO = Invalid("size 0", "INVALID_ARGUMENT", _size_zero)
NEGATIVE_PRICE = Invalid("negative limit price", "INVALID_ARGUMENT", _negative_price)
UNKNOWN_MARKET = Invalid("unknown market", "NOT_FOUND", _unknown_market)

# How the side is given: `side` BUY/SELL with a positive size, the sign of `size` alone (negative sells),
# or either of the two at random (half each).
SideStyle = Literal["explicit", "signed", "either"]


class Order(NamedTuple):
    request: pb.CreateOrderRequest
    error: str  # "" for a valid order, else the status name it must be refused with


@dataclass(frozen=True)
class Workload:
    """What the orders look like. Defaults: LIMIT orders of 1-20 lots at 95-105 ticks on BTC-USD, explicit
    side, all valid. MARKET orders never carry a price."""

    markets: Sequence[str] = ("BTC-USD",)  # drawn uniformly: repeat a name to weight it, "" is the default market
    prices: tuple[int, int] = (95, 105)  # inclusive, ticks
    sizes: tuple[int, int] = (1, 20)  # inclusive, lots
    # order type -> weight
    types: Mapping[types_pb2.OrderType, float] = field(default_factory=lambda: {types_pb2.LIMIT: 1})
    sides: SideStyle = "explicit"
    invalid_share: float = 0.0  # share of orders spoiled on purpose, each by one of `invalid` (uniformly)
    invalid: Sequence[Invalid] = (SIZE_ZERO, NEGATIVE_PRICE)
    id_share: float = 1.0  # with an id prefix: the share of orders that carry a client_order_id
    # self-trade prevention mode -> weight; empty: the field stays unset (CANCEL_TAKER)
    stp: Mapping[types_pb2.SelfTradePrevention, float] = field(default_factory=dict)

    def orders(self, rng: random.Random, ids: str = "") -> OrderGenerator:
        """A generator drawing from `rng`; with `ids` the n-th order (from 1) may carry the id f"{ids}{n}"."""
        return OrderGenerator(self, rng, ids)


class OrderGenerator:
    def __init__(self, workload: Workload, rng: random.Random, ids: str = "") -> None:
        self.workload = workload
        self.rng = rng
        self.ids = ids
        self.count = 0  # orders drawn so far
        self._types = list(workload.types)
        self._weights = list(workload.types.values())

    def next(self, client_order_id: str | None = None) -> Order:
        """The next order; `client_order_id` (if given) replaces the generator's id scheme for it."""
        w, rng = self.workload, self.rng
        self.count += 1
        order_type = rng.choices(self._types, weights=self._weights)[0]
        side = rng.choice([types_pb2.BUY, types_pb2.SELL])
        size = rng.randint(*w.sizes)
        request = pb.CreateOrderRequest(
            market=rng.choice(w.markets), order_type=order_type,
            limit_price=0 if order_type == types_pb2.MARKET else rng.randint(*w.prices),
        )
        if w.sides == "explicit" or w.sides == "either" and rng.random() < 0.5:
            request.side, request.size = side, size
        else:
            request.size = size if side == types_pb2.BUY else -size
        if w.stp:
            request.self_trade_prevention = rng.choices(list(w.stp), weights=list(w.stp.values()))[0]
        if client_order_id is not None:
            request.client_order_id = client_order_id
        elif self.ids and (w.id_share >= 1 or rng.random() < w.id_share):
            request.client_order_id = f"{self.ids}{self.count}"
        error = ""
        if w.invalid_share and rng.random() < w.invalid_share:
            spoiler = rng.choice(w.invalid)
            spoiler.spoil(rng, request)
            error = spoiler.error
        return Order(request, error)

    def request(self, client_order_id: str | None = None) -> pb.CreateOrderRequest:
        """The next order's request alone."""
        return self.next(client_order_id).request
