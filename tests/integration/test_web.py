"""The web console (exchange-web) in a real browser: Debian's chromium, driven by selenium, against a live 3-node
cluster and a real exchange-web process. Without chromium and chromedriver (`make browser`) these tests skip,
except in CI (CI=true), where they fail.

Screenshots of each view are saved in the module's artifacts directory (under pytest's tmp path; the path is
printed). Every wait polls with a deadline (WebDriverWait), never a fixed sleep.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver import Chrome
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from devtools.local_cluster import Cluster
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc

pytestmark = pytest.mark.integration

# Required on these machines (README "Web console"); a fresh profile per browser.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1100"]
DEADLINE = 30.0
XSS = "<img src=x onerror=alert(1)>"


def chromium_paths() -> tuple[str, str]:
    """Chromium and its driver; skips without them, except in CI (CI=true), where that fails."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    why = "the web console's browser tests need chromium and chromedriver: run `make browser` " \
          "(apt-get install chromium chromium-driver)"
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("web-artifacts")
    print(f"web console screenshots: {directory}")
    return directory


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chrome]:
    binary, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path_factory.mktemp('chromium'))}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def web(module_cluster: Cluster, browser: Chrome) -> str:
    url = module_cluster.start_web()
    browser.get(url)
    return url


def wait(browser: Chrome, condition: Callable[[Chrome], Any], what: str, timeout: float = DEADLINE) -> Any:
    def safely(driver: Chrome) -> Any:
        try:
            return condition(driver)
        except StaleElementReferenceException:  # the page redrew it meanwhile
            return False

    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(safely, f"waiting for {what}")


def texts(browser: Chrome | WebElement, selector: str) -> list[str]:
    return [element.text for element in browser.find_elements(By.CSS_SELECTOR, selector)]


def node_health(browser: Chrome) -> dict[str | None, str]:
    return {tile.get_attribute("data-node-id"): tile.find_element(By.CSS_SELECTOR, ".health").text.lower()
            for tile in browser.find_elements(By.CSS_SELECTOR, "#nodes .node")}


def page_errors(browser: Chrome) -> list[dict[str, Any]]:
    """The console's errors since the last call (the log is read once)."""
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def script_errors(browser: Chrome) -> list[dict[str, Any]]:
    """Script errors only (a request answered 401 or a refused connection is logged by the browser too)."""
    return [entry for entry in page_errors(browser) if entry.get("source") != "network"]


def stub(cluster: Cluster, index: int, account: str) -> exchange_pb2_grpc.ExchangeNodeStub:
    return exchange_pb2_grpc.ExchangeNodeStub(cluster.channel(cluster.node_address(index), account))


def no_alert(browser: Chrome) -> bool:
    try:
        browser.switch_to.alert  # noqa: B018 - raises when there is none
    except NoAlertPresentException:
        return True
    return False


def test_the_page_loads_without_a_console_error_and_shows_every_node_and_the_sequencer(
    web: str, browser: Chrome, artifacts: Path,
) -> None:
    wait(browser, lambda b: node_health(b) == {"node-1": "ok", "node-2": "ok", "node-3": "ok"}, "three nodes ok")
    wait(browser, lambda b: [t.lower() for t in texts(b, "#sequencers .role")] == ["leader"], "the Sequencer leading")
    wait(browser, lambda b: b.find_element(By.ID, "conn").text == "live", "the stream to be live")
    assert texts(browser, "#market-tabs button") == ["BTC-USD", "ETH-USD"]
    browser.save_screenshot(str(artifacts / "cluster.png"))
    assert page_errors(browser) == []


def test_an_order_placed_through_grpc_appears_in_the_ladder_and_a_trade_on_the_tape(
    web: str, browser: Chrome, module_cluster: Cluster, artifacts: Path,
) -> None:
    stub(module_cluster, 0, "alice").CreateOrder(pb.CreateOrderRequest(market="BTC-USD", size=-7, limit_price=1234,
                                                                       client_order_id="web-ask"), timeout=10)
    stub(module_cluster, 1, "bob").CreateOrder(pb.CreateOrderRequest(market="BTC-USD", size=5, limit_price=1230,
                                                                     client_order_id="web-bid"), timeout=10)
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#ladder-asks tr.ask[data-price='1234']")
         and b.find_elements(By.CSS_SELECTOR, "#ladder-bids tr.bid[data-price='1230']"), "the ask and the bid")
    assert texts(browser, "#ladder-bids tr.bid[data-price='1230'] td") == ["1", "5", "1230"]
    assert browser.find_elements(By.CSS_SELECTOR, "#depth path.ask-area")
    assert browser.find_elements(By.CSS_SELECTOR, "#depth path.bid-area")
    answer = stub(module_cluster, 1, "bob").CreateOrder(
        pb.CreateOrderRequest(market="BTC-USD", size=3, limit_price=1234, client_order_id="web-take"), timeout=10)
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, f"#tape-rows tr[data-seq='{answer.seq}']"),
         "the trade on the tape")
    time_utc, *row = texts(browser, f"#tape-rows tr[data-seq='{answer.seq}'] td")
    assert row == [str(answer.seq), "BUY", "3", "1234"] and re.fullmatch(r"\d\d:\d\d:\d\d", time_utc)
    wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, "#ladder-asks tr.ask[data-price='1234'] td:nth-child(2)")
         .text == "4", "the ask to shrink to 4")
    wait(browser, lambda b: ticker(b, "last") == "1234" and last_candle(b).get("close") == "1234",
         "the ticker and the candle at the trade's price")
    # a second trade, lower: the ticker and the candle move with it
    stub(module_cluster, 0, "alice").CreateOrder(pb.CreateOrderRequest(market="BTC-USD", size=-2, limit_price=1230,
                                                                       client_order_id="web-hit"), timeout=10)
    wait(browser, lambda b: ticker(b, "last") == "1230" and last_candle(b).get("close") == "1230",
         "the ticker and the candle to move to the new trade")
    assert last_candle(browser)["low"] == "1230" and ticker(browser, "trades") == "2"
    browser.save_screenshot(str(artifacts / "market.png"))
    assert script_errors(browser) == []


def ticker(browser: Chrome, item: str) -> str:
    found = browser.find_elements(By.CSS_SELECTOR, f"#ticker-{item} b")
    return found[0].text if found else ""


def last_candle(browser: Chrome) -> dict[str, str]:
    candles = browser.find_elements(By.CSS_SELECTOR, "#candles g.candle")
    if not candles:
        return {}
    return {name: candles[-1].get_attribute(f"data-{name}") or "" for name in ("open", "high", "low", "close")}


def place_from_ticket(browser: Chrome, side: str, size: int, price: int, client_order_id: str = "") -> None:
    Select(browser.find_element(By.ID, "o-side")).select_by_visible_text(side)
    for field, value in (("o-size", size), ("o-price", price), ("o-coid", client_order_id)):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(str(value))
    browser.find_element(By.ID, "o-place").click()


def fills(browser: Chrome) -> list[list[str]]:
    return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            for row in browser.find_elements(By.CSS_SELECTOR, "#fills tr")]


def use_key(browser: Chrome, key: str) -> None:
    field = browser.find_element(By.ID, "key")
    field.clear()
    field.send_keys(key)
    browser.find_element(By.ID, "key-use").click()


def test_the_trade_ticket_places_amends_and_cancels_with_a_key_shows_text_as_text_and_a_wrong_key_is_refused(
    web: str, browser: Chrome, module_cluster: Cluster, artifacts: Path,
) -> None:
    use_key(browser, module_cluster.api_keys["alice"])
    place_from_ticket(browser, "BUY", 3, 900, XSS)
    wait(browser, lambda b: XSS in texts(b, "#orders td.coid"), "the order among alice's open orders, as text")
    wait(browser, lambda b: "RESTING" in b.find_element(By.ID, "result").text, "the order's answer")
    assert not browser.find_elements(By.CSS_SELECTOR, "#orders img, #result img")  # shown, never parsed
    assert no_alert(browser)
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#ladder-bids tr.bid[data-price='900']"),
         "the order in the ladder")
    browser.save_screenshot(str(artifacts / "trade.png"))
    order_id = wait(browser, lambda b: next((row.get_attribute("data-order-id")  # the table redraws every 3 s
                                             for row in b.find_elements(By.CSS_SELECTOR, "#orders tr")
                                             if texts(row, "td.coid") == [XSS]), None), "alice's order id")
    for field, value in (("a-id", order_id), ("a-size", 2), ("a-price", 901)):
        browser.find_element(By.ID, field).send_keys(str(value))
    browser.find_element(By.ID, "a-submit").click()
    wait(browser, lambda b: texts(b, f"#orders tr[data-order-id='{order_id}'] td")[2:4] == ["901", "2"],
         "the amended order: 2 lots at 901")
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#ladder-bids tr.bid[data-price='901']"),
         "the amended order in the ladder")
    browser.find_element(By.CSS_SELECTOR, f"#orders tr[data-order-id='{order_id}'] button.cancel").click()
    wait(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, f"#orders tr[data-order-id='{order_id}']"),
         "the cancelled order to leave the open orders")
    wait(browser, lambda b: f"order {order_id} cancelled (2 lots)" in b.find_element(By.ID, "result").text,
         "the cancel's answer")
    wait(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, "#ladder-bids tr.bid[data-price='901']"),
         "the cancelled order to leave the ladder")
    place_from_ticket(browser, "SELL", 1, 1230)  # takes from bob's bid: a fill of alice's
    wait(browser, lambda b: any(row[3:] == ["1", "1230", "taker"] for row in fills(b)), "alice's fill")
    wait(browser, lambda b: "FILLED" in b.find_element(By.ID, "result").text, "the taker's answer")
    assert script_errors(browser) == []

    use_key(browser, "pxk_not_a_key")
    place_from_ticket(browser, "BUY", 1, 901)
    wait(browser, lambda b: b.find_element(By.ID, "error-code").text == "UNAUTHENTICATED", "UNAUTHENTICATED")
    assert "authorization: Bearer" in browser.find_element(By.ID, "error-message").text
    assert "API key" in browser.find_element(By.ID, "error-hint").text
    assert no_alert(browser)
    use_key(browser, "")


def test_a_sigkilled_node_turns_down_and_comes_back_when_restarted_and_caught_up(
    web: str, browser: Chrome, module_cluster: Cluster, artifacts: Path,
) -> None:
    module_cluster.nodes[2].kill()
    wait(browser, lambda b: node_health(b).get("node-3") == "down", "node-3 to show down")
    for number in range(3):  # orders it misses: it has to catch up when it is back
        stub(module_cluster, 0, "alice").CreateOrder(pb.CreateOrderRequest(
            market="ETH-USD", size=1, limit_price=500 + number, client_order_id=f"missed-{number}"), timeout=10)
    browser.save_screenshot(str(artifacts / "node-down.png"))
    module_cluster.start_node(2)
    wait(browser, lambda b: node_health(b) == {"node-1": "ok", "node-2": "ok", "node-3": "ok"},
         "node-3 back and caught up")
    seqs = {tile.get_attribute("data-node-id"): tile.find_element(By.CSS_SELECTOR, "tr[data-market='ETH-USD']")
            .text for tile in browser.find_elements(By.CSS_SELECTOR, "#nodes .node")}
    wait(browser, lambda b: len({row.text for row in b.find_elements(
        By.CSS_SELECTOR, "#nodes .node tr[data-market='ETH-USD']")}) == 1, f"equal ETH-USD views, were {seqs}")
    assert not browser.find_element(By.ID, "divergence").is_displayed()


def test_the_page_reconnects_by_itself_when_the_web_process_restarts(
    web: str, browser: Chrome, module_cluster: Cluster,
) -> None:
    assert module_cluster.web is not None
    module_cluster.web.stop()
    wait(browser, lambda b: b.find_element(By.ID, "conn").text == "reconnecting", "the page to see it gone")
    module_cluster.start_web()
    wait(browser, lambda b: b.find_element(By.ID, "conn").text == "live", "the page to reconnect")
    answer = stub(module_cluster, 1, "bob").CreateOrder(
        pb.CreateOrderRequest(market="BTC-USD", size=1, limit_price=1234, client_order_id="after-restart"),
        timeout=10)
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, f"#tape-rows tr[data-seq='{answer.seq}']"),
         "a trade made after the restart on the tape")
    assert script_errors(browser) == []


def test_in_ha_mode_killing_the_leader_shows_the_other_replica_leading(
    make_cluster: Callable[..., Cluster], browser: Chrome, artifacts: Path,
) -> None:
    """Last in the module: the browser leaves the module's console for an HA cluster's."""
    cluster = make_cluster(ha=True)
    cluster.start()
    browser.get(cluster.start_web())

    def roles(b: Chrome) -> dict[str | None, str]:
        return {tile.get_attribute("data-id"): tile.find_element(By.CSS_SELECTOR, ".role").text.lower()
                for tile in b.find_elements(By.CSS_SELECTOR, "#sequencers .sequencer")}

    leader = cluster.leader_index()
    assert leader is not None
    name, other = cluster.sequencer_name(leader), cluster.sequencer_name(1 - leader)
    wait(browser, lambda b: roles(b) == {name: "leader", other: "standby"}, "one leader and one standby")
    assert browser.find_element(By.ID, "leader").text.lower() == f"leader: {name}"
    cluster.sequencers[leader].kill()
    wait(browser, lambda b: roles(b).get(other) == "leader", f"{other} to lead")
    assert roles(browser)[name] == "down"
    wait(browser, lambda b: f"the lead moved from {name} to {other}" in b.find_element(By.ID, "leader-changes").text,
         "the leader change listed")
    browser.save_screenshot(str(artifacts / "ha-failover.png"))
    assert script_errors(browser) == []
