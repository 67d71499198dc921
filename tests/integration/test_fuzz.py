"""Bad input fuzzed at every client RPC of a real cluster: every answer is a clear status (never UNKNOWN
or INTERNAL), no process dies, and a rejected call changes no book anywhere."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.cluster import Cluster
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc

pytestmark = pytest.mark.integration

INT64 = st.one_of(
    st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 2**62, -(2**62), 100, -100]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
ENUM = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 6, -1, 2**31 - 1]), st.integers(-(2**31), 2**31 - 1))
TEXT = st.one_of(st.sampled_from(["", "BTC-USD", "ETH-USD", "DOGE", "btc-usd"]), st.text(max_size=80),
                 st.text(alphabet='xyz', min_size=2_000, max_size=5_000))
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
CLEAR = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.PERMISSION_DENIED,
}
METHODS = ["CreateOrder", "CancelOrder", "AmendOrder", "GetOrderBook", "GetOrder", "GetStatus", "BroadcastOrder"]


CLUSTER_MARKETS = "BTC-USD,ETH-USD:tick_size=5:lot_size=2"


@pytest.fixture(scope="module")
def fuzz_cluster(module_cluster: Cluster) -> Cluster:
    return module_cluster


@pytest.fixture(scope="module")
def channels(fuzz_cluster: Cluster) -> Iterator[list[grpc.Channel]]:
    opened = [grpc.insecure_channel(address) for address in fuzz_cluster.node_addresses]
    yield opened
    for channel in opened:
        channel.close()


def state(cluster: Cluster) -> list[tuple[str, int, int]]:
    return [(m.market, m.applied_seq, m.checksum) for i in range(3) for m in cluster.status(i).markets]


def assert_clear(error: grpc.RpcError) -> None:
    code = error.code()  # type: ignore[attr-defined]
    assert code in CLEAR, f"unclear status {code}: {error.details()}"  # type: ignore[attr-defined]
    assert error.details(), "every error carries a message"  # type: ignore[attr-defined]


def call_and_check(cluster: Cluster, call) -> None:  # type: ignore[no-untyped-def]
    """Runs one call; if it is refused, nothing anywhere may have changed."""
    cluster.wait_converged(30)
    before = state(cluster)
    try:
        call()
    except grpc.RpcError as error:
        assert_clear(error)
        assert state(cluster) == before, "a refused request changed a book"


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(market=TEXT, size=INT64, price=INT64, side=ENUM, order_type=ENUM, client_order_id=TEXT, node=st.integers(0, 2))
def test_create_order_fuzz(fuzz_cluster: Cluster, channels: list[grpc.Channel], market: str, size: int, price: int,
                           side: int, order_type: int, client_order_id: str, node: int) -> None:
    stub = exchange_pb2_grpc.ExchangeNodeStub(channels[node])
    request = pb.CreateOrderRequest(market=market, size=size, limit_price=price, side=side, order_type=order_type,
                                    client_order_id=client_order_id)
    call_and_check(fuzz_cluster, lambda: stub.CreateOrder(request, timeout=15))


@FUZZ
@given(market=TEXT, order_id=INT64, size=INT64, price=INT64, depth=INT32, from_seq=INT64, node=st.integers(0, 2))
def test_other_client_rpcs_fuzz(fuzz_cluster: Cluster, channels: list[grpc.Channel], market: str, order_id: int,
                                size: int, price: int, depth: int, from_seq: int, node: int) -> None:
    stub = exchange_pb2_grpc.ExchangeNodeStub(channels[node])
    calls = [
        lambda: stub.CancelOrder(pb.CancelOrderRequest(market=market, order_id=order_id), timeout=15),
        lambda: stub.AmendOrder(pb.AmendOrderRequest(market=market, order_id=order_id, size=size,
                                                     limit_price=price), timeout=15),
        lambda: stub.GetOrderBook(pb.GetOrderBookRequest(market=market, depth=depth), timeout=15),
        lambda: stub.GetOrder(pb.GetOrderRequest(market=market, order_id=order_id), timeout=15),
        lambda: read_stream(stub.StreamEvents(pb.StreamEventsRequest(market=market, from_seq=from_seq), timeout=0.3)),
    ]
    for call in calls:
        call_and_check(fuzz_cluster, call)


def read_stream(stream: grpc.Future) -> None:
    """Reads a stream until its deadline: a valid request is a live stream that simply waits for events."""
    try:
        for _ in stream:  # type: ignore[attr-defined]
            pass
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
            raise


@FUZZ
@given(method=st.sampled_from(METHODS), body=st.binary(max_size=2_000), node=st.integers(0, 2))
def test_raw_random_bytes_as_request_body(fuzz_cluster: Cluster, channels: list[grpc.Channel], method: str,
                                          body: bytes, node: int) -> None:
    call = channels[node].unary_unary(f"/exchange.v1.ExchangeNode/{method}")
    call_and_check(fuzz_cluster, lambda: call(body, timeout=15))


def test_oversized_request_is_refused_and_the_node_keeps_serving(fuzz_cluster: Cluster,
                                                                 channels: list[grpc.Channel]) -> None:
    call = channels[0].unary_unary("/exchange.v1.ExchangeNode/CreateOrder")
    with pytest.raises(grpc.RpcError) as refused:
        call(b"\x00" * (2 * 1024 * 1024), timeout=15)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert fuzz_cluster.status(0).state == "SERVING"
