"""The node's SequencerLink picks the Sequencer to talk to: the one of the embedded log, or in HA mode the leader
named by the lock in Consul KV, if it passes; a change of leader cuts the gate requests in flight short."""

from __future__ import annotations

import asyncio

import pytest

from devtools.static_registry import StaticRegistry
from discovery import ServiceInstance
from exchange.cluster_common import SEQUENCER_LEADER_KEY, LeaderRecord
from exchange.errors import Unavailable
from exchange.node.sequencer_link import GateStream, SequencerLink
from exchange.shared.wire import SEQUENCER_SERVICE
from tests.unit.fakes import DictKeyValue, run_scenario


def replica(name: str, port: int, log: str = "consul") -> ServiceInstance:
    return ServiceInstance(SEQUENCER_SERVICE, name, "127.0.0.1", port, {"role": "sequencer", "log": log})


def test_the_embedded_sequencer_is_used_as_it_is() -> None:
    async def scenario() -> None:
        link = SequencerLink(b"s", StaticRegistry([replica("sequencer-1", 1, log="sqlite")]), leader=DictKeyValue())
        assert link.target == "127.0.0.1:1"
        await link.close()

    run_scenario(scenario())


def test_in_ha_mode_the_gate_goes_to_the_passing_leader_only_and_reads_to_any_replica() -> None:
    async def scenario() -> None:
        registry, kv = StaticRegistry([replica("sequencer-1", 1), replica("sequencer-2", 2)]), DictKeyValue()
        link = SequencerLink(b"s", registry, leader=kv)
        assert link.target is None, "no lock holder: no leader"
        assert link._pick(for_gate=False) == "127.0.0.1:1", "reads go to any replica meanwhile"
        with pytest.raises(Unavailable, match="no Sequencer replica leads now"):
            link.stub()
        kv.put(SEQUENCER_LEADER_KEY, LeaderRecord("sequencer-2", "127.0.0.1:2").encode())
        assert link.target == "127.0.0.1:2" and link._pick(for_gate=False) == "127.0.0.1:2"
        registry.set_healthy("sequencer-2", False)  # the leader crashed: its check fails before the lock goes
        assert link.target is None
        kv.put(SEQUENCER_LEADER_KEY, b"")  # released
        assert link.target is None
        await link.close()

    run_scenario(scenario())


def test_a_change_of_leader_interrupts_the_gate_streams_to_the_old_one() -> None:
    async def scenario() -> None:
        registry, kv = StaticRegistry([replica("sequencer-1", 1), replica("sequencer-2", 2)]), DictKeyValue()
        kv.put(SEQUENCER_LEADER_KEY, LeaderRecord("sequencer-1", "127.0.0.1:1").encode())
        link = SequencerLink(b"s", registry, leader=kv)
        interrupted: list[str] = []

        class RecordingGate(GateStream):
            def interrupt(self, why: str) -> None:
                interrupted.append(why)
                super().interrupt(why)

        link._gates["M"] = RecordingGate("M")
        link.stub()  # the gate talks to sequencer-1
        kv.put(SEQUENCER_LEADER_KEY, LeaderRecord("sequencer-2", "127.0.0.1:2").encode())
        await asyncio.sleep(0.05)  # the watch's callback reaches the loop
        assert interrupted == ["the Sequencer leader changed from 127.0.0.1:1 to 127.0.0.1:2"]
        kv.put(SEQUENCER_LEADER_KEY, LeaderRecord("sequencer-2", "127.0.0.1:2").encode())
        await asyncio.sleep(0.05)
        assert len(interrupted) == 1, "the same leader again interrupts nothing"
        await link.close()

    run_scenario(scenario())
