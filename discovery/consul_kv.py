"""The key-value store and sessions backed by a Consul agent (py-consul; the HA log's calls on every commit and
standby round on a keep-alive connection of their own, `_AgentConnection`): the cluster's configuration and
account registry (`discovery.KeyValue`), and the versioned and blocking reads, sessions, locks and fenced
transactions the Sequencer's HA mode keeps its log in (`discovery.ReplicatedStore`). The connection
(HTTPS, ACL tokens, what a failure says) is `discovery.consul`'s.
"""

from __future__ import annotations

import base64
import builtins
import http.client
import json
import logging
import math
import select
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import consul
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
    def _client(self) -> consul.Consul:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = consul_client(self.host, self.port, self.token, self.request_timeout,
                                                        self.https)
        return client

    @property
    def _agent(self) -> _AgentConnection:
        agent = getattr(self._local, "agent", None)
        if agent is None:
            agent = self._local.agent = _AgentConnection(self.host, self.port, self.token, self.https)
        return agent

    def _request(self, what: str, method: str, path: str, body: bytes | None = None,
                 timeout: float | None = None) -> tuple[int, bytes, int]:
        """(status, body, X-Consul-Index) of one call on this thread's own connection; raises DiscoveryError if
        there is no answer, AccessDenied on a 403."""
        try:
            status, data, index = self._agent.request(method, path, body, timeout or self.request_timeout)
        except Exception as e:  # timeout, connection reset, ...
            raise DiscoveryError(f"Consul at {self.host}:{self.port} did not answer {what}: {e}") from e
        if status == 403:
            raise AccessDenied(f"Consul at {self.host}:{self.port} refused {what}: "
                               f"{describe_failure(AccessDenied(data.decode(errors='replace')), self.token)}")
        return status, data, index

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
        what = f"a read of {key}"
        status, data, _ = self._request(what, "GET", _kv_path(key) + ("?consistent" if consistent else ""))
        if status == 404:
            return None
        items = _kv_items(what, status, data)
        return _versioned_json(items[0]) if items else None

    def keys(self, prefix: str) -> builtins.list[str]:  # `list` is a method here
        _, keys = self._call(f"the keys under {prefix}", lambda: self._client.kv.get(prefix, keys=True))
        return sorted(keys or [])

    def read_many(self, keys: Sequence[str]) -> dict[str, Versioned] | None:
        """One read-only transaction (served without a Raft round) of "get" operations."""
        try:
            results = self._txn([{"KV": {"Verb": "get", "Key": key}} for key in keys])
        except TransactionConflict:  # a key does not exist
            return None
        return {result["KV"]["Key"]: _versioned_json(result["KV"]) for result in results if "KV" in result}

    def wait_prefix(self, prefix: str, index: int, wait_s: float) -> tuple[int, dict[str, Versioned]]:
        what = f"a blocking read of {prefix}"
        path = _kv_path(prefix) + "?recurse"
        if index:  # Consul holds the answer until the index passes `index` or `wait` (plus up to wait/16) ends
            path += f"&index={index}&wait={max(1, int(wait_s * 1000))}ms"
        status, data, new_index = self._request(what, "GET", path, timeout=self.request_timeout + wait_s * 17 / 16)
        if status == 404:  # no key under the prefix
            return new_index, {}
        return new_index, {item["Key"]: _versioned_json(item) for item in _kv_items(what, status, data)}

    def transact(self, ops: Sequence[TransactionOp]) -> dict[str, int]:
        results = self._txn([{"KV": _txn_op(op)} for op in ops])
        return {result["KV"]["Key"]: int(result["KV"]["ModifyIndex"]) for result in results if "KV" in result}

    def _txn(self, operations: builtins.list[dict[str, Any]]) -> builtins.list[dict[str, Any]]:
        """The results of a transaction; raises as `transact` says (DiscoveryError: the outcome is unknown)."""
        status, data, _ = self._request("a transaction", "PUT", "/v1/txn", json.dumps(operations).encode())
        body = data.decode(errors="replace")
        if status == 200:
            return list(json.loads(data).get("Results") or [])
        if status == 409:
            errors = json.loads(data).get("Errors") or []
            if any("Permission denied" in str(error.get("What")) for error in errors):  # how a txn says 403
                raise AccessDenied(f"Consul at {self.host}:{self.port} refused a transaction: "
                                   f"{describe_failure(AccessDenied(body), self.token)}")
            raise TransactionConflict("; ".join(str(error.get("What")) for error in errors) or body)
        if status in (400, 413):
            raise TransactionRejected(f"Consul refused a transaction: {status} {body}")
        raise DiscoveryError(f"Consul answered a transaction with {status}: {body}")

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


def _versioned_json(item: dict[str, Any]) -> Versioned:
    """A KV entry as Consul's HTTP API gives it (the value in base64)."""
    return Versioned(base64.b64decode(item.get("Value") or ""), int(item["ModifyIndex"]), item.get("Session") or None)


def _kv_path(key: str) -> str:
    return "/v1/kv/" + urllib.parse.quote(key, safe="/")


def _kv_items(what: str, status: int, data: bytes) -> builtins.list[dict[str, Any]]:
    if status != 200:
        raise DiscoveryError(f"Consul answered {what} with {status}: {data.decode(errors='replace')}")
    return list(json.loads(data) or [])


class _AgentConnection:
    """One thread's keep-alive HTTP(S) connection to the agent, for the HA log's calls on every commit and
    every standby round (transactions, blocking and consistent reads): py-consul's calls go through requests,
    ~0.6 ms of Python each, a quarter of a leading replica's CPU (measured); this is ~0.1 ms. A connection the
    agent closed while idle is opened again before the request is sent; one that fails midway is closed and the
    call raises (for a transaction: an unknown outcome, which the caller resolves)."""

    def __init__(self, host: str, port: int, token: str | None, https: ConsulHttps | None) -> None:
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["X-Consul-Token"] = token
        self._host, self._port = host, port
        self._context: ssl.SSLContext | None = None
        if https is not None:
            self._context = ssl.create_default_context(cafile=https.ca_file)
            self._context.load_cert_chain(https.cert_file, https.key_file)
        self._connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, bytes, int]:
        connection = self._connection
        if connection is not None and connection.sock is not None and _readable(connection.sock):
            connection.close()  # the agent closed it (or sent what nobody asked for): a new one
        if connection is None:
            connection = self._connection = (
                http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._context)
                if self._context is not None else http.client.HTTPConnection(self._host, self._port, timeout=timeout))
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        try:
            connection.request(method, path, body=body, headers=self._headers)
            response = connection.getresponse()
            data = response.read()
        except BaseException:
            connection.close()
            raise
        return response.status, data, int(response.headers.get("X-Consul-Index") or 0)


def _readable(sock: Any) -> bool:
    """Whether an idle connection's socket has something to read: the peer closed it."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


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
