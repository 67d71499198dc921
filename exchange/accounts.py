"""Accounts and their API keys: the registry every node shares, in Consul KV.

Each account is one key, `exchange/accounts/<name>`, holding JSON: whether the account is active, and the
SHA-256 (hex) of each of its API keys, never a key itself. A key is shown once, when it is made. Nodes
follow the whole prefix with blocking queries (exchange/node/auth.py), so a new key works, and a disabled
account stops working, within a few seconds without a restart. `exchange-cli accounts ...` and the demo
write it through the functions here. Pure but for the KeyValue calls.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from discovery import CompareAndSet, KeyValue, TransactionConflict

ACCOUNTS_PREFIX = "exchange/accounts/"
AUTHORIZATION = "authorization"  # the metadata that carries `Bearer <api key>` on order-entry calls
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


def encode(account: Account) -> bytes:
    return json.dumps({"active": account.active, "keys": list(account.key_hashes)}, sort_keys=True).encode()


def decode(name: str, value: bytes) -> Account:
    """An account record; a record that is not one decodes as an inactive account (never falls open)."""
    try:
        data = json.loads(value)
        keys = tuple(str(key) for key in data.get("keys", ()))
        return Account(name, data.get("active") is True, keys)
    except (ValueError, TypeError, AttributeError):
        return Account(name, False, ())


def accounts_of(entries: dict[str, bytes]) -> list[Account]:
    """The accounts of a registry read (full KV key -> value)."""
    return sorted((decode(key[len(ACCOUNTS_PREFIX):], value) for key, value in entries.items()
                   if key.startswith(ACCOUNTS_PREFIX) and len(key) > len(ACCOUNTS_PREFIX)), key=lambda a: a.name)


def list_accounts(kv: KeyValue) -> list[Account]:
    return accounts_of(kv.list(ACCOUNTS_PREFIX))


def add_account(kv: KeyValue, name: str) -> str:
    """Creates an active account with a new key; returns the key (its only appearance)."""
    key = new_api_key()
    if not kv.create(ACCOUNTS_PREFIX + check_name(name), encode(Account(name, True, (key_hash(key),)))):
        raise AccountError(f"account {name!r} exists already: add a key to it with `accounts add-key {name}`")
    return key


def _update(kv: KeyValue, name: str, change: Callable[[Account], Account]) -> Account:
    """Applies `change` (Account -> Account) with compare-and-set, retrying if someone else wrote meanwhile."""
    while True:
        found = kv.read(ACCOUNTS_PREFIX + check_name(name), consistent=True)
        if found is None:
            raise AccountError(f"there is no account {name!r}; create it with `accounts add {name}`")
        updated = change(decode(name, found.value))
        try:
            kv.transact([CompareAndSet(ACCOUNTS_PREFIX + name, encode(updated), found.index)])
        except TransactionConflict:
            continue
        return updated


def add_key(kv: KeyValue, name: str) -> str:
    """A new key for an existing account (its other keys keep working); returns the key."""
    key = new_api_key()
    _update(kv, name, lambda a: Account(a.name, a.active, (*a.key_hashes, key_hash(key))))
    return key


def set_active(kv: KeyValue, name: str, active: bool) -> Account:
    """Enables or disables an account: a disabled account's keys stop working on every node within seconds."""
    return _update(kv, name, lambda a: Account(a.name, active, a.key_hashes))
