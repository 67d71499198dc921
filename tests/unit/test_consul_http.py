"""py-consul's keep-alive transport (discovery.consul_http) against a tiny local HTTP/1.1 server in a thread: a test
of the HTTP transport (one connection reused, reopened when the server closed it, timeouts), not of Consul's API
(that is tests/integration's, on a real agent)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest

from discovery import consul_http


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    seen: list[tuple[int, str, str, str | None, bytes]] = []  # (client port, method, path, token, body)

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.client_address[1], self.command, self.path, self.headers.get("X-Consul-Token"), body))
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        data = b'{"ok": true}'
        self.send_response(404 if self.path.startswith("/missing") else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Consul-Index", "42")
        self.end_headers()
        self.wfile.write(data)
        if self.path.startswith("/hangup"):
            self.close_connection = True  # closes it once idle, without saying so (as an agent may)

    do_GET = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    _Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _client(server: ThreadingHTTPServer, timeout: float = 5.0) -> consul_http.Consul:
    client = consul_http.Consul(host="127.0.0.1", port=server.server_address[1], connections_timeout=timeout)
    client.token = "t0ken"
    return client


def test_calls_share_one_kept_alive_connection_and_answer_as_py_consul_expects(server: ThreadingHTTPServer) -> None:
    client = _client(server)
    first = client.http.get(lambda r: r, "/v1/kv/a", params=[("recurse", "1")], headers=client.prepare_headers())
    second = client.http.put(lambda r: r, "/v1/txn", data='[{"KV": {}}]', headers=client.prepare_headers())
    missing = client.http.get(lambda r: r, "/missing", headers=client.prepare_headers())
    assert (first.code, first.body, first.headers["X-Consul-Index"]) == (200, '{"ok": true}', "42")
    assert (second.code, missing.code) == (200, 404)
    ports = {seen[0] for seen in _Handler.seen}
    assert len(ports) == 1, "each call opened a new connection"
    assert [(m, p, t, b) for _, m, p, t, b in _Handler.seen] == [
        ("GET", "/v1/kv/a?recurse=1", "t0ken", b""), ("PUT", "/v1/txn", "t0ken", b'[{"KV": {}}]'),
        ("GET", "/missing", "t0ken", b"")]


def test_a_connection_the_server_closed_while_idle_is_opened_again(server: ThreadingHTTPServer) -> None:
    client = _client(server)
    assert client.http.get(lambda r: r.code, "/hangup") == 200
    sock = client.http._connection.sock
    deadline = time.monotonic() + 5
    while not consul_http._readable(sock) and time.monotonic() < deadline:  # the server closes its end
        time.sleep(0.01)
    assert client.http.get(lambda r: r.code, "/after") == 200
    assert len({seen[0] for seen in _Handler.seen}) == 2


def test_no_answer_within_the_timeout_raises_and_the_next_call_opens_a_new_connection(
        server: ThreadingHTTPServer) -> None:
    client = _client(server, timeout=0.2)
    with pytest.raises(OSError):
        client.http.get(lambda r: r, "/slow")
    assert client.http.get(lambda r: r.code, "/fast") == 200
    assert len({seen[0] for seen in _Handler.seen}) == 2


def test_a_blocking_query_waits_its_wait_and_jitter_beyond_the_timeout(server: ThreadingHTTPServer) -> None:
    client = _client(server, timeout=0.2)
    # index and wait=1s: 0.2 + 1 + 1/16 s allowed, more than the 1 s the server takes
    assert client.http.get(lambda r: r.code, "/slow", params=[("index", 7), ("wait", "1s")]) == 200
    assert client.http.timeout([("index", 7), ("wait", "1600ms")]) == pytest.approx(0.2 + 1.6 + 0.1)
