"""devtools/workload.py: the random-order generator of the bench, the chaos checker and the tests.

Every order it calls valid passes the node's own validation, and every order it spoiled on purpose is
refused with exactly the status it says, so the callers' expectations rest on the product's rules.
"""

from __future__ import annotations

import random

import pytest

from devtools.workload import NEGATIVE_PRICE, SIZE_ZERO, UNKNOWN_MARKET, SideStyle, Workload
from exchange.cluster_common import parse_markets
from exchange.errors import STATUS_BY_ERROR, ExchangeError
from exchange.node.order_messages import new_order_command
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2

MARKETS = {m.symbol: m for m in parse_markets("BTC-USD,ETH-USD")}
EVERY_TYPE = {types_pb2.LIMIT: 4, types_pb2.MARKET: 1, types_pb2.IOC: 1, types_pb2.FOK: 1, types_pb2.POST_ONLY: 1}


def node_answer(request: pb.CreateOrderRequest) -> str:
    try:
        new_order_command(request, MARKETS, "test", "acct")
    except ExchangeError as error:
        return STATUS_BY_ERROR[type(error)].name
    return ""


@pytest.mark.parametrize("sides", ["explicit", "signed", "either"])
def test_every_order_gets_the_answer_the_generator_expects(sides: SideStyle) -> None:
    workload = Workload(markets=("", "BTC-USD", "ETH-USD"), types=EVERY_TYPE, sides=sides,
                        invalid_share=0.2, invalid=(SIZE_ZERO, NEGATIVE_PRICE, UNKNOWN_MARKET))
    generator = workload.orders(random.Random(sides))
    drawn = [generator.next() for _ in range(2000)]

    assert [node_answer(order.request) for order in drawn] == [order.error for order in drawn]
    errors = {order.error for order in drawn}
    assert errors == {"", "INVALID_ARGUMENT", "NOT_FOUND"}
    assert 300 < sum(1 for order in drawn if order.error) < 500
    assert {order.request.order_type for order in drawn} == set(EVERY_TYPE)
    assert all(order.request.limit_price == 0 for order in drawn
               if order.request.order_type == types_pb2.MARKET and not order.error)
    explicit = {order.request.side != types_pb2.SIDE_UNSPECIFIED for order in drawn}
    assert explicit == {"explicit": {True}, "signed": {False}, "either": {True, False}}[sides]


def test_ranges_ids_and_determinism() -> None:
    workload = Workload(prices=(990, 1010), sizes=(1, 5), id_share=0.3)
    first = workload.orders(random.Random(3), ids="s1-").request()
    generator = workload.orders(random.Random(3), ids="s1-")
    requests = [generator.request() for _ in range(500)]

    assert requests[0] == first, "the same workload and seed give the same orders"
    assert all(990 <= r.limit_price <= 1010 and 1 <= r.size <= 5 and r.market == "BTC-USD" for r in requests)
    with_ids = [(n, r.client_order_id) for n, r in enumerate(requests, start=1) if r.client_order_id]
    assert 100 < len(with_ids) < 200
    assert all(coid == f"s1-{n}" for n, coid in with_ids)
    assert generator.request("mine").client_order_id == "mine", "an explicit id replaces the scheme"
    assert not Workload().orders(random.Random(1)).request().client_order_id, "no prefix, no ids"
