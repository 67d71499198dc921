"""The one error hierarchy: statuses to exceptions and back, and which errors are retriable."""

from __future__ import annotations

import grpc
import pytest

from exchange import errors
from exchange.errors import (
    Aborted,
    DeadlineExceeded,
    ExchangeError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    error_from_status,
    status_of,
)


def test_the_servers_table_is_what_it_was() -> None:
    assert {cls.__name__: code.name for cls, code in errors.STATUS_BY_ERROR.items()
            if cls.__name__ in ("InvalidArgument", "NotFound", "Aborted", "Unavailable", "PermissionDenied",
                                "FailedPrecondition", "OutOfRange")} == {
        "InvalidArgument": "INVALID_ARGUMENT", "NotFound": "NOT_FOUND", "Aborted": "ABORTED",
        "Unavailable": "UNAVAILABLE", "PermissionDenied": "PERMISSION_DENIED",
        "FailedPrecondition": "FAILED_PRECONDITION", "OutOfRange": "OUT_OF_RANGE"}
    assert status_of(ExchangeError("bare")) == grpc.StatusCode.INTERNAL


@pytest.mark.parametrize("cls", errors.ERROR_CLASSES)
def test_every_class_round_trips_through_its_status_code_and_name(cls: type[ExchangeError]) -> None:
    for code in (cls.code, cls.code.name):
        error = error_from_status(code, "what went wrong")
        assert type(error) is cls and error.code == cls.code and error.message == str(error) == "what went wrong"
        assert status_of(error) == cls.code


def test_only_what_may_succeed_when_sent_again_is_retriable() -> None:
    assert {cls for cls in errors.ERROR_CLASSES if cls.retriable} == {Unavailable, DeadlineExceeded, Aborted}
    assert not InvalidArgument.retriable and not NotFound.retriable and not FailedPrecondition.retriable


def test_a_code_without_a_class_is_a_bare_exchange_error_carrying_it() -> None:
    error = error_from_status(grpc.StatusCode.DATA_LOSS, "lost")
    assert type(error) is ExchangeError and error.code == grpc.StatusCode.DATA_LOSS and not error.retriable
    assert error_from_status("NO_SUCH_CODE", "x").code == grpc.StatusCode.UNKNOWN
    assert isinstance(error_from_status("NOT_FOUND"), ExchangeError)  # one hierarchy: catch the base for all
