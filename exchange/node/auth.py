"""Who is calling: API keys checked against the shared account registry, and each account's rate limit.

`AccountRegistry` is the node's copy of the registry in Consul KV (exchange/accounts.py), kept current by a
blocking-query watch: a new key works, and a disabled account stops working, within seconds. While Consul is
unreachable the node keeps the last registry it read and says so (GetStatus `accounts.fresh`); before it has
read one at all it refuses every order-entry call (UNAVAILABLE). It never falls open: a record that does not
verify with the cluster secret (or is older than the one it holds) is ignored, logged and counted
(`registry_records_refused` in GetStatus counters), and the account's last good record kept.

`RateLimiter` is a token bucket per account (orders per second, with a burst); over the limit a call gets
RESOURCE_EXHAUSTED saying when to retry. It runs on the node's clock, so it lives here, not in the engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from discovery import KeyWatch
from exchange.accounts import ACCOUNTS_PREFIX, KEY_PREFIX, MAX_KEY_LENGTH, Account, accounts_of, key_hash
from exchange.errors import ResourceExhausted, Unauthenticated, Unavailable, retry_hint
from exchange.node.metrics import AUTH_FAILURES, RATE_LIMITED, REGISTRY_RECORDS_REFUSED, counters
from exchange.shared.wire import AUTHORIZATION

log = logging.getLogger(__name__)

HOW_TO = ("send the metadata `authorization: Bearer <api key>` (grpcurl -H 'authorization: Bearer KEY'; "
          "exchange-cli --api-key KEY or EXCHANGE_API_KEY; exchange.client Connection(api_key=...))")
DEFAULT_RATE, DEFAULT_BURST = 100.0, 200.0  # orders per second and burst, per account, as venues allow


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the account, and the hash of the key it presented (re-checked on streams)."""

    account: str
    key_hash: str


class AccountRegistry:
    """The registry as this node knows it: key hash -> (account, active)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret  # the cluster secret: what the records' MACs are checked with
        self._keys: dict[str, tuple[str, bool]] | None = None  # None: never read
        self._accounts = 0
        self._good: dict[str, Account] = {}  # each account's last record that verified
        # each account's highest version taken, kept after its record is deleted: a replay of an older record the
        # cluster wrote is refused even after a delete (a new account's version is its creation time, above all)
        self._versions: dict[str, int] = {}
        self._refused: dict[str, bytes] = {}  # the record last refused for each account (logged and counted once)
        self._watch: KeyWatch | None = None

    def follow(self, watch_prefix: Callable[[Callable[[dict[str, bytes]], None]], KeyWatch]) -> None:
        """Starts following the registry: `watch_prefix(on_change)` watches exchange/accounts/."""
        self._watch = watch_prefix(self.update)

    def update(self, entries: dict[str, bytes]) -> None:
        """Replaces the registry with a read of it (full KV key -> value), in one assignment. An empty read
        after a non-empty one is not taken: accounts are disabled, never deleted, so an empty registry means a
        Consul that lost its data (a restarted dev agent), and keys must not silently stop working."""
        accounts, forged = accounts_of(self._secret, entries)
        if not accounts and not forged and self._keys:
            log.warning("the account registry in Consul is empty: keeping the last one read (%d keys)",
                        len(self._keys))
            return
        good = {account.name: account for account in accounts}
        for account in accounts:
            newest = self._versions.get(account.name, account.version)
            if account.version < newest:
                self._refuse(account.name, entries, f"is version {account.version}, older than the version "
                                                    f"{newest} this node has taken (a replayed record)")
                held = self._good.get(account.name)
                if held is None:  # deleted since: the replay does not bring it back
                    del good[account.name]
                else:
                    good[account.name] = held
        for name in forged:
            self._refuse(name, entries, "does not verify with the cluster secret (forged, altered, or written with "
                                        "another --cluster-secret)")
            if name in self._good:
                good[name] = self._good[name]
        self._refused = {name: value for name, value in self._refused.items()
                         if entries.get(ACCOUNTS_PREFIX + name) == value}
        self._good = good
        for account in good.values():
            self._versions[account.name] = max(self._versions.get(account.name, account.version), account.version)
        accounts = list(good.values())
        self._keys = {digest: (account.name, account.active) for account in accounts for digest in account.key_hashes}
        self._accounts = sum(1 for account in accounts if account.active)

    def _refuse(self, name: str, entries: dict[str, bytes], why: str) -> None:
        value = entries[ACCOUNTS_PREFIX + name]
        if self._refused.get(name) == value:
            return
        self._refused[name] = value
        counters["registry_records_refused"] += 1
        REGISTRY_RECORDS_REFUSED.inc()
        held = "keeps its last good record" if name in self._good else "has no good record: its keys are refused"
        log.error("ignoring the record of account %r in Consul KV %s%s: it %s; the account %s", name,
                  ACCOUNTS_PREFIX, name, why, held)

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()

    def status(self) -> tuple[bool, bool, int, int]:
        """(loaded, fresh, active accounts, keys of active accounts)."""
        keys = self._keys
        fresh = self._watch.fresh() if self._watch is not None else keys is not None
        active_keys = sum(1 for _, active in keys.values() if active) if keys else 0
        return keys is not None, fresh, self._accounts, active_keys

    def authenticate(self, context: grpc.aio.ServicerContext) -> Caller:
        """The caller of an order-entry call, from its `authorization` metadata; UNAUTHENTICATED for a missing,
        malformed, unknown or disabled key (the message says how to pass one)."""
        presented = [value for key, value in context.invocation_metadata() or () if key == AUTHORIZATION]
        if not presented:
            raise Unauthenticated(f"this call needs an API key: {HOW_TO}")
        value = presented[0]
        if isinstance(value, bytes) or len(presented) > 1:
            raise Unauthenticated(f"send exactly one authorization header as text: {HOW_TO}")
        scheme, _, key = value.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated(f"the authorization metadata must be `Bearer <api key>`, got scheme "
                                  f"{scheme[:20]!r}: {HOW_TO}")
        if len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
            raise Unauthenticated(f"that is not an API key (keys are {KEY_PREFIX}... of at most {MAX_KEY_LENGTH} "
                                  f"characters): {HOW_TO}")
        caller = Caller("", key_hash(key))
        return Caller(self.account_of(caller), caller.key_hash)

    def account_of(self, caller: Caller) -> str:
        """The account of a key hash now (streams ask again for every order: a key disabled meanwhile fails)."""
        keys = self._keys
        if keys is None:
            raise Unavailable("this node has not read the account registry yet (Consul unreachable since it "
                              "started); retry shortly or use another node")
        found = keys.get(caller.key_hash)
        if found is None:
            raise Unauthenticated(f"unknown API key: check it, or ask for one (exchange-cli accounts add NAME); "
                                  f"{HOW_TO}")
        account, active = found
        if not active:
            raise Unauthenticated(f"the account {account!r} of this API key is disabled")
        return account


class RateLimiter:
    """A token bucket per account: `rate` orders per second, up to `burst` at once."""

    def __init__(self, rate: float = DEFAULT_RATE, burst: float = DEFAULT_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # account -> (tokens, at)

    def take(self, account: str, orders: int = 1) -> None:
        """Spends `orders` tokens of `account`, or raises RESOURCE_EXHAUSTED (spending none)."""
        now = self._clock()
        tokens, at = self._buckets.get(account, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < orders - 1e-9:  # (float dust from the refill)
            self._buckets[account] = (tokens, now)
            wait_ms = max(1, int((orders - tokens) / self.rate * 1000 + 0.999))
            raise ResourceExhausted(
                f"account {account!r} is over its rate limit of {self.rate:g} orders/s (bursts of "
                f"{self.burst:g}): {retry_hint(wait_ms)}"
            )
        self._buckets[account] = (tokens - orders, now)


class AccessControl:
    """Who may enter orders and how fast: the registry and the rate limiter together. Without a registry
    (`--insecure-no-auth`, loopback development only) every caller is the account "" and nothing is limited."""

    def __init__(self, registry: AccountRegistry | None, limiter: RateLimiter | None) -> None:
        self.registry = registry
        self.limiter = limiter

    def caller(self, context: grpc.aio.ServicerContext) -> Caller:
        """The authenticated caller of a call (UNAUTHENTICATED, or UNAVAILABLE before the registry is read)."""
        if self.registry is None:
            return Caller("", "")
        try:
            return self.registry.authenticate(context)
        except Unauthenticated:
            AUTH_FAILURES.inc()
            raise

    def account(self, caller: Caller) -> str:
        """The caller's account now: a key disabled since the call began is UNAUTHENTICATED (streams ask per order)."""
        if self.registry is None:
            return ""
        try:
            return self.registry.account_of(caller)
        except Unauthenticated:
            AUTH_FAILURES.inc()
            raise

    def spend(self, account: str, orders: int = 1) -> None:
        """RESOURCE_EXHAUSTED if `account` is over its rate limit."""
        if self.limiter is not None:
            try:
                self.limiter.take(account, orders)
            except ResourceExhausted:
                RATE_LIMITED.inc()
                raise
