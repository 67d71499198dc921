"""Bad input fuzzed at every client RPC of a real cluster: every refusal is a clear status (never UNKNOWN
or INTERNAL) and changes no book anywhere; every answer makes sense (it agrees with a replay of the
Sequencer's log, and a read changes nothing); no process dies."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devtools.local_cluster import Cluster
from devtools.verify import Replay, replay_cluster
from exchange import engine as eng
from exchange.cluster_common import parse_markets, peer_token, token_metadata
from exchange.commands import command_error
from exchange.node import order_messages
from exchange.shared.wire import TOKEN_HEADER
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc, sequencer_pb2, sequencer_pb2_grpc, types_pb2

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
# method -> (request, response) message types
METHODS: dict[str, tuple[type[Message], type[Message]]] = {
    "CreateOrder": (pb.CreateOrderRequest, pb.CreateOrderResponse),
    "CancelOrder": (pb.CancelOrderRequest, pb.CancelOrderResponse),
    "AmendOrder": (pb.AmendOrderRequest, pb.AmendOrderResponse),
    "GetOrderBook": (pb.GetOrderBookRequest, pb.GetOrderBookResponse),
    "GetOrder": (pb.GetOrderRequest, pb.Order),
    "GetStatus": (pb.GetStatusRequest, pb.GetStatusResponse),
    "BroadcastOrder": (pb.BroadcastOrderRequest, pb.BroadcastOrderResponse),
}


CLUSTER_MARKETS = "BTC-USD,ETH-USD:tick_size=5:lot_size=2"


@pytest.fixture(scope="module")
def fuzz_cluster(module_cluster: Cluster) -> Cluster:
    return module_cluster


@pytest.fixture(scope="module")
def channels(fuzz_cluster: Cluster) -> Iterator[list[grpc.Channel]]:
    opened = [fuzz_cluster.channel(address) for address in fuzz_cluster.node_addresses]
    yield opened
    for channel in opened:
        channel.close()


def state(cluster: Cluster) -> list[tuple[str, int, int]]:
    return [(m.market, m.applied_seq, m.checksum) for i in range(3) for m in cluster.status(i).markets]


def assert_clear(error: grpc.RpcError) -> None:
    code = error.code()
    assert code in CLEAR, f"unclear status {code}: {error.details()}"
    assert error.details(), "every error carries a message"


@dataclass
class Answer:
    """A call that succeeded: what was asked, what came back, and the cluster's state before the call."""

    cluster: Cluster
    node: int
    request: Message
    response: object
    before: list[tuple[str, int, int]]
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def market(self) -> str:
        """The market the request named (empty: the default one)."""
        request = self.request
        assert isinstance(request, MARKET_REQUESTS), f"a {type(request).__name__} names no market"
        return request.market or parse_markets(self.cluster.markets)[0].symbol

    def replay(self) -> Replay:
        return replay_cluster(self.cluster)

    def unchanged(self) -> None:
        assert state(self.cluster) == self.before, "a read (or a refused broadcast) changed a book"


# the requests that name a market
MARKET_REQUESTS = (pb.CreateOrderRequest, pb.CancelOrderRequest, pb.AmendOrderRequest, pb.GetOrderBookRequest,
                   pb.GetOrderRequest, pb.StreamEventsRequest)
Request = TypeVar("Request", bound=Message)
Response = TypeVar("Response")


def parts(answer: Answer, request_type: type[Request], response_type: type[Response]) -> tuple[Request, Response]:
    """The answer's request and response as the method's own types (the call decodes the method's response)."""
    assert isinstance(answer.request, request_type) and isinstance(answer.response, response_type)
    return answer.request, answer.response


def call_and_check(cluster: Cluster, node: int, method: str, request: Message | None, call: Callable[[], object],
                   metadata: tuple[tuple[str, str], ...] = ()) -> object:
    """Runs one call: a refusal must be clear and change nothing anywhere; an answer must make sense.
    Returns the answer (None if the call was refused)."""
    cluster.wait_converged(30)
    before = state(cluster)
    try:
        response = call()
    except grpc.RpcError as error:
        assert_clear(error)
        assert state(cluster) == before, "a refused request changed a book"
        return None
    assert request is not None, f"{method} answered a request body that is not a valid message"
    CHECKS[method](Answer(cluster, node, request, response, before, metadata))
    return response


def check_create_order(answer: Answer) -> None:
    request, response = parts(answer, pb.CreateOrderRequest, pb.CreateOrderResponse)
    assert response.market == answer.market and response.client_order_id == request.client_order_id
    assert response.order_id == response.seq > 0
    assert response == answer.replay().expected_answer(response), "the answer differs from the log's replay"


def logged(answer: Answer, request: pb.CancelOrderRequest | pb.AmendOrderRequest,
           response: pb.CancelOrderResponse | pb.AmendOrderResponse, replay: Replay, kind: str) -> list[eng.Event]:
    """The events of the command the answer names, which must be a `kind` of the requested order."""
    assert response.market == answer.market and response.order_id == request.order_id
    command = replay.commands[answer.market].get(response.seq)
    assert command is not None and command.WhichOneof("kind") == kind, f"no {kind} at seq {response.seq}"
    assert getattr(command, kind).order_id == response.order_id
    return replay.events[answer.market][response.seq]


def check_cancel_order(answer: Answer) -> None:
    request, response = parts(answer, pb.CancelOrderRequest, pb.CancelOrderResponse)
    replay = answer.replay()
    events = logged(answer, request, response, replay, "cancel_order")
    assert response.cancelled_size == sum(e.size for e in events if isinstance(e, eng.OrderCancelled))
    assert replay.engine.order(answer.market, response.order_id) is None


def check_amend_order(answer: Answer) -> None:
    request, response = parts(answer, pb.AmendOrderRequest, pb.AmendOrderResponse)
    replay = answer.replay()
    events = logged(answer, request, response, replay, "amend_order")
    assert list(response.trades) == [order_messages.trade(e) for e in events if isinstance(e, eng.OrderFilled)]
    view = replay.engine.order(answer.market, response.order_id)
    resting = None if view is None else (view.price, view.remaining)
    assert resting == ((response.price, response.remaining_size) if response.remaining_size else None)


def check_get_order_book(answer: Answer) -> None:
    request, book = parts(answer, pb.GetOrderBookRequest, pb.GetOrderBookResponse)
    depth = request.depth or order_messages.DEFAULT_DEPTH
    assert book.market == answer.market and 0 <= book.seq <= book.known_seq
    bids, asks = [level.price for level in book.bids], [level.price for level in book.asks]
    assert bids == sorted(set(bids), reverse=True) and asks == sorted(set(asks)), "levels out of order"
    assert not (bids and asks) or bids[0] < asks[0], "a crossed book"
    assert len(bids) <= depth and len(asks) <= depth
    assert all(level.size > 0 and level.order_count > 0 for level in [*book.bids, *book.asks])
    status = {m.market: m for m in answer.cluster.status(answer.node).markets}[book.market]
    assert (status.applied_seq, status.checksum) == (book.seq, book.checksum), "GetStatus disagrees"
    replay = answer.replay()
    assert (replay.engine.last_seq(book.market), replay.engine.checksum(book.market)) == (book.seq, book.checksum)
    replayed = replay.engine.depth(book.market, depth)
    assert (list(book.bids), list(book.asks)) == tuple(order_messages.book_levels(side) for side in replayed)
    answer.unchanged()


def check_get_order(answer: Answer) -> None:
    request, order = parts(answer, pb.GetOrderRequest, pb.Order)
    replay = answer.replay()
    assert order.market == answer.market and order.order_id == request.order_id
    command = replay.commands[order.market].get(order.order_id)  # an order's id is its sequence number
    assert command is not None and command.WhichOneof("kind") == "new_order", "no such order in the log"
    assert order.client_order_id == command.client_order_id
    view = replay.engine.order(order.market, order.order_id)
    if view is None:
        assert order.status in (pb.FILLED, pb.CANCELLED, pb.REJECTED) and order.remaining_size == 0
    else:
        assert order.status == pb.RESTING
        assert (order.price, order.size, order.filled_size, order.remaining_size) == (
            view.price, view.size, view.filled, view.remaining)
    assert 0 <= order.filled_size <= order.size
    answer.unchanged()


def check_get_status(answer: Answer) -> None:
    _, status = parts(answer, pb.GetStatusRequest, pb.GetStatusResponse)
    replay = answer.replay()
    assert status.state == "SERVING"
    assert [m.market for m in status.markets] == [m.symbol for m in parse_markets(answer.cluster.markets)]
    for market in status.markets:
        assert (market.applied_seq, market.checksum) == (replay.engine.last_seq(market.market),
                                                          replay.engine.checksum(market.market))
    answer.unchanged()


def check_broadcast_order(answer: Answer) -> None:
    assert answer.metadata, "BroadcastOrder answered a caller without the cluster token"
    _, response = parts(answer, pb.BroadcastOrderRequest, pb.BroadcastOrderResponse)
    assert response.accepted == 0, "random bytes cannot carry an entry the Sequencer signed"
    answer.unchanged()


def check_stream_events(answer: Answer) -> None:
    request, events = parts(answer, pb.StreamEventsRequest, list)
    seqs = [event.seq for event in events]
    assert all(event.market == answer.market for event in events)
    assert seqs == sorted(seqs) and all(request.from_seq <= seq for seq in seqs)
    assert all(seq <= answer.replay().engine.last_seq(answer.market) for seq in seqs)
    answer.unchanged()


CHECKS: dict[str, Callable[[Answer], None]] = {
    "CreateOrder": check_create_order, "CancelOrder": check_cancel_order, "AmendOrder": check_amend_order,
    "GetOrderBook": check_get_order_book, "GetOrder": check_get_order, "GetStatus": check_get_status,
    "BroadcastOrder": check_broadcast_order, "StreamEvents": check_stream_events,
}


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def fields(draw: st.DrawFn, names: tuple[str, ...]) -> dict[str, Any]:
    """The request fields `names`, all wild (any value of their type) or all plausible (near-valid values, so
    that many calls succeed and their answers get checked: an order id of one that may exist, and so on)."""
    source = PLAUSIBLE if draw(st.booleans()) else WILD
    return {name: draw(source[name]) for name in names}


WILD = {"market": TEXT, "size": INT64, "price": INT64, "side": ENUM, "order_type": ENUM, "client_order_id": TEXT,
        "order_id": INT64, "depth": INT32, "from_seq": INT64}
PLAUSIBLE = {"market": st.sampled_from(["", "BTC-USD", "ETH-USD"]), "size": st.integers(-20, 20),
             "price": st.integers(86, 110).map(lambda p: 0 if p < 90 else p), "side": st.integers(0, 2),
             "order_type": st.integers(0, 5), "client_order_id": st.sampled_from(["", "fuzz-1", "fuzz-2"]),
             "order_id": st.integers(1, 40), "depth": st.integers(-1, 1001), "from_seq": st.integers(-1, 40)}


def order(market: str, size: int, price: int, side: int = 0, order_type: int = 0, coid: str = "") -> dict:
    return {"market": market, "size": size, "price": price, "side": side, "order_type": order_type,
            "client_order_id": coid}


@FUZZ
@given(f=fields(("market", "size", "price", "side", "order_type", "client_order_id")), node=st.integers(0, 2))
# Calls that certainly succeed, so every answer check runs: a resting buy, a sell that trades with it, a
# post-only order on the other market, and a retry answered as a duplicate.
@example(f=order("", 5, 100, coid="example-1"), node=0)
@example(f=order("BTC-USD", -3, 99, order_type=1), node=1)
@example(f=order("ETH-USD", 4, 100, side=1, order_type=5), node=2)
@example(f=order("", 5, 100, coid="example-1"), node=2)
def test_create_order_fuzz(fuzz_cluster: Cluster, channels: list[grpc.Channel], f: dict, node: int) -> None:
    stub = exchange_pb2_grpc.ExchangeNodeStub(channels[node])
    request = pb.CreateOrderRequest(market=f["market"], size=f["size"], limit_price=f["price"], side=f["side"],
                                    order_type=f["order_type"], client_order_id=f["client_order_id"])
    call_and_check(fuzz_cluster, node, "CreateOrder", request, lambda: stub.CreateOrder(request, timeout=15))


@FUZZ
@given(f=fields(("market", "order_id", "size", "price", "depth", "from_seq")), node=st.integers(0, 2))
def test_other_client_rpcs_fuzz(fuzz_cluster: Cluster, channels: list[grpc.Channel], f: dict, node: int) -> None:
    stub = exchange_pb2_grpc.ExchangeNodeStub(channels[node])
    market, order_id = f["market"], f["order_id"]
    requests = {
        "GetOrder": pb.GetOrderRequest(market=market, order_id=order_id),
        "AmendOrder": pb.AmendOrderRequest(market=market, order_id=order_id, size=f["size"], limit_price=f["price"]),
        "GetOrderBook": pb.GetOrderBookRequest(market=market, depth=f["depth"]),
        "CancelOrder": pb.CancelOrderRequest(market=market, order_id=order_id),
    }
    for method, request in requests.items():
        call_and_check(fuzz_cluster, node, method, request,
                       partial(getattr(stub, method), request, timeout=15))
    events = pb.StreamEventsRequest(market=market, from_seq=f["from_seq"])
    call_and_check(fuzz_cluster, node, "StreamEvents", events,
                   lambda: read_stream(stub.StreamEvents(events, timeout=0.3)))


def read_stream(stream: grpc.Future) -> list[pb.MarketEvent]:
    """Reads a stream until its deadline: a valid request is a live stream that simply waits for events."""
    events = []
    try:
        for event in stream:
            events.append(event)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    return events


def call_raw(cluster: Cluster, channel: grpc.Channel, node: int, method: str, body: bytes,
             metadata: tuple[tuple[str, str], ...] = ()) -> None:
    """Sends `body` as the request of `method` and checks the outcome like any other call."""
    request_type, response_type = METHODS[method]
    call = channel.unary_unary(f"/exchange.v1.ExchangeNode/{method}", response_deserializer=response_type.FromString)
    try:
        request: Message | None = request_type.FromString(body)
    except DecodeError:
        request = None  # then the node must refuse it
    call_and_check(cluster, node, method, request, lambda: call(body, metadata=metadata, timeout=15), metadata)


@FUZZ
@given(method=st.sampled_from(sorted(METHODS)), body=st.binary(max_size=2_000), node=st.integers(0, 2))
def test_raw_random_bytes_as_request_body(fuzz_cluster: Cluster, channels: list[grpc.Channel], method: str,
                                          body: bytes, node: int) -> None:
    """Without the cluster token: BroadcastOrder is refused whatever the bytes (check_broadcast_order)."""
    call_raw(fuzz_cluster, channels[node], node, method, body)


@FUZZ
@given(body=st.binary(max_size=2_000), node=st.integers(0, 2))
def test_raw_random_bytes_as_a_broadcast_with_the_cluster_token(fuzz_cluster: Cluster, channels: list[grpc.Channel],
                                                                body: bytes, node: int) -> None:
    """With the token, the bytes get past the peer check to the decoder and the entries' validation."""
    token = ((TOKEN_HEADER, peer_token(fuzz_cluster.secret.encode())),)
    call_raw(fuzz_cluster, channels[node], node, "BroadcastOrder", body, token)


def test_every_check_of_an_answer_runs_on_calls_that_succeed(fuzz_cluster: Cluster,
                                                             channels: list[grpc.Channel]) -> None:
    """The fuzzing above rarely gets a cancel or an amend through: here every RPC answers, on one order."""
    stub = exchange_pb2_grpc.ExchangeNodeStub(channels[1])

    def answered(method: str, request: Message) -> Any:
        call = (lambda: read_stream(stub.StreamEvents(request, timeout=0.3))) if method == "StreamEvents" else (
            lambda: getattr(stub, method)(request, timeout=15))
        response = call_and_check(fuzz_cluster, 1, method, request, call)
        assert response is not None, f"{method} {request} was refused"
        return response

    book = answered("GetOrderBook", pb.GetOrderBookRequest(market="BTC-USD", depth=1))
    price = book.bids[0].price + 1 if book.bids else 150  # a sell above every bid rests
    placed = answered("CreateOrder", pb.CreateOrderRequest(market="BTC-USD", side=types_pb2.SELL, size=6,
                                                           limit_price=price, order_type=types_pb2.POST_ONLY))
    assert placed.status == pb.RESTING
    answered("GetOrder", pb.GetOrderRequest(market="BTC-USD", order_id=placed.order_id))
    amended = answered("AmendOrder", pb.AmendOrderRequest(market="BTC-USD", order_id=placed.order_id, size=4))
    assert amended.remaining_size == 4
    answered("GetOrderBook", pb.GetOrderBookRequest(market="BTC-USD", depth=1000))
    assert answered("StreamEvents", pb.StreamEventsRequest(market="BTC-USD", from_seq=placed.seq))
    cancelled = answered("CancelOrder", pb.CancelOrderRequest(market="BTC-USD", order_id=placed.order_id))
    assert cancelled.cancelled_size == 4
    assert answered("GetOrder", pb.GetOrderRequest(market="BTC-USD", order_id=placed.order_id)).status == pb.CANCELLED
    answered("GetStatus", pb.GetStatusRequest())


def test_oversized_request_is_refused_and_the_node_keeps_serving(fuzz_cluster: Cluster,
                                                                 channels: list[grpc.Channel]) -> None:
    call = channels[0].unary_unary("/exchange.v1.ExchangeNode/CreateOrder")
    with pytest.raises(grpc.RpcError) as refused:
        call(b"\x00" * (2 * 1024 * 1024), timeout=15)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert fuzz_cluster.status(0).state == "SERVING"


# -- the Sequencer: the log's RPCs are the cluster's own, and only well-formed commands enter the log ---------

@st.composite
def sequence_requests(draw: st.DrawFn) -> sequencer_pb2.SequenceRequest:
    """A SequenceRequest of wild or plausible commands, for a wild or a real market."""
    market = draw(st.one_of(st.sampled_from(["BTC-USD", "ETH-USD"]), TEXT))
    commands = []
    for _ in range(draw(st.integers(0, 4))):
        f = draw(fields(("size", "price", "side", "order_type", "client_order_id", "order_id")))
        kind = draw(st.sampled_from(["new_order", "cancel_order", "amend_order", None]))
        command = types_pb2.Command(market=draw(st.one_of(st.just(market), TEXT)), origin_node="fuzz",
                                    origin_ref=draw(st.integers(0, 2**64 - 1)), client_order_id=f["client_order_id"])
        if kind == "new_order":
            command.new_order.CopyFrom(types_pb2.NewOrderCommand(
                side=f["side"], order_type=f["order_type"], size=f["size"], price=f["price"]))
        elif kind == "cancel_order":
            command.cancel_order.order_id = f["order_id"]
        elif kind == "amend_order":
            command.amend_order.CopyFrom(types_pb2.AmendOrderCommand(
                order_id=f["order_id"], new_size=f["size"], new_price=f["price"]))
        commands.append(command)
    return sequencer_pb2.SequenceRequest(market=market, applied_seq=draw(INT64), node_id="fuzz", commands=commands)


def log_positions(cluster: Cluster) -> dict[str, int]:
    with cluster.channel(cluster.sequencer_address) as channel:
        stub = sequencer_pb2_grpc.SequencerStub(channel)
        return {m.symbol: stub.GetSequence(sequencer_pb2.GetSequenceRequest(market=m.symbol), timeout=10).current_seq
                for m in parse_markets(cluster.markets)}


@FUZZ
@given(request=sequence_requests(), with_token=st.booleans())
def test_sequence_fuzz_only_well_formed_commands_with_the_token_enter_the_log(
    fuzz_cluster: Cluster, request: sequencer_pb2.SequenceRequest, with_token: bool
) -> None:
    before = log_positions(fuzz_cluster)
    metadata = token_metadata(fuzz_cluster.secret.encode()) if with_token else ()
    with fuzz_cluster.channel(fuzz_cluster.sequencer_address) as channel:
        try:
            response = sequencer_pb2_grpc.SequencerStub(channel).Sequence(request, metadata=metadata, timeout=15)
        except grpc.RpcError as error:
            assert_clear(error)
            if not with_token:
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert log_positions(fuzz_cluster) == before, "a refused request changed the log"
            return
    assert with_token, "the Sequencer answered a caller without the cluster token"
    configs = {m.symbol: m for m in parse_markets(fuzz_cluster.markets)}
    for assignment in response.assignments:
        command = types_pb2.Command.FromString(assignment.entry.command)
        assert command_error(command, configs[request.market]) is None, f"a malformed command was numbered: {command}"


@FUZZ
@given(method=st.sampled_from(["Sequence", "ReadLog", "GetSequence"]), body=st.binary(max_size=2_000),
       with_token=st.booleans())
def test_raw_random_bytes_at_the_sequencer(fuzz_cluster: Cluster, method: str, body: bytes, with_token: bool) -> None:
    before = log_positions(fuzz_cluster)
    metadata = token_metadata(fuzz_cluster.secret.encode()) if with_token else ()
    with fuzz_cluster.channel(fuzz_cluster.sequencer_address) as channel:
        kind = channel.unary_stream if method == "ReadLog" else channel.unary_unary
        call = kind(f"/exchange.v1.Sequencer/{method}")
        try:
            answer = call(body, metadata=metadata, timeout=15)
            if method == "ReadLog":
                list(answer)
        except grpc.RpcError as error:
            assert_clear(error)
            if not with_token and method != "GetSequence":
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        else:
            assert with_token or method == "GetSequence", f"{method} answered a caller without the cluster token"
    if not with_token:
        assert log_positions(fuzz_cluster) == before
    assert all(process.running for process in fuzz_cluster.processes())
