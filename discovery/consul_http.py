"""py-consul on a keep-alive `http.client` connection instead of requests (py-consul's own extension point:
`consul.base.HTTPClient`, which `consul.base.Consul.http_connect` returns).

Why: a call through py-consul's default transport (requests) costs ~0.6 ms of Python; the HA log makes several
on every commit and every standby round, a quarter of a leading Sequencer's CPU (measured). On one kept-alive
connection a call is ~0.1 ms. Everything else (the API, what a 4xx/5xx raises, the timeouts) is py-consul's.
"""

from __future__ import annotations

import http.client
import select
import ssl
import threading
from collections.abc import Callable
from typing import Any

from consul import base
from consul.std import DEFAULT_TIMEOUT, DEFAULT_WAIT, parse_duration


class KeepAliveHTTPClient(base.HTTPClient):
    """One keep-alive HTTP(S) connection to the agent. A connection the agent closed while idle is opened again
    before a request is sent; one that fails midway is closed and the call raises an OSError (for a write: an
    unknown outcome, which the caller resolves). Calls are serialized (one connection): give each thread that
    must not wait for another's blocking query its own client."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8500, scheme: str = "http",
                 verify: bool | str = True, cert: str | tuple[str, str] | None = None,
                 connections_timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """`verify`: check the agent's certificate (a str: against that CA file); `cert`: this process's
        certificate (a file, or (certificate, key) files); `connections_timeout` as py-consul's std client:
        how long to wait for the agent to connect or answer, plus a blocking query's wait and its jitter."""
        super().__init__(host, port, scheme, verify, cert)
        self.connections_timeout = connections_timeout
        self._context: ssl.SSLContext | None = None
        if scheme == "https":
            self._context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
            if verify is False:
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE
            if cert:
                self._context.load_cert_chain(*((cert,) if isinstance(cert, str) else cert))
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def timeout(self, params: Any, connections_timeout: float | None = None) -> float | None:
        """As py-consul's std client: a blocking query (with an index) sends nothing until its wait, plus up to
        wait/16, has passed."""
        timeout = connections_timeout or self.connections_timeout
        if timeout is None:
            return None
        params = dict(params or ())
        if "index" not in params:
            return timeout
        wait = parse_duration(params["wait"]) if "wait" in params else DEFAULT_WAIT
        return timeout + wait + wait / 16

    def get(self, callback: Callable[[base.Response], Any], path: str, params: Any = None,
            headers: dict[str, str] | None = None, raw: bool = False, connections_timeout: float | None = None) -> Any:
        return callback(self._request("GET", path, params, None, headers, raw, connections_timeout))

    def put(self, callback: Callable[[base.Response], Any], path: str, params: Any = None, data: str | bytes = "",
            headers: dict[str, str] | None = None, connections_timeout: float | None = None) -> Any:
        return callback(self._request("PUT", path, params, data, headers, False, connections_timeout))

    def delete(self, callback: Callable[[base.Response], Any], path: str, params: Any = None,
               data: str | bytes = "", headers: dict[str, str] | None = None,
               connections_timeout: float | None = None) -> Any:
        return callback(self._request("DELETE", path, params, data, headers, False, connections_timeout))

    def post(self, callback: Callable[[base.Response], Any], path: str, params: Any = None, data: str = "",
             headers: dict[str, str] | None = None, connections_timeout: float | None = None) -> Any:
        return callback(self._request("POST", path, params, data, headers, False, connections_timeout))

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _request(self, method: str, path: str, params: Any, data: str | bytes | None,
                 headers: dict[str, str] | None, raw: bool, connections_timeout: float | None) -> base.Response:
        target = self.uri(path, params)[len(self.base_uri):]
        timeout = self.timeout(params, connections_timeout)
        body = data.encode() if isinstance(data, str) else data
        with self._lock:
            connection = self._connection
            if connection is not None and connection.sock is not None and _readable(connection.sock):
                connection.close()  # the agent closed it while idle (or sent what nobody asked for): a new one
            if connection is None:
                connection = self._connection = (
                    http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self._context)
                    if self._context is not None else http.client.HTTPConnection(self.host, self.port, timeout=timeout))
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            try:
                connection.request(method, target, body=body or None, headers=headers or {})
                response = connection.getresponse()
                content = response.read()
            except BaseException as e:
                connection.close()
                if isinstance(e, http.client.HTTPException) and not isinstance(e, OSError):  # a garbled answer
                    raise ConnectionError(f"{self.base_uri}: {e!r}") from e
                raise
        return base.Response(response.status, response.headers,
                             content if raw else content.decode("utf-8", errors="replace"))


def _readable(sock: Any) -> bool:
    """Whether an idle connection's socket has something to read: the peer closed it."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class Consul(base.Consul):
    """py-consul's client on a `KeepAliveHTTPClient` (the arguments are `consul.Consul`'s)."""

    def __init__(self, *args: Any, connections_timeout: float | None = DEFAULT_TIMEOUT, **kwargs: Any) -> None:
        self.connections_timeout = connections_timeout
        super().__init__(*args, **kwargs)

    def http_connect(self, host: str, port: int, scheme: str, verify: bool | str = True,
                     cert: Any = None) -> KeepAliveHTTPClient:
        return KeepAliveHTTPClient(host, port, scheme, verify, cert, connections_timeout=self.connections_timeout)
