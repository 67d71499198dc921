// The web console's page: renders what /api/stream sends (Server-Sent Events) and sends a person's orders.
// Everything shown goes through textContent: nothing from the server or the user is ever parsed as HTML.
// The API key lives only in this closure's `apiKey`: never in storage or a cookie; it travels as a header.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const charts = window.consoleCharts;
  const state = { cluster: null, books: {}, tapes: {}, candles: {}, tickers: {}, market: null };
  let apiKey = "";
  let source = null;
  let reconnectTimer = null;
  let fillsFrom = {};
  const seenFills = new Set();

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "class") node.className = value;
      else node.setAttribute(name, String(value));
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function cells(row, values) {
    for (const value of values) row.appendChild(el("td", {}, value));
    return row;
  }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  // -- the live stream ----------------------------------------------------------------------------------------

  function setConnection(live) {
    const conn = $("conn");
    conn.textContent = live ? "live" : "reconnecting";
    conn.className = "conn " + (live ? "conn-live" : "conn-down");
  }

  function connect() {
    if (source) source.close();
    source = new EventSource("/api/stream");
    source.addEventListener("open", () => setConnection(true));
    source.addEventListener("state", (e) => {
      setConnection(true);
      const message = JSON.parse(e.data);
      state.books = message.books || {};
      state.tapes = message.tapes || {};
      state.candles = message.candles || {};
      state.tickers = message.tickers || {};
      onCluster(message.cluster);
      renderMarket();
    });
    source.addEventListener("cluster", (e) => onCluster(JSON.parse(e.data)));
    source.addEventListener("book", (e) => {
      const book = JSON.parse(e.data);
      state.books[book.market] = book;
      if (book.market === state.market) renderBook();
    });
    source.addEventListener("trade", (e) => {
      const trade = JSON.parse(e.data);
      const tape = (state.tapes[trade.market] = state.tapes[trade.market] || []);
      tape.push(trade);
      if (tape.length > 100) tape.shift();
      if (trade.market === state.market) renderTape();
      if (apiKey) refreshMine();
    });
    source.addEventListener("tape", (e) => {
      const message = JSON.parse(e.data);
      state.tapes[message.market] = message.trades;
      if (message.market === state.market) renderTape();
    });
    source.addEventListener("candles", (e) => {
      const message = JSON.parse(e.data);
      state.candles[message.market] = message;
      if (message.market === state.market) renderCandles();
    });
    source.addEventListener("ticker", (e) => {
      const ticker = JSON.parse(e.data);
      state.tickers[ticker.market] = ticker;
      if (ticker.market === state.market) renderTicker();
    });
    source.addEventListener("error", () => {
      // EventSource retries by itself after a dropped stream, but gives up after some failures (a refused
      // connection, an answer that is not a stream): then start a new one, for as long as the page is open
      setConnection(false);
      if (source.readyState === EventSource.CLOSED && !reconnectTimer) {
        reconnectTimer = setTimeout(() => { reconnectTimer = null; connect(); }, 1000);
      }
    });
  }

  // -- cluster view -------------------------------------------------------------------------------------------

  function onCluster(cluster) {
    state.cluster = cluster;
    if (!state.market && cluster.markets.length) state.market = cluster.markets[0];
    renderTabs();
    renderCluster();
  }

  function renderTabs() {
    const tabs = $("market-tabs");
    const markets = state.cluster ? state.cluster.markets : [];
    if (tabs.childElementCount === markets.length &&
        markets.every((m, i) => tabs.children[i].dataset.market === m)) {
      for (const button of tabs.children) button.classList.toggle("active", button.dataset.market === state.market);
      return;
    }
    tabs.replaceChildren(...markets.map((market) => {
      const button = el("button", { type: "button", "data-market": market }, market);
      button.classList.toggle("active", market === state.market);
      button.addEventListener("click", () => {
        state.market = market;
        fillsFrom = {};
        renderTabs();
        renderMarket();
        if (apiKey) refreshMine();
      });
      return button;
    }));
  }

  function renderCluster() {
    const cluster = state.cluster;
    const diverged = new Set();
    for (const d of cluster.divergent) for (const ids of Object.values(d.checksums)) ids.forEach((id) => diverged.add(id));
    const alarm = $("divergence");
    alarm.hidden = !cluster.divergent.length;
    alarm.textContent = cluster.divergent.map((d) => `${d.market} at seq ${d.seq}: the nodes DIFFER (` +
      Object.entries(d.checksums).map(([c, ids]) => `${ids.join(", ")}: checksum ${c}`).join("; ") + ")").join(" | ");
    $("consul-error").hidden = !cluster.consul_error;
    $("consul-error").textContent = cluster.consul_error ? "Consul: " + cluster.consul_error : "";
    $("nodes").replaceChildren(...cluster.nodes.map((node) => {
      const tile = el("div", { class: `tile node health-${node.health}`, "data-node-id": node.id });
      if (diverged.has(node.id)) tile.classList.add("diverged");
      const head = el("div", { class: "title" }, node.id);
      head.appendChild(el("span", { class: "health" }, node.health.replace("-", " ")));
      tile.appendChild(head);
      tile.appendChild(el("div", { class: "muted" },
        `${node.address} · consul ${node.consul}` + (node.state ? ` · ${node.state}` : "")));
      if (node.error) tile.appendChild(el("div", { class: "error" }, node.error));
      if (node.markets.length) {
        const table = el("table");
        table.appendChild(cells(el("tr", { class: "muted" }), ["market", "seq", "checksum", "lag", "pending"]));
        for (const m of node.markets) {
          table.appendChild(cells(el("tr", { "data-market": m.market }),
            [m.market, m.applied_seq, m.checksum, m.lag, m.pending]));
        }
        tile.appendChild(table);
      }
      return tile;
    }));
    $("leader").textContent = cluster.leader ? `leader: ${cluster.leader}` : "no leader";
    $("sequencers").replaceChildren(...cluster.sequencers.map((s) => {
      const tile = el("div", { class: `tile sequencer role-${s.role}`, "data-id": s.id });
      const head = el("div", { class: "title" }, s.id);
      head.appendChild(el("span", { class: "health role" }, s.role));
      tile.appendChild(head);
      tile.appendChild(el("div", { class: "muted" }, `${s.address} · consul ${s.consul}`));
      const positions = Object.entries(s.positions).map(([m, seq]) => `${m}@${seq}`).join("  ");
      tile.appendChild(el("div", {}, positions || s.error || ""));
      return tile;
    }));
    $("leader-changes").replaceChildren(...cluster.leader_changes.slice().reverse().map((c) =>
      el("li", {}, `${new Date(c.at_ms).toLocaleTimeString()}: the lead moved from ${c.from} to ${c.to}`)));
  }

  // -- market view --------------------------------------------------------------------------------------------

  function renderMarket() {
    $("market-name").textContent = state.market || "";
    renderBook();
    renderTape();
    renderCandles();
    renderTicker();
  }

  function renderBook() {
    const book = state.books[state.market];
    if (!book) return;
    $("book-seq").textContent = `seq ${book.seq} · top-10 checksum ${book.checksum} (verified)`;
    const row = (cls, [price, size, count]) => cells(el("tr", { class: cls, "data-price": price }), [count, size, price]);
    replaceRows($("ladder-asks"), book.asks.slice(0, 10).reverse().map((level) => row("ask", level)));
    replaceRows($("ladder-bids"), book.bids.slice(0, 10).map((level) => row("bid", level)));
    const bid = book.bids.length ? book.bids[0][0] : null;
    const ask = book.asks.length ? book.asks[0][0] : null;
    $("spread").textContent = bid !== null && ask !== null ? `spread ${ask - bid}` : "one side empty";
    charts.drawDepth($("depth"), book.bids, book.asks);
  }

  function renderTape() {
    const tape = (state.tapes[state.market] || []).slice(-24).reverse();
    replaceRows($("tape-rows"), tape.map((t) => cells(
      el("tr", { class: t.side, "data-seq": t.seq, "data-trade-id": t.trade_id }),
      [utcTime(t.time_ms), t.seq, t.side, t.size, t.price])));
  }

  function utcTime(ms) {
    return ms ? new Date(ms).toISOString().slice(11, 19) : "";
  }

  function renderCandles() {
    const message = state.candles[state.market];
    $("candles-box").hidden = !message;
    if (!message) return;
    $("candle-interval").textContent = message.interval;
    charts.drawCandles($("candles"), message.candles);
  }

  function renderTicker() {
    const ticker = state.tickers[state.market];
    const box = $("ticker");
    box.hidden = !ticker;
    if (!ticker) return;
    const item = (label, value, id) => {
      const span = el("span", { id });
      span.appendChild(el("span", { class: "muted" }, label + " "));
      span.appendChild(el("b", {}, value));
      return span;
    };
    box.replaceChildren(
      item("last", ticker.last_price || "-", "ticker-last"),
      item("bid", ticker.best_bid || "-", "ticker-bid"),
      item("ask", ticker.best_ask || "-", "ticker-ask"),
      item("24h change", ticker.change_24h, "ticker-change"),
      item("24h high", ticker.high_24h || "-", "ticker-high"),
      item("24h low", ticker.low_24h || "-", "ticker-low"),
      item("24h volume", ticker.volume_24h, "ticker-volume"),
      item("24h trades", ticker.trade_count_24h, "ticker-trades"));
  }

  // -- trade ticket -------------------------------------------------------------------------------------------

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (apiKey) headers.Authorization = "Bearer " + apiKey;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit", cache: "no-store" });
    } catch (error) {
      throw { code: "UNAVAILABLE", message: "the web console does not answer: " + error };
    }
    const data = await response.json().catch(() => ({ error: { code: "INTERNAL", message: `HTTP ${response.status}` } }));
    if (data.error) throw data.error;
    return data;
  }

  function showError(error) {
    $("result").hidden = true;
    $("error").hidden = false;
    $("error-code").textContent = error.code || "ERROR";
    $("error-message").textContent = error.message || String(error);
    $("error-hint").textContent = error.hint || "";
  }

  function showResult(text) {
    $("error").hidden = true;
    $("result").hidden = false;
    $("result").textContent = text;
  }

  function value(id) {
    return $(id).value.trim();
  }

  async function place(event) {
    event.preventDefault();
    try {
      const result = await api("POST", "/api/orders", {
        market: state.market, side: value("o-side"), type: value("o-type"), size: value("o-size"),
        price: value("o-price") || null, client_order_id: $("o-coid").value || null,
      });
      const trades = result.trades.map((t) => `${t.size}@${t.price}`).join(", ");
      showResult(`order ${result.order_id} ${result.status}: filled ${result.filled}, resting ${result.remaining}` +
        (result.reject_reason ? ` (${result.reject_reason})` : "") + (trades ? `; trades ${trades}` : "") +
        (result.duplicate ? " (a repeat of the same client order id: its first result)" : ""));
      refreshMine();
    } catch (error) {
      showError(error);
    }
  }

  async function cancelOrder(orderId) {
    try {
      const result = await api("POST", `/api/orders/${encodeURIComponent(orderId)}/cancel`, { market: state.market });
      showResult(result.cancelled === null ? `order ${result.order_id} no longer rests`
        : `order ${result.order_id} cancelled (${result.cancelled} lots)`);
      refreshMine();
    } catch (error) {
      showError(error);
    }
  }

  async function amend(event) {
    event.preventDefault();
    try {
      const result = await api("POST", `/api/orders/${encodeURIComponent(value("a-id"))}/amend`, {
        market: state.market, size: value("a-size"), price: value("a-price") || null,
      });
      showResult(`order ${result.order_id} now ${result.remaining} @ ${result.price} (` +
        (result.priority_kept ? "kept" : "lost") + " priority)");
      refreshMine();
    } catch (error) {
      showError(error);
    }
  }

  let refreshing = false;
  let refreshAgain = false;

  async function refreshMine() {
    if (!apiKey || !state.market) return;
    if (refreshing) { refreshAgain = true; return; }
    refreshing = true;
    const market = state.market;
    try {
      const mine = await api("GET", `/api/orders?market=${encodeURIComponent(market)}`);
      replaceRows($("orders"), mine.orders.map((o) => {
        const row = cells(el("tr", { "data-order-id": o.order_id }),
          [o.order_id, o.side, o.price, o.remaining, o.filled]);
        row.appendChild(el("td", { class: "coid" }, o.client_order_id));
        const td = el("td");
        const button = el("button", { type: "button", class: "cancel" }, "cancel");
        button.addEventListener("click", () => cancelOrder(o.order_id));
        td.appendChild(button);
        row.appendChild(td);
        return row;
      }));
      const from = fillsFrom[market] || 0;
      const found = await api("GET", `/api/fills?market=${encodeURIComponent(market)}&from_seq=${from}`);
      fillsFrom[market] = found.next_seq;
      const tbody = $("fills");
      if (!from) tbody.replaceChildren();
      for (const f of found.fills) {
        const key = `${market}/${f.seq}/${f.order_id}/${f.trade_id}`;
        if (seenFills.has(key)) continue;
        seenFills.add(key);
        tbody.insertBefore(cells(el("tr", { "data-seq": f.seq }),
          [f.seq, f.order_id, f.side, f.size, f.price, f.maker ? "maker" : "taker"]), tbody.firstChild);
      }
      while (tbody.childElementCount > 100) tbody.removeChild(tbody.lastChild);
    } catch (error) {
      showError(error);
    } finally {
      refreshing = false;
      if (refreshAgain) { refreshAgain = false; refreshMine(); }
    }
  }

  function useKey(event) {
    event.preventDefault();
    apiKey = $("key").value.trim();
    fillsFrom = {};
    seenFills.clear();
    $("orders").replaceChildren();
    $("fills").replaceChildren();
    $("key-state").textContent = apiKey ? "key in use (kept in this page only)" : "no key: market data only";
    refreshMine();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("key-form").addEventListener("submit", useKey);
    $("order-form").addEventListener("submit", place);
    $("amend-form").addEventListener("submit", amend);
    setInterval(() => { if (apiKey) refreshMine(); }, 3000);
    connect();
  });
})();
