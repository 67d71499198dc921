"""The cluster token's check (exchange.runtime.RequireClusterToken) in-process: the interceptor alone, before any
handler; the servers put it in front of every cluster-internal method (exchange.shared.wire.CLUSTER_ONLY_METHODS)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import grpc
import pytest

from exchange.cluster_common import peer_token, token_metadata
from exchange.runtime import RequireClusterToken
from exchange.shared.wire import CLUSTER_ONLY_METHODS, TOKEN_HEADER
from tests.unit.fakes import SECRET, Aborted, FakeContext, run_scenario

BROADCAST = "/exchange.v1.ExchangeNode/BroadcastOrder"  # unary
SEQUENCE_STREAM = "/exchange.v1.Sequencer/SequenceStream"  # bidi
PUBLIC = ("/exchange.v1.Sequencer/GetSequence", "/exchange.v1.ExchangeNode/CreateOrder")
Metadata = tuple[tuple[str, Any], ...]


class Details(NamedTuple):
    """What grpc hands an interceptor: grpc.HandlerCallDetails."""

    method: str
    invocation_metadata: Metadata


class Service:
    """The handlers behind the interceptor; `ran` records which of them ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def unary(self, request: object, context: object) -> str:
        self.ran.append("unary")
        return "answered"

    async def stream(self, requests: object, context: object) -> AsyncIterator[str]:
        self.ran.append("stream")
        yield "answered"

    async def continuation(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        if details.method == SEQUENCE_STREAM:
            return grpc.stream_stream_rpc_method_handler(self.stream)
        return grpc.unary_unary_rpc_method_handler(self.unary)


async def call(service: Service, method: str, metadata: Metadata) -> str:
    """Calls `method` of `service` through the interceptor with `metadata`: what the caller gets."""
    check = RequireClusterToken(peer_token(SECRET), CLUSTER_ONLY_METHODS, TOKEN_HEADER)
    handler = await check.intercept_service(service.continuation, Details(method, metadata))
    assert handler is not None
    if handler.response_streaming:
        answers = [answer async for answer in handler.stream_stream(iter(()), FakeContext(metadata))]
        return answers[0]
    return await handler.unary_unary(None, FakeContext(metadata))


@pytest.mark.parametrize("method", [BROADCAST, SEQUENCE_STREAM])
def test_the_cluster_token_opens_a_cluster_only_method(method: str) -> None:
    service = Service()
    assert run_scenario(call(service, method, (("user-agent", "x"), *token_metadata(SECRET)))) == "answered"
    assert len(service.ran) == 1


@pytest.mark.parametrize("method", [BROADCAST, SEQUENCE_STREAM])
@pytest.mark.parametrize("metadata", [
    pytest.param((), id="missing"),
    pytest.param(token_metadata(b"another cluster's secret"), id="another-clusters-token"),
    pytest.param(((TOKEN_HEADER, "x"),), id="wrong-value"),
    pytest.param(((TOKEN_HEADER, ""),), id="empty"),
    pytest.param(((TOKEN_HEADER, peer_token(SECRET)[:-1]),), id="a-prefix-of-it"),
    pytest.param((("authorization", peer_token(SECRET)),), id="in-another-header"),
])
def test_a_missing_or_wrong_token_is_permission_denied_before_any_handler_runs(
    method: str, metadata: Metadata
) -> None:
    service = Service()

    async def scenario() -> None:
        with pytest.raises(Aborted) as refused:
            await call(service, method, metadata)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert TOKEN_HEADER in refused.value.details, "the caller is told which metadata is missing or wrong"

    run_scenario(scenario())
    assert not service.ran, "a handler ran for a caller without the token"


@pytest.mark.parametrize("method", PUBLIC)
def test_a_public_method_needs_no_token(method: str) -> None:
    service = Service()
    assert run_scenario(call(service, method, ())) == "answered" and service.ran == ["unary"]
