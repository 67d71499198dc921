"""Accounts and their API keys: the registry every node shares, in Consul KV.

Each account is one key, `exchange/accounts/<name>`, holding a signed record (exchange.cluster_common.sign_record):
JSON with whether the account is active, the SHA-256 (hex) of each of its API keys (never a key itself), a
version that every change raises, and `mac`, the HMAC-SHA256 of the rest and of the key name made with the
cluster secret. A node takes only a record whose MAC verifies (and no older version than the one it holds),
so whoever may write Consul KV without the cluster secret can deny service but never add a key. A key is
shown once, when it is made. Nodes follow the whole prefix with blocking queries (exchange/node/auth.py), so
a new key works, and a disabled account stops working, within a few seconds without a restart.
`exchange-cli accounts ...` and the demo write it through the functions here. Pure but for the KeyValue calls.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from discovery import CompareAndSet, KeyValue, TransactionConflict
from exchange.cluster_common import sign_record, verify_record

ACCOUNTS_PREFIX = "exchange/accounts/"
KEY_PREFIX = "pxk_"
ACCOUNT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
MAX_KEY_LENGTH = 128  # a key is 47 characters; anything much longer is not one


class AccountError(ValueError):
    """An account operation that cannot be done (unknown account, a name already taken, a bad name)."""


@dataclass(frozen=True)
class Account:
    name: str
    active: bool
    key_hashes: tuple[str, ...]
    version: int = 0  # raised by every change: a node refuses an older record than the one it holds (a replay)


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    """What the registry keeps of a key (and what a node compares a presented key with)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def check_name(name: str) -> str:
    if not ACCOUNT_NAME.fullmatch(name):
        raise AccountError(f"bad account name {name!r}: use 1-64 of a-z, 0-9, '_', '.', '-', starting with a letter "
                           "or digit")
    return name


def encode(secret: bytes, account: Account) -> bytes:
    """The signed record of `account` (what its registry key holds)."""
    return sign_record(secret, ACCOUNTS_PREFIX + account.name,
                       {"active": account.active, "keys": list(account.key_hashes), "version": account.version})


def decode(secret: bytes, name: str, value: bytes) -> Account | None:
    """The account of a record, None if the record does not verify with `secret` (forged, altered, copied from
    another account, unsigned) or is not one: never an account of a record the cluster did not write."""
    data = verify_record(secret, ACCOUNTS_PREFIX + name, value)
    if data is None:
        return None
    keys, version = data.get("keys"), data.get("version", 0)
    if not isinstance(keys, list) or not isinstance(version, int):
        return None
    return Account(name, data.get("active") is True, tuple(str(key) for key in keys), version)


def accounts_of(secret: bytes, entries: dict[str, bytes]) -> tuple[list[Account], list[str]]:
    """The accounts of a registry read (full KV key -> value) whose records verify, and the names of those
    whose records do not."""
    accounts, refused = [], []
    for key, value in sorted(entries.items()):
        name = key[len(ACCOUNTS_PREFIX):]
        if not key.startswith(ACCOUNTS_PREFIX) or not name:
            continue
        account = decode(secret, name, value)
        if account is None:
            refused.append(name)
        else:
            accounts.append(account)
    return accounts, refused


def list_accounts(kv: KeyValue, secret: bytes) -> tuple[list[Account], list[str]]:
    return accounts_of(secret, kv.list(ACCOUNTS_PREFIX))


def add_account(kv: KeyValue, secret: bytes, name: str) -> str:
    """Creates an active account with a new key; returns the key (its only appearance). Its version is the time
    (milliseconds): above every record the name had before, so an account deleted and added again (the recovery
    of a spoiled record) is taken by nodes that refuse replays of its old records."""
    key = new_api_key()
    account = Account(name, True, (key_hash(key),), time.time_ns() // 1_000_000)
    if not kv.create(ACCOUNTS_PREFIX + check_name(name), encode(secret, account)):
        raise AccountError(f"account {name!r} exists already: add a key to it with `accounts add-key {name}`")
    return key


def _update(kv: KeyValue, secret: bytes, name: str, change: Callable[[Account], Account]) -> Account:
    """Applies `change` (Account -> Account) with compare-and-set, retrying if someone else wrote meanwhile; the
    new record's version is one above the old one's."""
    while True:
        found = kv.read(ACCOUNTS_PREFIX + check_name(name), consistent=True)
        if found is None:
            raise AccountError(f"there is no account {name!r}; create it with `accounts add {name}`")
        account = decode(secret, name, found.value)
        if account is None:
            raise AccountError(f"the record of account {name!r} does not verify with this cluster secret: it was "
                               "forged, or written with another secret (--cluster-secret / EXCHANGE_CLUSTER_SECRET "
                               "must be the cluster's); nodes ignore it")
        changed = change(account)
        updated = Account(changed.name, changed.active, changed.key_hashes, account.version + 1)
        try:
            kv.transact([CompareAndSet(ACCOUNTS_PREFIX + name, encode(secret, updated), found.index)])
        except TransactionConflict:
            continue
        return updated


def add_key(kv: KeyValue, secret: bytes, name: str) -> str:
    """A new key for an existing account (its other keys keep working); returns the key."""
    key = new_api_key()
    _update(kv, secret, name, lambda a: Account(a.name, a.active, (*a.key_hashes, key_hash(key))))
    return key


def set_active(kv: KeyValue, secret: bytes, name: str, active: bool) -> Account:
    """Enables or disables an account: a disabled account's keys stop working on every node within seconds."""
    return _update(kv, secret, name, lambda a: Account(a.name, active, a.key_hashes))
