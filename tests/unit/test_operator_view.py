"""What operators see: the down alerts, the leader-change count, cluster status (found by a review, 2026-12-03)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from discovery.consul import ConsulRegistry, _Registration
from sequencer.gate import SequencingGate
from sequencer.ha.election import Election

ROOT = Path(__file__).resolve().parents[2]


def duration_s(text: str) -> float:
    """A Go/Prometheus duration such as 30s, 1m, 24h, in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(number) * units[unit] for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))


class RecordingAgent:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.agent = self
        self.service = self

    def register(self, name: str, **fields: Any) -> None:
        self.calls.append({"name": name, **fields})


def test_a_crashed_node_stays_a_scrape_target_long_after_its_down_alert_fires() -> None:
    """ExchangeNodeDown and SequencerReplicaDown are `up == 0` for a while on targets found through Consul. A
    registration Consul reaps a minute after its check fails takes the target away: the alert resolved by itself
    (or never fired) while the process was still down."""
    registry = ConsulRegistry("127.0.0.1", 1)  # as exchange/node/main.py and sequencer/main.py build it
    agent = registry._client = RecordingAgent()  # type: ignore[assignment]
    registry._put(_Registration("peer-server", "node-1", "127.0.0.1", 50051, {"metrics_port": "19101"}))
    (call,) = agent.calls
    reap_after = duration_s(call["check"]["DeregisterCriticalServiceAfter"])
    alerts = (ROOT / "deploy/prometheus/alerts.yml").read_text()
    prometheus = (ROOT / "deploy/prometheus/prometheus.yml").read_text()
    for alert in ("ExchangeNodeDown", "SequencerReplicaDown"):
        rule = alerts.split(f"- alert: {alert}", 1)[1].split("- alert:", 1)[0]
        to_fire = 0.0
        for name, text in (("for", rule), ("scrape_interval", prometheus), ("evaluation_interval", prometheus)):
            found = re.search(rf"{name}:\s*(\S+)", text)
            assert found is not None, (alert, name)
            to_fire += duration_s(found.group(1))
        assert reap_after >= 3600 > 10 * to_fire, (alert, reap_after, to_fire)


def test_a_leader_that_pauses_and_resumes_is_not_a_leader_change() -> None:
    """A leader whose session the store has not confirmed for a while pauses; when its fenced probe commits it
    numbers again. Counted as a change of leader, four such hiccups fired SequencerLeaderFlapping."""
    gate = SequencingGate.__new__(SequencingGate)  # only its role callbacks are used
    gate.term, gate.leading, gate.markets, gate.standby_reason = 0, False, {}, ""

    class Store:
        def transact(self, ops: list[object]) -> dict[str, int]:
            return {}  # the fenced probe commits: this replica still holds the lock

    election = Election.__new__(Election)
    election.session, election._gate, election.store = "session-1", gate, Store()  # type: ignore[assignment]
    election._paused, election._confirmed = False, 0.0
    election._post = lambda callback, *args: callback(*args)  # type: ignore[method-assign]

    def changes() -> float:
        return REGISTRY.get_sample_value("exchange_sequencer_leader_changes_total") or 0.0

    before = changes()
    gate.lead()  # the takeover: one change of leader
    assert changes() == before + 1
    for _ in range(4):  # the election loop's lease branch: pause, then a probe that commits
        election._paused = True
        gate.pause("the store has not confirmed this replica's session for 5.1 s")
        election._probe("the store has not confirmed this replica's session for 5.1 s")
        assert gate.leading
    assert changes() == before + 1


def test_cluster_status_of_given_addresses_asks_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import exchange.cli
    from devtools import demo

    asked: list[list[str]] = []

    def fake_status(addresses: list[str], client: object = None) -> int:
        asked.append(addresses)
        return 0

    monkeypatch.setattr(exchange.cli, "print_cluster_status", fake_status)
    assert demo.cluster_status(["127.0.0.1:1"]) == 0
    assert asked == [["127.0.0.1:1"]]
