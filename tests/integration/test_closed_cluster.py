"""The cluster is closed to outsiders: regressions for what a new user could do with grpcurl and no credentials
(issue "Close the cluster", findings 1 to 4), each answered now with the status the contract names."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devtools.local_cluster import Cluster
from devtools.ports import free_port
from exchange.cluster_common import peer_token
from exchange.shared.wire import TOKEN_HEADER
from tests.integration.test_grpcurl import GRPCURL

pytestmark = pytest.mark.integration

SEQUENCER = "exchange.v1.Sequencer"


@pytest.fixture(scope="module")
def closed(module_cluster: Cluster) -> Cluster:
    assert GRPCURL is not None
    return module_cluster


def grpcurl(address: str, method: str, data: dict | None = None, token: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    command = [str(GRPCURL), "-plaintext", "-max-time", "20"]
    if token is not None:
        command += ["-H", f"{TOKEN_HEADER}: {token}"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    return subprocess.run([*command, address, method], capture_output=True, text=True, timeout=30)


def position(cluster: Cluster, market: str = "BTC-USD") -> int:
    answer = grpcurl(cluster.sequencer_address, f"{SEQUENCER}/GetSequence", {"market": market})
    assert answer.returncode == 0, f"GetSequence is public: {answer.stderr}"
    return int(json.loads(answer.stdout).get("currentSeq", 0))


def order(market: str = "BTC-USD", size: int = 6, price: int = 100) -> dict:
    return {"market": market, "new_order": {"side": "BUY", "order_type": "LIMIT", "size": size, "price": price}}


def sequence(market: str, applied: int, *commands: dict) -> dict:
    return {"market": market, "applied_seq": applied, "node_id": "x", "commands": list(commands)}


def test_finding_1_nobody_without_the_token_writes_the_log_and_bad_commands_never_enter_it(closed: Cluster) -> None:
    before = position(closed)
    anonymous = grpcurl(closed.sequencer_address, f"{SEQUENCER}/Sequence", sequence("BTC-USD", before, order()))
    assert anonymous.returncode != 0 and "PermissionDenied" in anonymous.stderr, anonymous.stderr
    assert "x-cluster-token" in anonymous.stderr
    wrong = grpcurl(closed.sequencer_address, f"{SEQUENCER}/Sequence", sequence("BTC-USD", before, order()),
                    token=peer_token(b"a guess"))
    assert "PermissionDenied" in wrong.stderr
    token = peer_token(closed.secret.encode())
    bad = grpcurl(closed.sequencer_address, f"{SEQUENCER}/Sequence",
                  sequence("BTC-USD", before, order(size=-(2**63), price=-5)), token=token)
    assert "InvalidArgument" in bad.stderr and "SIZE_OUT_OF_BOUNDS" in bad.stderr, bad.stderr
    assert position(closed) == before, "nothing entered the log"


def test_finding_2_a_market_the_cluster_does_not_trade_is_not_opened(closed: Cluster) -> None:
    token = peer_token(closed.secret.encode())
    evil = grpcurl(closed.sequencer_address, f"{SEQUENCER}/Sequence",
                   sequence("EVIL-12811", 0, order("EVIL-12811")), token=token)
    assert "NotFound" in evil.stderr and "this cluster trades: BTC-USD, ETH-USD" in evil.stderr, evil.stderr
    asked = grpcurl(closed.sequencer_address, f"{SEQUENCER}/GetSequence", {"market": "EVIL-12811"})
    assert "NotFound" in asked.stderr


def test_finding_3_the_log_is_read_only_with_the_token(closed: Cluster) -> None:
    anonymous = grpcurl(closed.sequencer_address, f"{SEQUENCER}/ReadLog", {"market": "BTC-USD", "from_seq": 1})
    assert "PermissionDenied" in anonymous.stderr, anonymous.stderr
    for method in ("GetSnapshot", "BroadcastOrder"):
        refused = grpcurl(closed.node_address(0), f"exchange.v1.ExchangeNode/{method}", {})
        assert "PermissionDenied" in refused.stderr, (method, refused.stderr)


@pytest.mark.parametrize("module", ["sequencer.main", "exchange.node.main"])
def test_finding_4_no_process_listens_beyond_loopback_with_the_development_secret(module: str) -> None:
    started = subprocess.run(
        [sys.executable, "-m", module, "--listen", f"0.0.0.0:{free_port()}", "--consul", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
    )
    assert started.returncode != 0
    assert "development cluster secret" in started.stderr and "EXCHANGE_CLUSTER_SECRET" in started.stderr
