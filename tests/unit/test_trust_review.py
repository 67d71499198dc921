"""What someone without the cluster secret can do to a node's trust (found by a security review, 2026-12-03):
a hostile registry record, an empty secret, private keys readable while being written."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from devtools import certs
from exchange.accounts import ACCOUNTS_PREFIX, Account, encode, key_hash, new_api_key
from exchange.cluster_common import refuse_development_secret, verify_record
from exchange.cluster_config import MARKETS_KEY, agree_on_markets
from exchange.errors import Unauthenticated
from exchange.node.auth import AccountRegistry, Caller
from exchange.shared.markets import MarketConfig
from tests.unit.fakes import DictKeyValue

SECRET = b"trust-review-cluster-secret"


def registry_with_active(name: str) -> tuple[AccountRegistry, str]:
    key = new_api_key()
    registry = AccountRegistry(SECRET)
    registry.update({ACCOUNTS_PREFIX + name: encode(SECRET, Account(name, True, (key_hash(key),), 1))})
    assert registry.account_of(Caller("", key_hash(key))) == name
    return registry, key


@pytest.mark.parametrize("hostile", [
    json.dumps({"active": True, "keys": [], "version": 1, "mac": "\u00e9"}).encode(),  # compare_digest raised
    # nested just below the parser's limit: it parses, and encoding it again for the MAC went past the stack
    *[('{"active":true,"version":1,"mac":"00","keys":' + "[" * depth + "]" * depth + "}").encode()
      for depth in range(930, 1000, 7)],
])
def test_a_hostile_record_beside_a_real_one_is_refused_and_the_real_change_is_taken(hostile: bytes) -> None:
    """A writer without the secret (the accounts-admin or management token) may spoil records, never stop the
    registry: the record raised out of the update, and the node kept its old registry, a disabled key included."""
    registry, key = registry_with_active("alice")
    registry.update({
        ACCOUNTS_PREFIX + "alice": encode(SECRET, Account("alice", False, (key_hash(key),), 2)),  # her key leaked
        ACCOUNTS_PREFIX + "mallory": hostile,
    })
    with pytest.raises(Unauthenticated, match="disabled"):
        registry.account_of(Caller("", key_hash(key)))


def test_a_markets_record_with_a_non_ascii_mac_does_not_verify() -> None:
    assert verify_record(SECRET, MARKETS_KEY, json.dumps({"markets": "M", "mac": "\u00e9" * 64}).encode()) is None
    kv = DictKeyValue()
    kv.put(MARKETS_KEY, json.dumps({"markets": "M", "mac": "\u00e9"}).encode())
    with pytest.raises(SystemExit, match="do not verify"):
        agree_on_markets(kv, SECRET, [MarketConfig("M")], retry_s=0)


@pytest.mark.parametrize(("listen", "secret"), [("127.0.0.1:50051", ""), ("0.0.0.0:50051", ""),
                                                ("0.0.0.0:50051", "short-secret")])
def test_an_empty_secret_anywhere_or_a_short_one_beyond_loopback_is_refused(listen: str, secret: str) -> None:
    """An empty one (an unset variable in an env file) makes the cluster token and every MAC anyone's to make."""
    with pytest.raises(SystemExit):
        refuse_development_secret(listen, secret)
    refuse_development_secret("127.0.0.1:50051", "short-secret")  # a test cluster on loopback may


def test_private_keys_are_never_readable_by_others_even_while_written(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Written and then chmod-ed, the CA key was 0644 for a moment: a local user who opened it then could mint
    client certificates that pass mTLS."""
    modes: dict[str, int] = {}
    write_bytes = Path.write_bytes

    def recording_write_bytes(self: Path, data: bytes) -> int:
        written = write_bytes(self, data)
        modes[self.name] = stat.S_IMODE(os.stat(self).st_mode)  # right after the bytes are on disk
        return written

    monkeypatch.setattr(Path, "write_bytes", recording_write_bytes)
    old_umask = os.umask(0o022)
    try:
        certs.make_cluster_tls(tmp_path / "tls", {"node-1": ["127.0.0.1"]})
    finally:
        os.umask(old_umask)
    keys = sorted(tmp_path.rglob("*key.pem"))
    assert keys and all(stat.S_IMODE(key.stat().st_mode) == 0o600 for key in keys)
    assert not {name: oct(mode) for name, mode in modes.items() if name.endswith("key.pem") and mode & 0o077}
