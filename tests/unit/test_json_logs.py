"""`--log-format json` (exchange/runtime.py): one JSON object per line, with what a record is about."""

from __future__ import annotations

import io
import json
import logging

from exchange.runtime import JsonLogFormatter, log_fields


def test_each_record_is_one_json_object_with_its_context() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    formatter = JsonLogFormatter("node")
    handler.setFormatter(formatter)
    log = logging.getLogger("test.json_logs")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        log.warning("plain %s", "words")
        formatter.node = "node-7"
        log.info("BTC-USD: caught up to %d", 12, extra=log_fields("BTC-USD", 12))
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            log.exception("order %d failed", 99, extra=log_fields("ETH-USD", order_id=99))
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # a traceback stays inside its line
    first, second, third = (json.loads(line) for line in lines)
    assert first["level"] == "WARNING" and first["process"] == "node" and "node" not in first
    assert first["message"] == "plain words" and first["logger"] == "test.json_logs"
    assert first["time"].endswith("+00:00")
    assert {k: second[k] for k in ("node", "market", "seq", "message")} == {
        "node": "node-7", "market": "BTC-USD", "seq": 12, "message": "BTC-USD: caught up to 12"}
    assert (third["market"], third["order_id"], "seq" in third) == ("ETH-USD", 99, False)
    assert "ValueError: bad\nthing" in third["error"]
