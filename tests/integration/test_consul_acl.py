"""Consul as the cluster's root of trust, against a real Consul with ACLs (default deny, a token per role, the
harness's devtools/consul_acl.py): who may write what, the issue's takeover of an account through Consul KV,
a stranger's lock session, and a process whose token is removed (it fails loudly, never open)."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from functools import partial

import grpc
import pytest

from devtools.local_cluster import Cluster, serving, wait_until
from discovery import AccessDenied, Put
from discovery.consul import ConsulRegistry
from exchange.accounts import ACCOUNTS_PREFIX, Account, encode, key_hash, new_api_key
from exchange.cluster_config import MARKETS_KEY
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc

pytestmark = pytest.mark.integration

CALL = 15.0


def consul(cluster: Cluster, method: str, path: str, token: str | None = None, body: object = None) -> int:
    """The HTTP status Consul answers `method path` with, as the holder of `token` (None: anonymous)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(f"http://{cluster.consul_address}{path}", data=data, method=method)
    if token:
        request.add_header("X-Consul-Token", token)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def register(name: str) -> dict[str, object]:
    return {"Name": name, "ID": f"intruder-{name}", "Address": "127.0.0.1", "Port": 1}


def stub(cluster: Cluster, node: int, account: str | None) -> exchange_pb2_grpc.ExchangeNodeStub:
    return exchange_pb2_grpc.ExchangeNodeStub(cluster.channel(cluster.node_address(node), account))


def code_of(call: Callable[[], object]) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return None


def test_anonymous_may_find_the_nodes_and_nothing_else(module_cluster: Cluster) -> None:
    c = module_cluster
    assert consul(c, "GET", "/v1/health/service/peer-server?passing=true") == 200  # how clients find the nodes
    assert consul(c, "PUT", f"/v1/kv/{ACCOUNTS_PREFIX}alice", body=b'{"active": true, "keys": []}') == 403
    assert consul(c, "GET", f"/v1/kv/{ACCOUNTS_PREFIX}alice") == 403
    assert consul(c, "DELETE", f"/v1/kv/{MARKETS_KEY}") == 403
    assert consul(c, "PUT", "/v1/kv/exchange/sequencer/leader", body=b"{}") == 403
    for service in ("peer-server", "sequencer"):
        assert consul(c, "PUT", "/v1/agent/service/register", body=register(service)) == 403
    assert consul(c, "PUT", "/v1/session/create", body={"Name": "stranger"}) == 403  # no lock without a session
    assert consul(c, "PUT", f"/v1/kv/exchange/sequencer/leader?acquire={uuid.uuid4()}", body=b"{}") == 403
    assert consul(c, "PUT", "/v1/acl/bootstrap") == 403  # bootstrapped: nobody takes the management token
    # the harness's own tokens work: what a role may do it can do
    assert consul(c, "GET", f"/v1/kv/{ACCOUNTS_PREFIX}alice", c.consul_token("node")) == 200
    stats = urllib.request.Request(f"http://{c.consul_address}/v1/agent/self",
                                   headers={"X-Consul-Token": c.consul_token("management")})
    with urllib.request.urlopen(stats, timeout=10) as response:
        assert json.loads(response.read())["Stats"]["serf_lan"]["encrypted"] == "true", "gossip is encrypted"


def test_each_role_writes_only_what_it_must(module_cluster: Cluster) -> None:
    c = module_cluster
    node, sequencer, accounts, observer = (c.consul_token(role) for role in ("node", "sequencer", "accounts",
                                                                             "observer"))
    forged = b'{"active": true, "keys": []}'
    refused = [
        (node, "PUT", f"/v1/kv/{ACCOUNTS_PREFIX}mallory", forged),
        (node, "PUT", "/v1/kv/exchange/sequencer/leader", b"{}"),
        (node, "PUT", "/v1/kv/exchange/log/heads/BTC-USD", b"{}"),
        (node, "PUT", f"/v1/kv/{MARKETS_KEY}", b"{}"),
        (node, "PUT", "/v1/agent/service/register", register("sequencer")),
        (node, "PUT", "/v1/session/create", {"Name": "node"}),
        (sequencer, "PUT", f"/v1/kv/{ACCOUNTS_PREFIX}mallory", forged),
        (sequencer, "GET", f"/v1/kv/{ACCOUNTS_PREFIX}alice", None),
        (sequencer, "PUT", "/v1/agent/service/register", register("peer-server")),
        (accounts, "PUT", f"/v1/kv/{MARKETS_KEY}", b"{}"),
        (accounts, "PUT", "/v1/kv/exchange/sequencer/leader", b"{}"),
        (accounts, "PUT", "/v1/agent/service/register", register("peer-server")),
        (accounts, "PUT", "/v1/session/create", {"Name": "accounts"}),
        (observer, "GET", f"/v1/kv/{ACCOUNTS_PREFIX}alice", None),
        (observer, "PUT", "/v1/agent/service/register", register("peer-server")),
    ]
    for token, method, path, body in refused:
        role = next(role for role in ("node", "sequencer", "accounts", "observer") if c.consul_token(role) == token)
        assert consul(c, method, path, token, body) == 403, f"{role} may {method} {path}"
    with pytest.raises(AccessDenied, match="ACLs refused"):  # a transaction is refused as such, not a conflict
        c.kv("node").transact([Put(ACCOUNTS_PREFIX + "mallory", forged)])
    assert consul(c, "GET", f"/v1/kv/{MARKETS_KEY}", sequencer) == 200
    assert consul(c, "GET", f"/v1/kv/{ACCOUNTS_PREFIX}alice", accounts) == 200


def test_a_forged_account_record_is_ignored_and_alice_keeps_trading(module_cluster: Cluster) -> None:
    """The issue's takeover: a record of alice with a key of the intruder's, written by whoever may write Consul KV
    (the accounts role's token, or even the management token) but without the cluster secret."""
    c = module_cluster
    intruder = new_api_key()
    original = c.kv().get(ACCOUNTS_PREFIX + "alice")
    assert original is not None
    plain = json.dumps({"active": True, "keys": [hashlib.sha256(intruder.encode()).hexdigest()]}).encode()
    guessed = encode(b"not the cluster secret", Account("alice", True, (key_hash(intruder),), version=99))
    try:
        for role, record in (("accounts", plain), ("management", guessed)):
            before = [c.status(node).counters["registry_records_refused"] for node in range(3)]
            c.kv(role).put(ACCOUNTS_PREFIX + "alice", record)

            def refused_everywhere(before: list[int] = before) -> bool:
                return all(c.status(node).counters["registry_records_refused"] > before[node] for node in range(3))

            wait_until(refused_everywhere, 15, "every node to refuse the forged record")
            for node in range(3):
                intruder_call = grpc.StatusCode.UNAUTHENTICATED
                assert code_of(partial(
                    stub(c, node, None).CreateOrder, pb.CreateOrderRequest(size=-1, limit_price=777),
                    metadata=(("authorization", f"Bearer {intruder}"),), timeout=CALL)) == intruder_call
                stub(c, node, "alice").ListOrders(pb.ListOrdersRequest(), timeout=CALL)
                assert c.status(node).accounts.fresh
            placed = stub(c, 0, "alice").CreateOrder(pb.CreateOrderRequest(size=1, limit_price=5), timeout=CALL)
            assert placed.order_id > 0
    finally:
        c.kv().put(ACCOUNTS_PREFIX + "alice", original)


def test_a_node_whose_token_is_removed_fails_loudly_and_never_open(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(nodes=1)
    c.start()
    c.consul_security.revoke(c.consul_address, "node")
    c.add_account("erin")  # a change wakes the node's blocking read: its next read is refused
    wait_until(lambda: not c.status(0).accounts.fresh, 45, "the node to say its registry is not fresh")
    log = c.nodes[0].read_log()
    assert "ACLs refused" in log, "the node says that Consul's ACLs refused its token"
    stub(c, 0, "alice").ListOrders(pb.ListOrdersRequest(), timeout=CALL)  # the last good registry still holds
    status = c.status(0)
    assert status.accounts.loaded and status.accounts.active_accounts > 0, "not emptied by a refusal"

    # a node started with a token Consul does not know does not serve, and says why
    c.nodes[0].stop()
    process = c.make_node(0)
    process.env["CONSUL_HTTP_TOKEN"] = str(uuid.uuid4())
    c.nodes[0] = process
    process.start()
    wait_until(lambda: "ACLs refused" in process.read_log(), 30, "the node to report the refused token")
    assert not serving(c.node_address(0), c.client_tls)


def test_a_registration_the_acls_refuse_is_kept_and_made_once_the_token_works(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A Consul agent can refuse a valid token for a while after a Consul server restarted ("ACL not found",
    cached for its token TTL): a process registering then must not exit (a restarted HA replica did, chaos seed
    3712), and a token an operator fixes takes effect without a restart."""
    c = make_cluster(nodes=1)
    c.start()
    c.consul_security.revoke(c.consul_address, "node")
    host, port = c.consul_address.rsplit(":", 1)
    management = c.consul_token("management")
    with ConsulRegistry(host, int(port), token=c.consul_token("node"), keeper_interval=0.2) as registry:
        registry.register("peer-server", "late-node", "127.0.0.1", 1)  # refused: kept, not raised

        def registered() -> bool:
            request = urllib.request.Request(f"http://{c.consul_address}/v1/agent/services",
                                             headers={"X-Consul-Token": management})
            with urllib.request.urlopen(request, timeout=10) as response:
                return "late-node" in json.loads(response.read())

        assert not registered()
        c.restore_accounts()  # writes the ACLs back: the node role's token exists again
        wait_until(registered, 30, "the kept registration to be made once the token works")


def test_a_node_restarted_after_the_dev_agent_lost_everything_serves_again(
    make_cluster: Callable[..., Cluster],
) -> None:
    """The dev agent keeps nothing across a restart; the harness writes back the ACLs, the markets and the registry
    (what a real Consul keeps), so a node restarted afterwards, whose role may only read the markets, serves."""
    c = make_cluster(nodes=1)
    c.start()
    c.consul.stop()
    c.consul.start()
    c.restore_accounts()
    c.nodes[0].stop()
    c.start_node(0, timeout=30)
    stub(c, 0, "alice").ListOrders(pb.ListOrdersRequest(), timeout=CALL)
