"""The server interceptors every GrpcServer has, driven with a stand-in continuation (no network)."""

from __future__ import annotations

from typing import NamedTuple

import grpc

from exchange.runtime import RejectMalformedRequests
from tests.unit.fakes import run_scenario


class CallDetails(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


def test_unknown_method_names_are_not_remembered_and_a_served_method_is_looked_up_once() -> None:
    """Any caller can send any number of made-up method names: keeping one per name would grow without end."""
    served = grpc.unary_unary_rpc_method_handler(lambda request, context: request, request_deserializer=bytes)
    looked_up: list[str] = []

    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        looked_up.append(details.method)
        return served if details.method == "/exchange.v1.X/Served" else None

    async def scenario() -> RejectMalformedRequests:
        interceptor = RejectMalformedRequests()
        for number in range(300):
            assert await interceptor.intercept_service(continuation, CallDetails(f"/made.Up/M{number}")) is None
        first = await interceptor.intercept_service(continuation, CallDetails("/exchange.v1.X/Served"))
        again = await interceptor.intercept_service(continuation, CallDetails("/exchange.v1.X/Served"))
        assert first is again and first is not None and first is not served  # wrapped with the safe decoder
        return interceptor

    interceptor = run_scenario(scenario())
    assert looked_up.count("/exchange.v1.X/Served") == 1
    assert list(interceptor._wrapped) == ["/exchange.v1.X/Served"]
