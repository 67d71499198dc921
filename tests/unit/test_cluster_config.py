"""The cluster's markets in the key-value store: defined once, signed with the cluster secret, verified by all."""

from __future__ import annotations

import json

import pytest

from exchange.cluster_common import parse_markets, record_mac, sign_record, verify_record
from exchange.cluster_config import MARKETS_KEY, agree_on_markets, markets_record
from tests.unit.fakes import DictKeyValue

SECRET = b"unit-cluster-secret"
MARKETS = parse_markets("BTC-USD,ETH-USD:tick_size=5")


def test_the_first_process_defines_the_markets_signed_and_the_others_take_them() -> None:
    kv = DictKeyValue()
    assert agree_on_markets(kv, SECRET, MARKETS) == MARKETS
    assert verify_record(SECRET, MARKETS_KEY, kv.values[MARKETS_KEY]) is not None
    assert agree_on_markets(kv, SECRET, None) == MARKETS
    with pytest.raises(SystemExit, match="differs"):
        agree_on_markets(kv, SECRET, parse_markets("BTC-USD"))


@pytest.mark.parametrize("value", [
    b"BTC-USD:tick_size=1",  # unsigned, as before signing
    markets_record(b"another secret", parse_markets("BTC-USD")),
    json.dumps({"markets": "DOGE-USD", "mac": record_mac(SECRET, MARKETS_KEY, {"markets": "BTC-USD"})}).encode(),
    sign_record(SECRET, "exchange/accounts/alice", {"markets": "BTC-USD"}),  # a MAC made for another key
])
def test_markets_that_do_not_verify_with_the_cluster_secret_stop_the_process(value: bytes) -> None:
    kv = DictKeyValue()
    kv.values[MARKETS_KEY] = value
    with pytest.raises(SystemExit, match="do not verify"):
        agree_on_markets(kv, SECRET, None)
