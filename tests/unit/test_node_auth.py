"""API keys against a registry read, and the rate limiter, in-process."""

from __future__ import annotations

import pytest

from exchange.accounts import ACCOUNTS_PREFIX, Account, add_account, encode, key_hash, new_api_key
from exchange.errors import ResourceExhausted, Unauthenticated, Unavailable
from exchange.node.auth import AccountRegistry, RateLimiter
from tests.unit.fakes import DictKeyValue, FakeContext

ALICE, BOB = new_api_key(), new_api_key()
SECRET = b"unit-cluster-secret"


def registry(*accounts: Account) -> AccountRegistry:
    read = AccountRegistry(SECRET)
    read.update({ACCOUNTS_PREFIX + a.name: encode(SECRET, a) for a in accounts})
    return read


def context(value: str | bytes | None) -> FakeContext:
    return FakeContext(() if value is None else (("authorization", value),))


def test_a_valid_key_names_its_account_and_the_registry_keeps_no_key() -> None:
    accounts = registry(Account("alice", True, (key_hash(ALICE),)), Account("bob", True, (key_hash(BOB),)))
    assert accounts.authenticate(context(f"Bearer {ALICE}")).account == "alice"
    assert accounts.authenticate(context(f"bearer   {BOB} ")).account == "bob"
    assert ALICE not in encode(SECRET, Account("alice", True, (key_hash(ALICE),))).decode()
    assert accounts.status() == (True, True, 2, 2)


@pytest.mark.parametrize(("value", "says"), [
    (None, "needs an API key"), ("", "Bearer"), ("Basic abc", "Bearer"), ("Bearer", "Bearer"),
    ("Bearer " + "k" * 10_240, "not an API key"), ("Bearer pxk_\u00e9", "not an API key"),
    (b"Bearer \xff", "as text"), ("Bearer pxk_unknown", "unknown API key"),
])
def test_missing_malformed_and_unknown_keys_are_unauthenticated_with_how_to(value: str | bytes | None,
                                                                            says: str) -> None:
    accounts = registry(Account("alice", True, (key_hash(ALICE),)))
    with pytest.raises(Unauthenticated, match=says) as refused:
        accounts.authenticate(context(value))
    assert "authorization" in str(refused.value) or says in ("unknown API key",)


def test_a_disabled_account_stops_working_and_an_open_stream_notices() -> None:
    accounts = registry(Account("alice", True, (key_hash(ALICE),)))
    caller = accounts.authenticate(context(f"Bearer {ALICE}"))
    accounts.update({ACCOUNTS_PREFIX + "alice": encode(SECRET, Account("alice", False, (key_hash(ALICE),)))})
    with pytest.raises(Unauthenticated, match="'alice' of this API key is disabled"):
        accounts.account_of(caller)
    with pytest.raises(Unauthenticated, match="disabled"):
        accounts.authenticate(context(f"Bearer {ALICE}"))


def test_never_falls_open_before_a_read_nor_when_consul_comes_back_empty() -> None:
    with pytest.raises(Unavailable, match="not read the account registry"):
        AccountRegistry(SECRET).authenticate(context(f"Bearer {ALICE}"))
    accounts = registry(Account("alice", True, (key_hash(ALICE),)))
    accounts.update({})  # a dev agent restarted empty: keys keep working rather than all stop at once
    assert accounts.authenticate(context(f"Bearer {ALICE}")).account == "alice"
    corrupt = AccountRegistry(SECRET)
    corrupt.update({ACCOUNTS_PREFIX + "alice": b"{not json"})
    with pytest.raises(Unauthenticated):
        corrupt.authenticate(context(f"Bearer {ALICE}"))


def test_a_record_without_the_cluster_secret_is_ignored_counted_and_the_last_good_one_kept() -> None:
    from exchange.node.metrics import counters

    accounts = registry(Account("alice", True, (key_hash(ALICE),)), Account("bob", True, (key_hash(BOB),)))
    intruder = new_api_key()
    refused = counters["registry_records_refused"]
    forged = Account("alice", True, (key_hash(intruder),), version=7)
    for value in (encode(b"another secret", forged),  # signed without the cluster's secret
                  encode(SECRET, Account("bob", True, (key_hash(intruder),)))):  # bob's MAC, copied to alice
        accounts.update({ACCOUNTS_PREFIX + "alice": value,
                         ACCOUNTS_PREFIX + "bob": encode(SECRET, Account("bob", True, (key_hash(BOB),)))})
        with pytest.raises(Unauthenticated, match="unknown API key"):
            accounts.authenticate(context(f"Bearer {intruder}"))
        assert accounts.authenticate(context(f"Bearer {ALICE}")).account == "alice"
    assert counters["registry_records_refused"] == refused + 2
    # a replay of an older record of the cluster's own (alice enabled, after she was disabled) is refused too
    accounts.update({ACCOUNTS_PREFIX + "alice": encode(SECRET, Account("alice", False, (key_hash(ALICE),), 1))})
    accounts.update({ACCOUNTS_PREFIX + "alice": encode(SECRET, Account("alice", True, (key_hash(ALICE),), 0))})
    with pytest.raises(Unauthenticated, match="disabled"):
        accounts.authenticate(context(f"Bearer {ALICE}"))
    # a forged record of an account the node never saw is no account at all
    fresh = AccountRegistry(SECRET)
    fresh.update({ACCOUNTS_PREFIX + "mallory": encode(b"guess", Account("mallory", True, (key_hash(intruder),)))})
    with pytest.raises(Unauthenticated, match="unknown API key"):
        fresh.authenticate(context(f"Bearer {intruder}"))


def test_the_rate_limiter_allows_the_burst_then_the_rate_and_says_when_to_retry() -> None:
    now = [100.0]
    limiter = RateLimiter(rate=10, burst=3, clock=lambda: now[0])
    for _ in range(3):
        limiter.take("alice")
    with pytest.raises(ResourceExhausted, match="retry in 100 ms"):
        limiter.take("alice")
    limiter.take("bob")  # every account has its own bucket
    now[0] += 0.1
    limiter.take("alice")
    with pytest.raises(ResourceExhausted):
        limiter.take("alice")
    now[0] += 10
    for _ in range(3):
        limiter.take("alice")  # refilled to the burst, not beyond
    with pytest.raises(ResourceExhausted):
        limiter.take("alice")


def test_a_replayed_older_record_after_a_delete_does_not_bring_a_disabled_account_back() -> None:
    """Whoever writes Consul without the secret deletes bob's record, then puts back an older one the cluster
    wrote (security review, 2026-12-02): the node keeps the versions it has taken."""
    alice, bob = new_api_key(), new_api_key()
    registry = AccountRegistry(SECRET)
    alice_record = encode(SECRET, Account("alice", True, (key_hash(alice),)))
    bob_v0 = encode(SECRET, Account("bob", True, (key_hash(bob),), 0))
    bob_v1 = encode(SECRET, Account("bob", False, (key_hash(bob),), 1))  # bob disabled (a leaked key)
    registry.update({ACCOUNTS_PREFIX + "alice": alice_record, ACCOUNTS_PREFIX + "bob": bob_v0})
    registry.update({ACCOUNTS_PREFIX + "alice": alice_record, ACCOUNTS_PREFIX + "bob": bob_v1})
    context = FakeContext((("authorization", f"Bearer {bob}"),))
    with pytest.raises(Unauthenticated, match="disabled"):
        registry.authenticate(context)
    registry.update({ACCOUNTS_PREFIX + "alice": alice_record})
    registry.update({ACCOUNTS_PREFIX + "alice": alice_record, ACCOUNTS_PREFIX + "bob": bob_v0})
    with pytest.raises(Unauthenticated, match="unknown API key"):
        registry.authenticate(context)
    # the recovery the docs give (delete the record, add the account again): a new account is newer than any
    kv = DictKeyValue()
    key = add_account(kv, SECRET, "bob")
    registry.update({ACCOUNTS_PREFIX + "alice": alice_record, **kv.list(ACCOUNTS_PREFIX)})
    assert registry.authenticate(FakeContext((("authorization", f"Bearer {key}"),))).account == "bob"


def test_a_record_nested_too_deep_is_refused_and_the_others_still_apply() -> None:
    """json raises RecursionError, not ValueError, for a deep enough document: one such record in Consul KV had
    stopped every registry update on every node (the read was dropped whole)."""
    alice, bob = new_api_key(), new_api_key()
    registry = AccountRegistry(SECRET)
    alice_record = encode(SECRET, Account("alice", True, (key_hash(alice),)))
    registry.update({ACCOUNTS_PREFIX + "alice": alice_record,
                     ACCOUNTS_PREFIX + "bob": encode(SECRET, Account("bob", True, (key_hash(bob),), 0))})
    registry.update({ACCOUNTS_PREFIX + "alice": alice_record,
                     ACCOUNTS_PREFIX + "bob": encode(SECRET, Account("bob", False, (key_hash(bob),), 1)),
                     ACCOUNTS_PREFIX + "zzz": b"[" * 100_000 + b"]" * 100_000})
    with pytest.raises(Unauthenticated, match="disabled"):
        registry.authenticate(FakeContext((("authorization", f"Bearer {bob}"),)))
