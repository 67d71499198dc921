"""The client_order_id window (exchange/dedup.py) against a naive model: the keys of the last `size` entries."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.dedup import DedupWindow, dedup_key
from exchange.v1 import types_pb2


def test_the_dedup_key_is_the_client_order_id_and_none_without_one() -> None:
    assert dedup_key(types_pb2.Command(client_order_id="k")) == "k"
    assert dedup_key(types_pb2.Command()) is None


def test_a_key_is_found_within_the_window_forgotten_after_it_and_its_memory_goes() -> None:
    window = DedupWindow(3)
    window.note(1, "k")
    window.note(2, None)
    window.forget_before(2)
    assert window.get("k") == 1
    window.note(3, None)
    window.note(4, "j")
    window.forget_before(4)
    assert window.get("k") is None and window.get("j") == 4 and len(window) == 1


def test_forgetting_numbers_never_stored_gives_a_reused_key_its_earlier_number_back() -> None:
    window = DedupWindow(2)
    window.note(1, "k")
    window.note(2, None)
    window.note(3, None)  # "k" at 1 is out of the window of 3, not yet forgotten (durable is 1)
    window.forget_before(1)
    window.note(4, "k")  # placed again
    assert window.get("k") == 4
    window.truncate(1)  # 2..4 were never stored: the window ends at 1 again, where "k" is 1
    assert window.get("k") == 1


Operation = tuple[str, int]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6), st.lists(st.tuples(st.sampled_from(["note", "durable", "truncate"]), st.integers(0, 5)),
                                   max_size=80))
def test_the_window_answers_like_the_naive_model(size: int, operations: list[Operation]) -> None:
    window = DedupWindow(size)
    log: list[tuple[int, str | None]] = []  # every number assigned and not truncated, with its key
    durable = 0
    for kind, value in operations:
        last = log[-1][0] if log else 0
        if kind == "note":
            key = None if value == 0 else f"k{value}"
            window.note(last + 1, key)
            log.append((last + 1, key))
        elif kind == "durable":
            durable = min(last, durable + value)
            window.forget_before(durable)
        else:
            keep = max(durable, last - value)
            window.truncate(keep)
            log = [(seq, key) for seq, key in log if seq <= keep]
        last = log[-1][0] if log else 0
        for number in range(1, 6):
            key = f"k{number}"
            latest = max((seq for seq, k in log if k == key), default=None)
            expected = latest if latest is not None and latest > last - size else None
            assert window.get(key) == expected, (key, log, durable)
