"""StaticRegistry: the in-memory Registry other parts' tests use."""

from __future__ import annotations

from devtools.static_registry import StaticRegistry
from discovery import Registry, ServiceInstance, Watch


def _inst(i: str, port: int = 5000, service: str = "peer-server") -> ServiceInstance:
    return ServiceInstance(service, i, "127.0.0.1", port, {"node": i})


def test_service_instance_is_hashable_and_has_target() -> None:
    a = ServiceInstance("peer-server", "n1", "127.0.0.1", 5001, {"k": "v"})
    b = ServiceInstance("peer-server", "n1", "127.0.0.1", 5001, {"k": "v"})
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a.target == "127.0.0.1:5001"
    assert a.meta["k"] == "v" and dict(a.meta) == {"k": "v"}
    assert ServiceInstance("s", "x", "::1", 7).target == "[::1]:7"
    assert dict(ServiceInstance("s", "x", "h", 1).meta) == {}


def test_satisfies_protocols() -> None:
    reg = StaticRegistry()
    assert isinstance(reg, Registry)
    assert isinstance(reg.watch("x", lambda _: None), Watch)


def test_healthy_filters_by_service_and_is_sorted() -> None:
    reg = StaticRegistry([_inst("n2"), _inst("n1"), _inst("s1", service="sequencer")])
    assert [i.instance_id for i in reg.healthy("peer-server")] == ["n1", "n2"]
    assert [i.instance_id for i in reg.healthy("sequencer")] == ["s1"]
    assert reg.healthy("nope") == []


def test_watch_called_at_start_and_on_changes() -> None:
    reg = StaticRegistry([_inst("n1")])
    seen: list[list[str]] = []
    w = reg.watch("peer-server", lambda insts: seen.append([i.instance_id for i in insts]))
    assert seen == [["n1"]]
    assert [i.instance_id for i in w.current()] == ["n1"]

    reg.register("peer-server", "n2", "127.0.0.1", 5002, {"a": "b"})
    assert seen[-1] == ["n1", "n2"]
    assert w.current()[1].meta == {"a": "b"}

    reg.register("sequencer", "s1", "127.0.0.1", 6000)  # other service: no call
    assert len(seen) == 2

    reg.deregister("n1")
    assert seen[-1] == ["n2"]
    reg.deregister("n1")  # idempotent, no extra call
    assert len(seen) == 3

    reg.set_healthy("n2", False)
    assert seen[-1] == [] and w.current() == []
    reg.set_healthy("n2", True)
    assert seen[-1] == ["n2"]

    w.stop()
    reg.register("peer-server", "n3", "127.0.0.1", 5003)
    assert seen[-1] == ["n2"]


def test_register_replaces_same_instance_id() -> None:
    reg = StaticRegistry([_inst("n1", port=1)])
    reg.register("peer-server", "n1", "10.0.0.1", 2)
    [only] = reg.healthy("peer-server")
    assert only.target == "10.0.0.1:2"


def test_callback_errors_do_not_break_registry() -> None:
    reg = StaticRegistry()

    def boom(_: list[ServiceInstance]) -> None:
        raise ValueError("boom")

    reg.watch("peer-server", boom)
    reg.register("peer-server", "n1", "127.0.0.1", 1)
    assert len(reg.healthy("peer-server")) == 1


def test_close_stops_watches() -> None:
    reg = StaticRegistry()
    seen: list[int] = []
    reg.watch("peer-server", lambda insts: seen.append(len(insts)))
    reg.close()
    reg.register("peer-server", "n1", "127.0.0.1", 1)
    assert seen == [0]
