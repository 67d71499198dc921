"""Where a node is in its life, consulted by every part of its gRPC service."""

from __future__ import annotations

from dataclasses import dataclass

from exchange.errors import Unavailable

SYNCING, SERVING, STOPPING = "SYNCING", "SERVING", "STOPPING"


@dataclass
class NodeState:
    """SYNCING while catching up at start, SERVING when current, STOPPING on shutdown."""

    node_id: str
    state: str = SYNCING

    def require_serving(self) -> None:
        """UNAVAILABLE unless the node serves: a syncing node must not answer from a stale book."""
        if self.state != SERVING:
            raise Unavailable(f"node {self.node_id} is {self.state}; retry shortly or use another node")
