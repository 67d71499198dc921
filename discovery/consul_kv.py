"""The key-value store and sessions backed by a Consul agent (py-consul): the cluster's configuration and
account registry (`discovery.KeyValue`), and the versioned and blocking reads, sessions, locks and fenced
transactions the Sequencer's HA mode keeps its log in (`discovery.ReplicatedStore`). The connection
(HTTPS, ACL tokens, what a failure says) is `discovery.consul`'s: py-consul on a keep-alive transport of
its own (`discovery.consul_http`, py-consul's HTTPClient extension point), because the HA log makes several
calls on every commit and standby round, and through requests each costs ~0.6 ms of Python (~0.1 ms kept alive).
"""

from __future__ import annotations

import base64
import builtins
import json
import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

from consul.exceptions import NotFound

from discovery import (
    AccessDenied,
    CheckSession,
    CompareAndSet,
    Delete,
    DiscoveryError,
    Put,
    TransactionConflict,
    TransactionOp,
    TransactionRejected,
    Versioned,
    consul_http,
)
from discovery.consul import BACKOFF_MAX, BACKOFF_MIN, ConsulHttps, acl_refused, consul_client, describe_failure

log = logging.getLogger(__name__)


class ConsulKV:
    """The ReplicatedStore on Consul KV and sessions (`discovery.ReplicatedStore`: the KeyValue store the
    nodes and the tools use, plus the blocking reads, sessions and locks the Sequencer's HA mode keeps its log
    in). Never contacts Consul when constructed. Thread-safe: each thread has its own connection."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8500, request_timeout: float = 5.0,
                 wait: str = "30s", token: str | None = None, https: ConsulHttps | None = None) -> None:
        """`token`: the Consul ACL token every request carries (None: the anonymous token); `https`: talk to the
        agent over HTTPS."""
        self.host = host
        self.port = port
        self.token = token
        self.https = https
        self.request_timeout = request_timeout
        self.wait = wait
        self._local = threading.local()

    @property
    def _client(self) -> consul_http.Consul:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = consul_client(self.host, self.port, self.token, self.request_timeout,
                                                        self.https)
        return client

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as e:
            if acl_refused(e):
                raise AccessDenied(f"Consul KV at {self.host}:{self.port} refused {what}: "
                                   f"{describe_failure(e, self.token)}") from e
            raise DiscoveryError(f"Consul KV at {self.host}:{self.port} did not answer {what}: {e}") from e

    def get(self, key: str) -> bytes | None:
        _, item = self._call(f"a read of {key}", lambda: self._client.kv.get(key, consistency="consistent"))
        return None if item is None else (item.get("Value") or b"")

    def create(self, key: str, value: bytes) -> bool:
        return bool(self._call(f"the creation of {key}", lambda: self._client.kv.put(key, value, cas=0)))

    def put(self, key: str, value: bytes) -> None:
        if not self._call(f"a write of {key}", lambda: self._client.kv.put(key, value)):
            raise DiscoveryError(f"Consul KV at {self.host}:{self.port} refused the write of {key}")

    def list(self, prefix: str) -> dict[str, bytes]:
        _, items = self._call(f"a read of {prefix}", lambda: self._client.kv.get(prefix, recurse=True))
        return {item["Key"]: item.get("Value") or b"" for item in items or []}

    def watch_prefix(self, prefix: str, on_change: Callable[[dict[str, bytes]], None] | None = None) -> ConsulKeyWatch:
        watch = ConsulKeyWatch(self, prefix, on_change)
        watch.start()
        return watch

    # -- ReplicatedStore --------------------------------------------------------------------------

    def read(self, key: str, consistent: bool = False) -> Versioned | None:
        consistency = "consistent" if consistent else "default"
        _, item = self._call(f"a read of {key}", lambda: self._client.kv.get(key, consistency=consistency))
        return None if item is None else _versioned(item)

    def keys(self, prefix: str) -> builtins.list[str]:  # `list` is a method here
        _, keys = self._call(f"the keys under {prefix}", lambda: self._client.kv.get(prefix, keys=True))
        return sorted(keys or [])

    def read_many(self, keys: Sequence[str]) -> dict[str, Versioned] | None:
        """One read-only transaction (served without a Raft round) of "get" operations."""
        try:
            results = self._txn([{"KV": {"Verb": "get", "Key": key}} for key in keys])
        except TransactionConflict:  # a key does not exist
            return None
        return {result["KV"]["Key"]: Versioned(base64.b64decode(result["KV"].get("Value") or ""),
                                               int(result["KV"]["ModifyIndex"]), result["KV"].get("Session") or None)
                for result in results if "KV" in result}

    def wait_prefix(self, prefix: str, index: int, wait_s: float) -> tuple[int, dict[str, Versioned]]:
        wait = f"{max(1, int(wait_s * 1000))}ms"
        new_index, items = self._call(f"a blocking read of {prefix}", lambda: self._client.kv.get(
            prefix, recurse=True, index=index or None, wait=wait))
        return int(new_index or 0), {item["Key"]: _versioned(item) for item in items or []}

    def transact(self, ops: Sequence[TransactionOp]) -> dict[str, int]:
        results = self._txn([{"KV": _txn_op(op)} for op in ops])
        return {result["KV"]["Key"]: int(result["KV"]["ModifyIndex"]) for result in results if "KV" in result}

    def _txn(self, operations: builtins.list[dict[str, Any]]) -> builtins.list[dict[str, Any]]:
        """The results of a transaction; raises as `transact` says (DiscoveryError: the outcome is unknown)."""
        try:
            client = self._client
            response = client.http.put(lambda response: response, "/v1/txn", data=json.dumps(operations),
                                       headers=client.prepare_headers())
        except Exception as e:  # timeout, connection reset, ...: it may have been applied
            raise DiscoveryError(f"Consul at {self.host}:{self.port} did not answer a transaction: {e}") from e
        if response.code == 200:
            return list(json.loads(response.body).get("Results") or [])
        if response.code == 409:
            errors = json.loads(response.body).get("Errors") or []
            if any("Permission denied" in str(error.get("What")) for error in errors):  # how a txn says 403
                raise AccessDenied(f"Consul at {self.host}:{self.port} refused a transaction: "
                                   f"{describe_failure(AccessDenied(response.body), self.token)}")
            raise TransactionConflict("; ".join(str(error.get("What")) for error in errors) or response.body)
        if response.code == 403:
            raise AccessDenied(f"Consul at {self.host}:{self.port} refused a transaction: "
                               f"{describe_failure(AccessDenied(response.body), self.token)}")
        if response.code in (400, 413):
            raise TransactionRejected(f"Consul refused a transaction: {response.code} {response.body}")
        raise DiscoveryError(f"Consul answered a transaction with {response.code}: {response.body}")

    def create_session(self, name: str, checks: Sequence[str], ttl_s: float, lock_delay_s: float) -> str:
        return str(self._call(f"the creation of session {name}", lambda: self._client.session.create(
            name=name, checks=list(checks), ttl=max(10, math.ceil(ttl_s)), lock_delay=math.ceil(lock_delay_s),
            behavior="release")))

    def renew_session(self, session: str) -> bool:
        try:
            self._client.session.renew(session)
            return True
        except NotFound:
            return False
        except Exception as e:
            if acl_refused(e):
                raise AccessDenied(f"Consul at {self.host}:{self.port} refused to renew session {session}: "
                                   f"{describe_failure(e, self.token)}") from e
            raise DiscoveryError(f"Consul at {self.host}:{self.port} did not renew session {session}: {e}") from e

    def destroy_session(self, session: str) -> None:
        self._call(f"the end of session {session}", lambda: self._client.session.destroy(session))

    def sessions(self, name: str) -> builtins.list[str]:
        _, sessions = self._call("the sessions", lambda: self._client.session.list(consistency="consistent"))
        return [str(session["ID"]) for session in sessions or [] if session.get("Name") == name]

    def acquire(self, key: str, value: bytes, session: str) -> bool:
        return bool(self._call(f"the lock {key}", lambda: self._client.kv.put(key, value, acquire=session)))

    def release(self, key: str, session: str) -> bool:
        return bool(self._call(f"the release of {key}", lambda: self._client.kv.put(key, b"", release=session)))


def _versioned(item: dict[str, Any]) -> Versioned:
    return Versioned(item.get("Value") or b"", int(item["ModifyIndex"]), item.get("Session") or None)


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _txn_op(op: TransactionOp) -> dict[str, Any]:
    if isinstance(op, CheckSession):
        return {"Verb": "check-session", "Key": op.key, "Session": op.session}
    if isinstance(op, CompareAndSet):
        return {"Verb": "cas", "Key": op.key, "Value": _b64(op.value), "Index": op.index}
    if isinstance(op, Put):
        return {"Verb": "set", "Key": op.key, "Value": _b64(op.value)}
    if isinstance(op, Delete):
        return {"Verb": "delete", "Key": op.key}
    raise TypeError(f"not a transaction operation: {op!r}")


class ConsulKeyWatch:
    """Blocking queries on a KV prefix in a daemon thread; keeps the last answer while Consul is unreachable."""

    def __init__(self, kv: ConsulKV, prefix: str, on_change: Callable[[dict[str, bytes]], None] | None) -> None:
        self._kv = kv
        self.prefix = prefix
        self._on_change = on_change
        self._current: dict[str, bytes] | None = None
        self._fresh = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"consul-kv-watch-{prefix}", daemon=True)

    def current(self) -> dict[str, bytes] | None:
        return None if self._current is None else dict(self._current)

    def fresh(self) -> bool:
        return self._fresh

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        kv = self._kv
        client = consul_client(kv.host, kv.port, kv.token, kv.request_timeout, kv.https)
        index: int | None = None
        backoff = BACKOFF_MIN
        refused = False
        while not self._stop.is_set():
            try:
                new_index, items = client.kv.get(self.prefix, recurse=True, index=index, wait=kv.wait)
            except Exception as e:
                # a refused token is not "no keys": keep the last answer, say it is not fresh, and say why, loudly
                if self._fresh or self._current is None or acl_refused(e) != refused:
                    log.log(logging.ERROR if acl_refused(e) else logging.WARNING,
                            "Consul KV at %s:%s: %s keeps its last known state (not fresh): %s",
                            kv.host, kv.port, self.prefix, describe_failure(e, kv.token))
                refused = acl_refused(e)
                self._fresh = False
                index = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_MIN
            refused = False
            if not self._fresh and self._current is not None:
                log.info("Consul KV at %s:%s answers again for %s", kv.host, kv.port, self.prefix)
            self._fresh = True
            values = {item["Key"]: item.get("Value") or b"" for item in items or []}
            if values != self._current:
                self._current = values
                if self._on_change is not None:
                    try:
                        self._on_change(dict(values))
                    except Exception:
                        log.exception("KV watch callback for %r failed", self.prefix)
            new_index = int(new_index or 0)
            index = new_index if index is None or new_index >= index else None  # backwards: a new Consul state
