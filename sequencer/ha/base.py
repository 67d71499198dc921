"""The state every part of the replicated log shares, and how a part's thread posts to the gate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from discovery import ReplicatedStore
from exchange.cluster_common import LeaderRecord
from sequencer.ha.records import DEFAULT_TAIL_ENTRIES, MarketState, PeerReader, Pending
from sequencer.log import RoleCallbacks, settle_all
from sequencer.store import LogStore

log = logging.getLogger(__name__)


class LogState:
    """What the standby, the election and the commit threads share (`sequencer.replicated`)."""

    def __init__(
        self, store: ReplicatedStore, archive: LogStore, markets: list[str], identity: LeaderRecord,
        checks: list[str], *, secret: bytes, tail_entries: int = DEFAULT_TAIL_ENTRIES, session_ttl_s: float = 10.0,
        lock_delay_s: float = 1.0, read_peer: PeerReader | None = None,
    ) -> None:
        """`checks`: the health checks the session is tied to (the agent's node and this replica's own gRPC
        check: a crashed replica loses the lock within seconds). `secret`: the cluster secret, to check the
        entries read from the store. `read_peer`: copies entries this replica lacks and the store no longer
        keeps from another replica's archive."""
        if tail_entries < 1:
            raise ValueError("the retained tail must hold at least one entry")
        self.store = store
        self.secret = secret
        self.archive = archive
        self.identity = identity
        self.checks = checks
        self.tail_entries = tail_entries
        self.session_ttl_s = session_ttl_s
        self.lock_delay_s = lock_delay_s
        self.renew_s = session_ttl_s / 4
        self.session_name = f"sequencer {identity.id}"
        # A leader that has not heard from the store for this long (no renewal, no commit) stops numbering (it
        # could not commit anyway, and another replica may lead by now) until a fenced probe decides.
        self.lease_s = session_ttl_s / 2
        self._confirmed = 0.0  # when the store last confirmed this replica's session (monotonic)
        self._paused = False  # the lease ran out: the gate numbers nothing until a probe commits
        self.read_peer = read_peer
        self._markets = {name: MarketState(name, archive.position(name)) for name in markets}
        self.leading = False
        self.session: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gate: RoleCallbacks | None = None
        self._state = threading.Lock()  # the follower's rounds and a takeover exclude each other
        self._stop = threading.Event()
        self._standby = threading.Event()  # set while not leading: the follower follows
        self._standby.set()
        self._step_down: str | None = None  # the reason, once a step-down is asked for
        self._suspicion: str | None = None  # why the gate doubts this replica leads (a fenced probe decides)
        self._election_wakeup = threading.Event()
        self._threads: list[threading.Thread] = []

    def _thread(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """A thread of this log; one that crashes is a bug the gate must not outlive (RoleCallbacks.fail)."""

        def run() -> None:
            try:
                target()
            except Exception as error:  # noqa: BLE001 - reported, then the process stops
                if self._stop.is_set():
                    return
                log.exception("thread %s of the replicated log crashed", name)
                assert self._gate is not None
                self._post(self._gate.fail, error)

        return threading.Thread(target=run, name=name, daemon=True)

    # -- posting to the gate (on the event loop, in order) --------------------------------------

    def _post(self, callback: Callable[..., object], *args: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is stopping
            self._loop.call_soon_threadsafe(callback, *args)

    def _settle(self, pendings: list[Pending], error: BaseException | None) -> None:
        if pendings:
            self._post(settle_all, [p.done for p in pendings], error)
