// The console's charts: plain SVG drawn with DOM calls (no library, no inline markup, data never parsed as HTML).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function clear(svg) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
}

function box(svg) {
  const view = svg.viewBox.baseVal;
  return { w: view.width, h: view.height, left: 44, right: 8, top: 10, bottom: 22 };
}

// Depth: cumulative size against price, bids (best first) to the left of the spread, asks to the right.
function drawDepth(svg, bids, asks) {
  clear(svg);
  const b = box(svg);
  if (!bids.length && !asks.length) {
    svg.appendChild(svgEl("text", { x: b.w / 2, y: b.h / 2, "text-anchor": "middle", class: "axis" }, "empty book"));
    return;
  }
  const cumulative = (levels) => {
    let total = 0;
    return levels.map(([price, size]) => [price, (total += size)]);
  };
  const bidSteps = cumulative(bids);
  const askSteps = cumulative(asks);
  const prices = bidSteps.concat(askSteps).map((s) => s[0]);
  let low = Math.min(...prices);
  let high = Math.max(...prices);
  const pad = Math.max(1, Math.round((high - low) * 0.08));
  low -= pad;
  high += pad;
  const maxSize = Math.max(1, ...bidSteps.concat(askSteps).map((s) => s[1]));
  const x = (price) => b.left + ((price - low) / (high - low)) * (b.w - b.left - b.right);
  const y = (size) => b.h - b.bottom - (size / maxSize) * (b.h - b.top - b.bottom);
  // a step line from the best price outwards, held at the total out to the chart's edge (`edge`)
  const area = (steps, edge, cls) => {
    if (!steps.length) return;
    let d = `M ${x(steps[0][0])} ${y(0)}`;
    let previous = 0;
    for (const [price, total] of steps) {
      d += ` L ${x(price)} ${y(previous)} L ${x(price)} ${y(total)}`;
      previous = total;
    }
    d += ` L ${x(edge)} ${y(previous)} L ${x(edge)} ${y(0)} Z`;
    svg.appendChild(svgEl("path", { d, class: cls }));
  };
  svg.appendChild(svgEl("line", { x1: b.left, y1: y(0), x2: b.w - b.right, y2: y(0), class: "grid" }));
  area(bidSteps, low, "bid-area");
  area(askSteps, high, "ask-area");
  svg.appendChild(svgEl("text", { x: b.left, y: b.h - 6, class: "axis" }, low));
  svg.appendChild(svgEl("text", { x: b.w - b.right, y: b.h - 6, "text-anchor": "end", class: "axis" }, high));
  svg.appendChild(svgEl("text", { x: b.left - 4, y: b.top + 10, "text-anchor": "end", class: "axis" }, maxSize));
  svg.appendChild(svgEl("text", { x: b.left - 4, y: y(0), "text-anchor": "end", class: "axis" }, 0));
}

// Candles: [{start_ms, open, high, low, close, volume}], oldest first, as the nodes answer them.
function drawCandles(svg, candles) {
  clear(svg);
  const b = box(svg);
  if (!candles.length) {
    svg.appendChild(svgEl("text", { x: b.w / 2, y: b.h / 2, "text-anchor": "middle", class: "axis" }, "no trades yet"));
    return;
  }
  const shown = candles.slice(-60);
  let low = Math.min(...shown.map((c) => c.low));
  let high = Math.max(...shown.map((c) => c.high));
  if (low === high) { low -= 1; high += 1; }
  const slots = Math.max(shown.length, 30);  // the latest candle at the right edge
  const slot = (b.w - b.left - b.right) / slots;
  const y = (price) => b.top + ((high - price) / (high - low)) * (b.h - b.top - b.bottom);
  shown.forEach((c, i) => {
    const cx = b.left + slot * (slots - shown.length + i + 0.5);
    const cls = c.close >= c.open ? "up" : "down";
    const g = svgEl("g", { class: `candle ${cls}`, "data-start": c.start_ms, "data-open": c.open,
      "data-high": c.high, "data-low": c.low, "data-close": c.close });
    g.appendChild(svgEl("line", { x1: cx, x2: cx, y1: y(c.high), y2: y(c.low), class: cls }));
    const top = y(Math.max(c.open, c.close));
    const height = Math.max(1, Math.abs(y(c.open) - y(c.close)));
    g.appendChild(svgEl("rect", { x: cx - slot * 0.35, y: top, width: slot * 0.7, height, class: cls }));
    svg.appendChild(g);
  });
  svg.appendChild(svgEl("text", { x: b.left - 4, y: b.top + 10, "text-anchor": "end", class: "axis" }, high));
  svg.appendChild(svgEl("text", { x: b.left - 4, y: b.h - b.bottom, "text-anchor": "end", class: "axis" }, low));
  const last = new Date(shown[shown.length - 1].start_ms);
  svg.appendChild(svgEl("text", { x: b.w - b.right, y: b.h - 6, "text-anchor": "end", class: "axis" },
    last.toISOString().slice(11, 16) + " UTC"));
}

window.consoleCharts = { drawDepth, drawCandles };
