"""A node's start (`exchange.node.main.serve`) with its Consul, Sequencer and peers stood in for (no network
beyond the node's own loopback server)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from exchange import engine as eng
from exchange.node import main
from exchange.runtime import GrpcServer
from exchange.v1 import types_pb2
from tests.unit.fakes import InMemorySequencer, RecordingPeers, signed_entry

M = "BTC-USD"


def buy(price: int) -> types_pb2.Command:
    return types_pb2.Command(market=M, new_order=types_pb2.NewOrderCommand(
        side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=1, price=price))


def test_a_node_whose_initial_catch_up_fails_never_serves_and_exits_with_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sequencer = InMemorySequencer()
    for seq in range(1, 11):
        if seq == 3:  # a command kind this node does not know (field 99), as from a newer version
            sequencer.log[M].append(signed_entry(M, 3, b"\x9a\x06\x00"))
        else:
            sequencer.append(buy(10))
    registered: list[str] = []
    servers: list[GrpcServer] = []
    statuses: list[str] = []

    class Registry:
        def __init__(self, *args: object, **kwargs: object) -> None: ...
        def register(self, service: str, node_id: str, *args: object) -> None: registered.append(node_id)
        def deregister(self, node_id: str) -> None: ...
        def close(self) -> None: ...

    class Server(GrpcServer):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            servers.append(self)

        async def set_serving(self, serving: bool) -> None:
            statuses.append("SERVING" if serving else "NOT_SERVING")
            await super().set_serving(serving)

    async def no_signal() -> str:
        await asyncio.Event().wait()
        return "SIGTERM"

    for name, value in [("ConsulRegistry", Registry), ("ConsulKV", lambda *a, **k: None),
                        ("agree_on_markets", lambda kv, secret, wanted: [eng.MarketConfig(M)]),
                        ("SequencerLink", lambda *a, **k: sequencer), ("PeerSet", lambda *a, **k: RecordingPeers()),
                        ("GrpcServer", Server), ("wait_for_signal", no_signal)]:
        monkeypatch.setattr(main, name, value)
    args = main.parse_args(["--listen", "127.0.0.1:0", "--node-id", "node-1", "--insecure-no-auth",
                            "--data-dir", str(tmp_path)])

    async def scenario() -> BaseException | None:
        try:
            await asyncio.wait_for(main.serve(args), 20)
        except TimeoutError:
            raise AssertionError(f"the node went on after its catch-up failed: health {statuses}") from None
        except Exception as error:  # noqa: BLE001 - what the process exits with
            return error
        return None

    error = asyncio.run(scenario())
    assert isinstance(error, ValueError) and "has no kind" in str(error), f"not the catch-up's error: {error!r}"
    assert registered == [] and "SERVING" not in statuses, (registered, statuses)
    assert not list(tmp_path.glob("*snap*")), "a snapshot of a replica that is not the log's was saved"
