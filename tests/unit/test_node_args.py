"""The node's command line: the gate's options and their bounds."""

from __future__ import annotations

import pytest

from exchange.node.main import parse_args
from exchange.node.sequencing import DEFAULT_GATE_GATHER_S


def test_gate_gathering_defaults_to_its_constant_and_zero_turns_it_off() -> None:
    assert parse_args([]).gate_gather_ms == DEFAULT_GATE_GATHER_S * 1000
    assert parse_args(["--gate-gather-ms", "0"]).gate_gather_ms == 0


@pytest.mark.parametrize("value", ["-1", "1001"])
def test_a_gathering_time_out_of_bounds_is_refused_with_a_message(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--gate-gather-ms", value])
    assert exit_.value.code == 2
    assert "--gate-gather-ms must be 0 to 1000" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--rate-limit", "0"], ["--rate-limit", "-2"], ["--rate-limit", "inf"],
                                  ["--rate-limit", "nan"], ["--rate-burst", "0.5"]])
def test_a_rate_limit_that_could_not_work_is_refused_at_start(argv: list[str], capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    """A zero rate divided the retry hint by zero (INTERNAL for every account over its burst); a burst below one
    order refused every order for ever."""
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert "--rate-limit must be above 0" in capsys.readouterr().err
