// tickgate dashboard: connection state, state diagram, live quotes and transition history.
//
// Everything live arrives over the page's WebSocket at /ws. The page never polls: the only timer
// re-renders countdowns and tick ages from data it already has, every RENDER_INTERVAL_MS.
"use strict";

(function () {
  const RENDER_INTERVAL_MS = 250;

  // The page's own WebSocket reconnects with doubling delays, plus up to 20 % jitter so that many
  // open tabs do not reconnect in step after a gateway restart.
  const PAGE_BACKOFF_BASE_MS = 500;
  const PAGE_BACKOFF_CAP_MS = 10000;

  // The gateway sends heartbeats, so a socket silent for this long gets a ping. After twice as
  // long the page treats the socket as dead and reconnects.
  const PAGE_IDLE_PING_MS = 15000;

  // A row's tick age turns amber after this long without a tick for that symbol.
  const QUIET_SYMBOL_MS = 5000;

  const MAX_TRANSITIONS = 100;

  // The client `status` value for each state of the connection machine.
  const STATUS_BY_STATE = {
    Disconnected: "disconnected",
    Connecting: "connecting",
    Authenticating: "authenticating",
    Streaming: "connected",
    Stale: "stale",
    Backoff: "reconnecting",
  };
  const STATE_BY_STATUS = Object.fromEntries(
    Object.entries(STATUS_BY_STATE).map(([state, status]) => [status, state]),
  );

  const elements = {
    pageLink: document.getElementById("page-link"),
    pageLinkBanner: document.getElementById("page-link-banner"),
    state: document.getElementById("state"),
    stateLabel: document.getElementById("state-label"),
    stateDetail: document.getElementById("state-detail"),
    staleBanner: document.getElementById("stale-banner"),
    subscribeForm: document.getElementById("subscribe-form"),
    picker: document.getElementById("symbol-picker"),
    subscribeButton: document.getElementById("subscribe-button"),
    errors: document.getElementById("errors"),
    quoteRows: document.getElementById("quote-rows"),
    quotesEmpty: document.getElementById("quotes-empty"),
    diagram: document.getElementById("diagram"),
    lastTransition: document.getElementById("last-transition"),
    transitions: document.getElementById("transitions"),
    transitionsEmpty: document.getElementById("transitions-empty"),
  };

  const model = {
    // The latest `status` frame and the local time it arrived (for the backoff countdown).
    status: null,
    statusReceivedAt: 0,
    availableSymbols: [],
    // symbol -> { row, bid, ask, digits, lastTickAt }
    quotes: new Map(),
    // Oldest first, at most MAX_TRANSITIONS, each { atMs, from, to, cause }.
    transitions: [],
    diagram: null,
    diagramLoading: false,
    diagramSvg: null,
  };

  const link = {
    socket: null,
    attempt: 0,
    reconnectAt: 0,
    reconnectTimer: null,
    lastFrameAt: 0,
    lastPingAt: 0,
    closeReason: "",
  };

  // ---------------------------------------------------------------------------------------------
  // Decimal prices
  //
  // Bid and ask arrive as exact JSON numbers such as 1.08500. JSON.parse would turn that into the
  // float 1.085 and lose the trailing zeros, which carry the symbol's digits, so prices are read
  // from the frame's text and handled as integers of the smallest displayed unit.

  const DECIMAL = /^(-?)(\d+)(?:\.(\d+))?$/;

  // Returns the literal text of a numeric (or numeric string) field in a flat JSON object.
  function readNumberText(frameText, field) {
    const pattern = new RegExp('"' + field + '"\\s*:\\s*"?(-?\\d+(?:\\.\\d+)?(?:[eE][+-]?\\d+)?)');
    const match = pattern.exec(frameText);
    return match ? match[1] : null;
  }

  // Parses "1.08567" into { units: 108567, digits: 5 }. An exponent form goes through the float,
  // and anything that is not a finite number gives null.
  function parseDecimal(text) {
    if (text === null || text === undefined) {
      return null;
    }
    let match = DECIMAL.exec(String(text));
    if (!match) {
      // An exponent form such as 1e-5: fall back to the float, which is exact enough to display.
      const value = Number(text);
      if (!Number.isFinite(value)) {
        return null;
      }
      match = DECIMAL.exec(value.toFixed(5).replace(/0+$/, "").replace(/\.$/, ""));
      if (!match) {
        return null;
      }
    }
    const fraction = match[3] || "";
    const units = Number(match[2] + fraction) * (match[1] === "-" ? -1 : 1);
    return { units, digits: fraction.length };
  }

  function rescale(decimal, digits) {
    return decimal.units * 10 ** (digits - decimal.digits);
  }

  function formatUnits(units, digits) {
    const sign = units < 0 ? "-" : "";
    const text = String(Math.abs(units)).padStart(digits + 1, "0");
    if (digits === 0) {
      return sign + text;
    }
    return sign + text.slice(0, -digits) + "." + text.slice(-digits);
  }

  // Pip size is inferred from the number of decimals a symbol is quoted with:
  //   5 or 4 decimals (EURUSD 1.08567)          -> pip 0.0001
  //   3 or 2 decimals (USDJPY 150.123, XAUUSD)  -> pip 0.01
  //   more than 5 decimals                      -> pip 0.0001, as for 5
  //   1 or 0 decimals (indices)                 -> one unit of the last decimal
  // Returns the pip size as a number of decimals (4 means 0.0001).
  function pipDecimals(digits) {
    if (digits >= 4) {
      return 4;
    }
    if (digits >= 2) {
      return 2;
    }
    return digits;
  }

  // Returns the spread in pips as text, exact, with one decimal for fractional-pip quotes.
  function formatSpreadPips(bidUnits, askUnits, digits) {
    const fractionDigits = Math.max(0, digits - pipDecimals(digits));
    return formatUnits(askUnits - bidUnits, fractionDigits);
  }

  // ---------------------------------------------------------------------------------------------
  // Small helpers

  // When tickgate runs with --client-token, the dashboard is opened as /?token=SECRET and passes
  // the token on, because a browser cannot set an Authorization header on a WebSocket.
  const CLIENT_TOKEN = new URLSearchParams(location.search).get("token");

  function withToken(path) {
    return CLIENT_TOKEN ? path + "?token=" + encodeURIComponent(CLIENT_TOKEN) : path;
  }

  function element(tag, attributes, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      node.setAttribute(name, value);
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function pad(value, width) {
    return String(value).padStart(width, "0");
  }

  // Formats Unix milliseconds as local HH:MM:SS, with milliseconds when asked.
  function formatClock(ms, withMillis) {
    const date = new Date(ms);
    if (Number.isNaN(date.getTime())) {
      return "--:--:--";
    }
    const clock = pad(date.getHours(), 2) + ":" + pad(date.getMinutes(), 2) + ":" + pad(date.getSeconds(), 2);
    return withMillis ? clock + "." + pad(date.getMilliseconds(), 3) : clock;
  }

  // Formats a duration for "time since the last tick".
  function formatAge(ms) {
    if (ms < 10000) {
      return (Math.max(0, ms) / 1000).toFixed(1) + " s";
    }
    const seconds = Math.floor(ms / 1000);
    if (seconds < 60) {
      return seconds + " s";
    }
    return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
  }

  function toMillis(value) {
    if (typeof value === "number") {
      return value;
    }
    const parsed = Date.parse(value);
    return Number.isNaN(parsed) ? Date.now() : parsed;
  }

  // ---------------------------------------------------------------------------------------------
  // Connection state

  function renderStatus() {
    const status = model.status;
    if (!status) {
      return;
    }
    const now = Date.now();
    const name = String(status.status);
    const attempt = Number(status.attempt) || 0;
    const since = toMillis(status.since);
    // The session reports since = 0 before its first transition.
    const sinceText = since > 0 ? " since " + formatClock(since) : "";
    let label;
    let detail = "";

    switch (name) {
      case "connected":
        label = "Connected";
        detail = "Streaming" + sinceText + ".";
        break;
      case "stale": {
        // The session enters Stale only after the stale threshold passed with no tick, so the
        // silence began before `since`. When this page saw a tick before that, the count starts
        // from that tick, which matches the ages in the quotes table.
        const quietSince = Math.min(since, latestTickAt() || since);
        const quietSeconds = Math.max(0, Math.floor((now - quietSince) / 1000));
        label = "Stale — no ticks for " + quietSeconds + " s";
        detail = "Stale" + sinceText + ".";
        break;
      }
      case "reconnecting": {
        // Counts down from when this frame arrived, so a skewed server clock does not shift it.
        const retryInMs = Number(status.retryInMs) || 0;
        const remainingMs = model.statusReceivedAt + retryInMs - now;
        const when = remainingMs > 0 ? "in " + Math.ceil(remainingMs / 1000) + " s" : "now";
        label = "Reconnecting " + when + ", attempt " + attempt;
        detail = "Waiting before the next connect attempt" + sinceText + ".";
        break;
      }
      case "connecting":
        label = attempt > 0 ? "Connecting, attempt " + attempt : "Connecting…";
        detail = "Opening TCP and TLS" + sinceText + ".";
        break;
      case "authenticating":
        label = attempt > 0 ? "Authenticating, attempt " + attempt : "Authenticating…";
        detail = "Authenticating upstream" + sinceText + ".";
        break;
      case "disconnected":
        label = "Disconnected";
        detail = "Not connected upstream" + sinceText + ".";
        break;
      default:
        label = name;
        detail = "Unrecognised status from the gateway.";
    }
    if (status.reason) {
      detail += " Reason: " + status.reason;
    }

    elements.state.dataset.state = name;
    setText(elements.stateLabel, label);
    setText(elements.stateDetail, detail);

    if (name === "stale") {
      setText(
        elements.staleBanner,
        "No ticks since before " + formatClock(since) + ". Prices below may be out of date.",
      );
      elements.staleBanner.hidden = false;
    } else {
      elements.staleBanner.hidden = true;
    }
  }

  // Returns the local time of the newest tick on this page, or 0 before the first one.
  function latestTickAt() {
    let latest = 0;
    for (const quote of model.quotes.values()) {
      latest = Math.max(latest, quote.lastTickAt);
    }
    return latest;
  }

  // Writes text only when it changed, so the 250 ms re-render does not disturb selection.
  function setText(node, text) {
    if (node.textContent !== text) {
      node.textContent = text;
    }
  }

  function handleStatus(frame) {
    model.status = frame;
    model.statusReceivedAt = Date.now();
    if (Array.isArray(frame.availableSymbols) && frame.availableSymbols.length > 0) {
      updatePicker(frame.availableSymbols);
    }
    renderStatus();
    highlightDiagram();
  }

  // ---------------------------------------------------------------------------------------------
  // Symbol picker and quotes table

  function updatePicker(symbols) {
    const list = symbols.map(String);
    const unchanged =
      list.length === model.availableSymbols.length && list.every((symbol, i) => symbol === model.availableSymbols[i]);
    if (unchanged) {
      return;
    }
    model.availableSymbols = list;

    const previous = elements.picker.value;
    elements.picker.replaceChildren();
    for (const symbol of list) {
      elements.picker.append(element("option", { value: symbol }, symbol));
    }
    if (list.includes(previous)) {
      elements.picker.value = previous;
    }
    updateSubscribeControls();
  }

  function updateSubscribeControls() {
    const hasSymbols = model.availableSymbols.length > 0;
    elements.picker.disabled = !hasSymbols;
    elements.subscribeButton.disabled = !hasSymbols || !isLinkOpen();
  }

  function addQuoteRow(symbol) {
    if (model.quotes.has(symbol)) {
      return model.quotes.get(symbol);
    }
    const row = element("tr", { "data-symbol": symbol, "data-pending": "" });
    row.append(
      element("td", { class: "symbol" }, symbol),
      element("td", { class: "bid num" }, "—"),
      element("td", { class: "ask num" }, "—"),
      element("td", { class: "spread num" }, "—"),
      element("td", { class: "age num" }, "waiting"),
    );
    const actionCell = element("td", { class: "action" });
    const button = element(
      "button",
      { type: "button", class: "unsubscribe", title: "Unsubscribe " + symbol, "aria-label": "Unsubscribe " + symbol },
      "✕",
    );
    button.addEventListener("click", () => unsubscribe(symbol));
    actionCell.append(button);
    row.append(actionCell);

    // Rows stay in alphabetical order so a symbol does not move when another is added.
    const after = [...model.quotes.keys()].filter((other) => other > symbol).sort()[0];
    if (after) {
      elements.quoteRows.insertBefore(row, model.quotes.get(after).row);
    } else {
      elements.quoteRows.append(row);
    }

    const quote = { row, bid: null, ask: null, digits: 0, lastTickAt: 0 };
    model.quotes.set(symbol, quote);
    elements.quotesEmpty.hidden = true;
    return quote;
  }

  function removeQuoteRow(symbol) {
    const quote = model.quotes.get(symbol);
    if (!quote) {
      return;
    }
    quote.row.remove();
    model.quotes.delete(symbol);
    elements.quotesEmpty.hidden = model.quotes.size > 0;
  }

  function subscribe(symbol) {
    addQuoteRow(symbol);
    send({ type: "subscribe", symbols: [symbol] });
  }

  function unsubscribe(symbol) {
    removeQuoteRow(symbol);
    send({ type: "unsubscribe", symbols: [symbol] });
  }

  // Confirms rows the user asked for. A symbol without a row was unsubscribed while the request
  // was in flight, so it gets no row back.
  function handleSubscribeResponse(frame) {
    for (const symbol of frame.symbols || []) {
      const quote = model.quotes.get(String(symbol));
      if (quote) {
        quote.row.removeAttribute("data-pending");
      }
    }
  }

  function flash(cell, direction) {
    cell.classList.remove("flash-up", "flash-down");
    if (direction === 0) {
      return;
    }
    // Reading offsetWidth restarts the CSS animation when the class is added again.
    void cell.offsetWidth;
    cell.classList.add(direction > 0 ? "flash-up" : "flash-down");
  }

  function handleTick(frame, frameText) {
    const symbol = String(frame.symbol);
    const quote = model.quotes.get(symbol);
    if (!quote) {
      // A tick that was already in flight when the user unsubscribed.
      return;
    }
    const bid = parseDecimal(readNumberText(frameText, "bid") ?? frame.bid);
    const ask = parseDecimal(readNumberText(frameText, "ask") ?? frame.ask);
    if (!bid || !ask) {
      console.debug("tick with an unreadable price", frameText);
      return;
    }

    // The widest decimals seen so far are the symbol's digits, in case a price arrives with its
    // trailing zeros dropped.
    const digits = Math.max(quote.digits, bid.digits, ask.digits);
    const bidUnits = rescale(bid, digits);
    const askUnits = rescale(ask, digits);
    const previousBid = quote.bid === null ? null : rescale(quote.bid, digits);
    const previousAsk = quote.ask === null ? null : rescale(quote.ask, digits);

    quote.bid = bid;
    quote.ask = ask;
    quote.digits = digits;
    quote.lastTickAt = Date.now();
    quote.row.removeAttribute("data-pending");

    const cells = quote.row.cells;
    cells[1].textContent = formatUnits(bidUnits, digits);
    cells[2].textContent = formatUnits(askUnits, digits);
    cells[3].textContent = formatSpreadPips(bidUnits, askUnits, digits);
    if (previousBid !== null) {
      flash(cells[1], Math.sign(bidUnits - previousBid));
      flash(cells[2], Math.sign(askUnits - previousAsk));
    }
    renderAges();
  }

  function renderAges() {
    const now = Date.now();
    for (const quote of model.quotes.values()) {
      if (!quote.lastTickAt) {
        continue;
      }
      const age = now - quote.lastTickAt;
      setText(quote.row.cells[4], formatAge(age));
      quote.row.toggleAttribute("data-quiet", age > QUIET_SYMBOL_MS);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Error frames

  function showError(frame) {
    const code = frame.code ? String(frame.code) : "error";
    // The gateway names the symbol "system" when an error concerns no symbol.
    const symbol = frame.symbol && frame.symbol !== "system" ? String(frame.symbol) : null;
    const subject = symbol ? code + " (" + symbol + "):" : code + ":";
    const parts = [subject, String(frame.message || "no message")];
    const box = element("div", { class: "error-message", role: "alert", "data-code": code });
    const dismiss = element("button", { type: "button", class: "dismiss", "aria-label": "Dismiss" }, "×");
    dismiss.addEventListener("click", () => box.remove());
    box.append(element("span", { class: "error-text" }, parts.join(" ")), dismiss);
    elements.errors.prepend(box);

    // Keep only the newest few, so a stream of errors cannot push the table off screen.
    while (elements.errors.children.length > 5) {
      elements.errors.lastElementChild.remove();
    }

    // A rejected subscription leaves no row behind, and the error message explains why.
    if (symbol) {
      const quote = model.quotes.get(symbol);
      if (quote && quote.row.hasAttribute("data-pending")) {
        removeQuoteRow(symbol);
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Transition history

  function normaliseTransition(raw) {
    return {
      atMs: toMillis(raw.atMs ?? raw.at),
      from: String(raw.from),
      to: String(raw.to),
      cause: String(raw.cause ?? ""),
    };
  }

  function transitionKey(transition) {
    return transition.atMs + "|" + transition.from + "|" + transition.to + "|" + transition.cause;
  }

  // Merges transitions into the history, dropping duplicates, which happen when a frame arrives
  // while /api/transitions is loading.
  function mergeTransitions(incoming) {
    const byKey = new Map(model.transitions.map((transition) => [transitionKey(transition), transition]));
    for (const transition of incoming) {
      byKey.set(transitionKey(transition), transition);
    }
    model.transitions = [...byKey.values()]
      .sort((a, b) => a.atMs - b.atMs)
      .slice(-MAX_TRANSITIONS);
    renderTransitions();
    highlightDiagram();
  }

  function renderTransitions() {
    const items = [];
    for (let i = model.transitions.length - 1; i >= 0; i--) {
      const transition = model.transitions[i];
      const item = element("li", { "data-from": transition.from, "data-to": transition.to });
      const date = new Date(transition.atMs);
      const datetime = Number.isNaN(date.getTime()) ? {} : { datetime: date.toISOString() };
      item.append(
        element("time", datetime, formatClock(transition.atMs, true)),
        element("span", { class: "path" }, transition.from + " → " + transition.to),
        element("span", { class: "cause" }, transition.cause),
      );
      items.push(item);
    }
    elements.transitions.replaceChildren(...items);
    elements.transitionsEmpty.hidden = items.length > 0;

    const last = model.transitions[model.transitions.length - 1];
    elements.lastTransition.replaceChildren();
    if (last) {
      elements.lastTransition.append(
        "Last transition at " + formatClock(last.atMs) + ": " + last.from + " → " + last.to + ", cause ",
        element("span", { class: "cause" }, last.cause || "not recorded"),
      );
    }
  }

  async function loadTransitions() {
    try {
      const response = await fetch(withToken("/api/transitions"), { cache: "no-store" });
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      const list = await response.json();
      if (!Array.isArray(list)) {
        throw new Error("expected a JSON array");
      }
      mergeTransitions(list.map(normaliseTransition));
    } catch (error) {
      showError({
        code: "TRANSITIONS_UNAVAILABLE",
        message: "failed to load /api/transitions (" + error.message + "); the page retries when its WebSocket reconnects",
      });
    }
  }

  // ---------------------------------------------------------------------------------------------
  // State diagram
  //
  // Every pair of states is linked in at least one direction, so the six states sit on a
  // hexagon: with all nodes on a convex outline no straight edge passes behind a third node.
  // The happy path runs clockwise along the top (Disconnected, Connecting, Authenticating,
  // Streaming) and failures return along the bottom (Stale, Backoff). States the page does not
  // know are placed on a row underneath.

  const SVG_NS = "http://www.w3.org/2000/svg";
  const NODE_WIDTH = 150;
  const NODE_HEIGHT = 44;
  const DIAGRAM_WIDTH = 900;
  const LAYOUT = {
    Disconnected: [95, 275],
    Connecting: [300, 95],
    Authenticating: [600, 95],
    Streaming: [805, 275],
    Stale: [600, 455],
    Backoff: [300, 455],
  };
  const PAIR_OFFSET = 8;
  const LOOP_SIZE = 45;
  const ARROW_CLEARANCE = 10;
  const EDGE_SAMPLE_SPACING = 6;
  const LABEL_EDGE_CLEARANCE = 8;
  const MAX_PAIR_BEND = 30;
  const LABEL_LINE_HEIGHT = 14;
  const LABEL_CHAR_WIDTH = 6.4;
  const LABEL_MAX_CHARS = 30;
  const LABEL_MAX_LINES = 2;

  function svg(tag, attributes, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      node.setAttribute(name, String(value));
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function layoutStates(states) {
    const positions = new Map();
    const extra = states.filter((state) => !(state in LAYOUT));
    for (const state of states) {
      if (state in LAYOUT) {
        positions.set(state, { x: LAYOUT[state][0], y: LAYOUT[state][1] });
      }
    }
    const columns = Math.max(1, Math.floor(DIAGRAM_WIDTH / (NODE_WIDTH + 30)));
    extra.forEach((state, i) => {
      const column = i % columns;
      const row = Math.floor(i / columns);
      positions.set(state, { x: 95 + column * (NODE_WIDTH + 30), y: 570 + row * 100 });
    });
    return positions;
  }

  // Groups edges by (from, to), keeping the diagram's order of inputs.
  function groupEdges(edges) {
    const groups = new Map();
    for (const edge of edges) {
      const key = edge.from + "\u0000" + edge.to;
      if (!groups.has(key)) {
        groups.set(key, { from: String(edge.from), to: String(edge.to), inputs: [] });
      }
      const input = String(edge.input);
      const group = groups.get(key);
      if (!group.inputs.includes(input)) {
        group.inputs.push(input);
      }
    }
    return [...groups.values()];
  }

  // Packs inputs into label lines of at most LABEL_MAX_CHARS, never splitting an input. Past
  // LABEL_MAX_LINES the rest is counted ("+4 more"), because the edges into Backoff carry up to
  // eight inputs and full labels would cover the middle of the diagram. The edge's tooltip and
  // the transition history name every input.
  function labelLines(inputs) {
    const lines = [];
    let packed = 0;
    for (const input of inputs) {
      const last = lines[lines.length - 1];
      if (last !== undefined && last.length + 2 + input.length <= LABEL_MAX_CHARS) {
        lines[lines.length - 1] = last + ", " + input;
      } else if (lines.length < LABEL_MAX_LINES) {
        lines.push(input);
      } else {
        break;
      }
      packed += 1;
    }
    if (packed < inputs.length) {
      lines.push("+" + (inputs.length - packed) + " more");
    }
    return lines;
  }

  // Returns where a ray from `origin`, a point inside the node centred at `centre`, towards
  // `toward` leaves the node's box grown by `margin`.
  function exitPoint(centre, origin, toward, margin) {
    const dx = toward.x - origin.x;
    const dy = toward.y - origin.y;
    const halfWidth = NODE_WIDTH / 2 + margin;
    const halfHeight = NODE_HEIGHT / 2 + margin;
    const alongX = dx === 0 ? Infinity : ((dx > 0 ? centre.x + halfWidth : centre.x - halfWidth) - origin.x) / dx;
    const alongY = dy === 0 ? Infinity : ((dy > 0 ? centre.y + halfHeight : centre.y - halfHeight) - origin.y) / dy;
    const scale = Math.min(alongX, alongY);
    return { x: origin.x + dx * scale, y: origin.y + dy * scale };
  }

  // Returns the axis direction (up, down, left or right) that points from `centre` towards `node`.
  function outwardSide(node, centre) {
    const dx = (node.x - centre.x) / NODE_WIDTH;
    const dy = (node.y - centre.y) / NODE_HEIGHT;
    if (Math.abs(dx) >= Math.abs(dy)) {
      return { x: Math.sign(dx) || 1, y: 0 };
    }
    return { x: 0, y: Math.sign(dy) };
  }

  function quadraticAt(start, control, end, t) {
    const u = 1 - t;
    return {
      x: u * u * start.x + 2 * u * t * control.x + t * t * end.x,
      y: u * u * start.y + 2 * u * t * control.y + t * t * end.y,
    };
  }

  function boxesOverlap(a, b) {
    return a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
  }

  function renderDiagram(diagram) {
    const states = (diagram.states || []).map(String);
    const positions = layoutStates(states);
    const groups = groupEdges(diagram.edges || []).filter(
      (group) => positions.has(group.from) && positions.has(group.to),
    );
    const maxY = Math.max(...[...positions.values()].map((position) => position.y), 0);
    // Room below the bottom row for labels of the edges between bottom nodes.
    const height = maxY + NODE_HEIGHT / 2 + 85;

    const root = svg("svg", {
      viewBox: "0 0 " + DIAGRAM_WIDTH + " " + height,
      role: "img",
      "aria-label": "State diagram of the connection machine",
      id: "diagram-svg",
    });

    const defs = svg("defs");
    for (const id of ["arrow", "arrow-last"]) {
      const marker = svg("marker", {
        id,
        viewBox: "0 0 10 10",
        refX: 9,
        refY: 5,
        markerUnits: "userSpaceOnUse",
        markerWidth: 11,
        markerHeight: 11,
        orient: "auto-start-reverse",
      });
      marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z" }));
      defs.append(marker);
    }
    root.append(defs);

    const edgeLayer = svg("g", { class: "edges" });
    const labels = [];
    const centre = {
      x: [...positions.values()].reduce((sum, position) => sum + position.x, 0) / Math.max(1, positions.size),
      y: [...positions.values()].reduce((sum, position) => sum + position.y, 0) / Math.max(1, positions.size),
    };

    for (const group of groups) {
      const from = positions.get(group.from);
      const to = positions.get(group.to);
      const reverseExists = groups.some((other) => other.from === group.to && other.to === group.from);
      const edge = svg("g", { class: "edge", "data-from": group.from, "data-to": group.to });
      edge.append(svg("title", {}, group.from + " → " + group.to + ": " + group.inputs.join(", ")));

      let path;
      let anchors;
      let samples;
      if (group.from === group.to) {
        // A self-transition loops on the node's outer side, away from the middle of the diagram.
        const side = outwardSide(from, centre);
        const tangent = { x: -side.y, y: side.x };
        const spread = side.x === 0 ? 30 : 12;
        const base = { x: from.x + side.x * NODE_WIDTH / 2, y: from.y + side.y * NODE_HEIGHT / 2 };
        const first = { x: base.x + tangent.x * spread, y: base.y + tangent.y * spread };
        const second = { x: base.x - tangent.x * spread, y: base.y - tangent.y * spread };
        const point = (origin, along, across) =>
          (origin.x + side.x * along + tangent.x * across).toFixed(1) + "," + (origin.y + side.y * along + tangent.y * across).toFixed(1);
        path = "M" + point(first, 0, 0) + " C" + point(first, LOOP_SIZE, 10) + " " + point(second, LOOP_SIZE, -10) + " " +
          point(second, 0, 0);
        anchors = [{ x: base.x + side.x * (LOOP_SIZE + 4), y: base.y + side.y * (LOOP_SIZE + 4), normal: side }];
        samples = [first, { x: base.x + side.x * LOOP_SIZE * 0.75, y: base.y + side.y * LOOP_SIZE * 0.75 }, second];
      } else {
        // A pair of opposite edges runs side by side: each is moved a little to the right of
        // its own direction and bends further that way, more for longer edges.
        const length = Math.hypot(to.x - from.x, to.y - from.y);
        const normal = { x: -(to.y - from.y) / length, y: (to.x - from.x) / length };
        const shift = reverseExists ? PAIR_OFFSET : 0;
        const bend = reverseExists ? Math.min(MAX_PAIR_BEND, Math.max(0, (length - NODE_WIDTH) * 0.12)) : 0;
        const fromShifted = { x: from.x + normal.x * shift, y: from.y + normal.y * shift };
        const toShifted = { x: to.x + normal.x * shift, y: to.y + normal.y * shift };
        const control = {
          x: (fromShifted.x + toShifted.x) / 2 + normal.x * bend * 2,
          y: (fromShifted.y + toShifted.y) / 2 + normal.y * bend * 2,
        };
        const start = exitPoint(from, fromShifted, control, 2);
        const end = exitPoint(to, toShifted, control, 3);
        path = "M" + start.x.toFixed(1) + "," + start.y.toFixed(1) + " Q" + control.x.toFixed(1) + "," +
          control.y.toFixed(1) + " " + end.x.toFixed(1) + "," + end.y.toFixed(1);
        anchors = [0.5, 0.38, 0.62, 0.28, 0.72, 0.2, 0.8].map((t) => ({ ...quadraticAt(start, control, end, t), normal }));
        const sampleCount = Math.ceil(length / EDGE_SAMPLE_SPACING);
        samples = Array.from({ length: sampleCount + 1 }, (_, i) => quadraticAt(start, control, end, i / sampleCount));
      }
      edge.append(svg("path", { d: path, "marker-end": "url(#arrow)" }));
      edgeLayer.append(edge);

      const lines = labelLines(group.inputs);
      const width = Math.max(...lines.map((line) => line.length)) * LABEL_CHAR_WIDTH + 8;
      const labelHeight = lines.length * LABEL_LINE_HEIGHT + 4;
      labels.push({ group, anchors, samples, lines, width, height: labelHeight });
    }

    // Labels avoid nodes, each other and the border, and the largest are placed first because
    // they have the fewest free spots. Node boxes are grown so that no label covers an arrowhead.
    // The placement depends only on the diagram, so the same machine always draws the same way.
    const occupied = [...positions.values()].map((position) => ({
      x: position.x - NODE_WIDTH / 2 - ARROW_CLEARANCE,
      y: position.y - NODE_HEIGHT / 2 - ARROW_CLEARANCE,
      width: NODE_WIDTH + 2 * ARROW_CLEARANCE,
      height: NODE_HEIGHT + 2 * ARROW_CLEARANCE,
    }));
    const canvas = { x: 0, y: 0, width: DIAGRAM_WIDTH, height };
    const labelLayer = svg("g", { class: "edge-labels" });
    labels.sort((a, b) => b.width * b.height - a.width * a.height);

    for (const { group, anchors, lines, width, height: labelHeight } of labels) {
      const otherEdges = labels.filter((other) => other.group !== group).flatMap((other) => other.samples);
      const boxAt = (point) => ({ x: point.x - width / 2, y: point.y - labelHeight / 2, width, height: labelHeight });
      const inside = (box) =>
        box.x >= canvas.x && box.y >= canvas.y && box.x + box.width <= canvas.width && box.y + box.height <= canvas.height;
      // A label that merely touches another edge reads as that edge's, so the box is grown first.
      const crossings = (box) => {
        const near = {
          x: box.x - LABEL_EDGE_CLEARANCE,
          y: box.y - LABEL_EDGE_CLEARANCE,
          width: box.width + 2 * LABEL_EDGE_CLEARANCE,
          height: box.height + 2 * LABEL_EDGE_CLEARANCE,
        };
        return otherEdges.filter((point) => boxesOverlap(near, { ...point, width: 0, height: 0 })).length;
      };

      // Spots on the edge or just beside it come first, then spots further out. Within each
      // group the free spot that the fewest other edges pass through wins, so that a label is
      // not read as another edge's. Earlier spots, nearer the middle, win ties. When no spot is
      // free the label goes in the middle.
      let box = null;
      for (const steps of [[0, 1, -1], [2, -2, 3, -3, 4, -4]]) {
        let best = null;
        for (const anchor of anchors) {
          const aside = Math.abs(anchor.normal.x) * width / 2 + Math.abs(anchor.normal.y) * labelHeight / 2 + 4;
          for (const step of steps) {
            const candidate = boxAt({ x: anchor.x + anchor.normal.x * aside * step, y: anchor.y + anchor.normal.y * aside * step });
            if (!inside(candidate) || occupied.some((other) => boxesOverlap(candidate, other))) {
              continue;
            }
            const score = crossings(candidate);
            if (best === null || score < best.score) {
              best = { candidate, score };
            }
          }
        }
        if (best !== null) {
          box = best.candidate;
          break;
        }
      }
      if (box === null) {
        box = boxAt(anchors[0]);
      }
      occupied.push(box);

      const label = svg("g", { class: "edge", "data-from": group.from, "data-to": group.to });
      label.append(svg("rect", { class: "label-bg", x: box.x, y: box.y, width: box.width, height: box.height, rx: 3 }));
      lines.forEach((line, i) => {
        label.append(svg("text", { x: box.x + width / 2, y: box.y + 2 + LABEL_LINE_HEIGHT * (i + 0.5) }, line));
      });
      labelLayer.append(label);
    }

    const nodeLayer = svg("g", { class: "nodes" });
    for (const state of states) {
      const position = positions.get(state);
      const node = svg("g", { class: "node", "data-state": state });
      node.append(
        svg("rect", {
          x: position.x - NODE_WIDTH / 2,
          y: position.y - NODE_HEIGHT / 2,
          width: NODE_WIDTH,
          height: NODE_HEIGHT,
          rx: 10,
        }),
        svg("text", { x: position.x, y: position.y }, state),
      );
      nodeLayer.append(node);
    }

    root.append(edgeLayer, nodeLayer, labelLayer);
    elements.diagram.replaceChildren(root);
    model.diagramSvg = root;
    highlightDiagram();
  }

  function highlightDiagram() {
    const root = model.diagramSvg;
    if (!root) {
      return;
    }
    const last = model.transitions[model.transitions.length - 1];
    // Status frames carry the machine state as `state`; the coarser `status` maps to it too.
    let current;
    if (model.status) {
      current = model.status.state ? String(model.status.state) : STATE_BY_STATUS[model.status.status];
    }
    if (!current && last) {
      current = last.to;
    }
    for (const node of root.querySelectorAll(".node")) {
      node.classList.toggle("current", node.dataset.state === current);
    }
    for (const edge of root.querySelectorAll(".edge")) {
      const isLast = Boolean(last) && edge.dataset.from === last.from && edge.dataset.to === last.to;
      edge.classList.toggle("last", isLast);
      const path = edge.querySelector("path");
      if (path) {
        path.setAttribute("marker-end", isLast ? "url(#arrow-last)" : "url(#arrow)");
      }
    }
  }

  async function loadDiagram() {
    if (model.diagram || model.diagramLoading) {
      return;
    }
    model.diagramLoading = true;
    try {
      const response = await fetch(withToken("/api/diagram"), { cache: "no-store" });
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      const diagram = await response.json();
      if (!diagram || !Array.isArray(diagram.states) || !Array.isArray(diagram.edges)) {
        throw new Error("expected {states: [...], edges: [...]}");
      }
      model.diagram = diagram;
      renderDiagram(diagram);
    } catch (error) {
      elements.diagram.replaceChildren(
        element("p", { class: "empty" }, "Could not load the state diagram (" + error.message + "); retrying on reconnect."),
      );
    } finally {
      model.diagramLoading = false;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The page's own WebSocket

  function isLinkOpen() {
    return link.socket !== null && link.socket.readyState === WebSocket.OPEN;
  }

  function send(message) {
    if (isLinkOpen()) {
      link.socket.send(JSON.stringify(message));
    }
    // While closed, nothing is queued: on reconnect the page resubscribes every row.
  }

  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + withToken("/ws");
  }

  function setLinkState(state, text) {
    elements.pageLink.dataset.link = state;
    elements.pageLink.textContent = text;
    elements.state.toggleAttribute("data-page-offline", state === "closed");
    updateSubscribeControls();
  }

  function connect() {
    clearTimeout(link.reconnectTimer);
    link.reconnectTimer = null;
    setLinkState("connecting", link.attempt > 0 ? "dashboard reconnecting…" : "dashboard connecting…");

    let socket;
    try {
      socket = new WebSocket(socketUrl());
    } catch (error) {
      scheduleReconnect("could not open " + socketUrl() + ": " + error.message);
      return;
    }
    link.socket = socket;

    socket.addEventListener("open", () => {
      link.attempt = 0;
      link.lastFrameAt = Date.now();
      elements.pageLinkBanner.hidden = true;
      setLinkState("open", "dashboard live");

      // The gateway keeps subscriptions per socket, so a new socket starts with none.
      const symbols = [...model.quotes.keys()];
      if (symbols.length > 0) {
        send({ type: "subscribe", symbols });
      }
      loadTransitions();
      loadDiagram();
    });

    socket.addEventListener("message", (event) => {
      link.lastFrameAt = Date.now();
      handleFrame(event.data);
    });

    socket.addEventListener("close", (event) => {
      if (link.socket !== socket) {
        return;
      }
      link.socket = null;
      const reason = event.reason ? ", " + event.reason : "";
      scheduleReconnect("closed with code " + event.code + reason);
    });
  }

  function scheduleReconnect(reason) {
    link.attempt += 1;
    const delay = Math.min(PAGE_BACKOFF_CAP_MS, PAGE_BACKOFF_BASE_MS * 2 ** (link.attempt - 1));
    const jittered = Math.round(delay * (1 + Math.random() * 0.2));
    link.reconnectAt = Date.now() + jittered;
    link.closeReason = reason;
    link.reconnectTimer = setTimeout(connect, jittered);
    setLinkState("closed", "dashboard offline");
    renderLinkBanner();
  }

  function renderLinkBanner() {
    if (link.socket !== null || link.reconnectTimer === null) {
      return;
    }
    const seconds = Math.max(0, Math.ceil((link.reconnectAt - Date.now()) / 1000));
    const stateNote = model.status ? "The state shown is the last one received." : "No status received yet.";
    setText(
      elements.pageLinkBanner,
      "This page lost its connection to tickgate (" + link.closeReason + "). " + stateNote + " Reconnecting in " +
        seconds + " s, attempt " + link.attempt + ".",
    );
    elements.pageLinkBanner.hidden = false;
  }

  // Pings a quiet socket, and drops it when even the ping gets no reply.
  function checkLinkLiveness() {
    if (!isLinkOpen()) {
      return;
    }
    const idle = Date.now() - link.lastFrameAt;
    if (idle > 2 * PAGE_IDLE_PING_MS) {
      const socket = link.socket;
      link.socket = null;
      socket.close();
      scheduleReconnect("no frame for " + Math.round(idle / 1000) + " s");
    } else if (idle > PAGE_IDLE_PING_MS && Date.now() - link.lastPingAt > PAGE_IDLE_PING_MS) {
      link.lastPingAt = Date.now();
      send({ type: "ping" });
    }
  }

  function handleFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (error) {
      console.debug("ignoring a frame that is not JSON", text);
      return;
    }
    if (frame === null || typeof frame !== "object") {
      console.debug("ignoring a frame that is not a JSON object", text);
      return;
    }
    switch (frame.type) {
      case "status":
        handleStatus(frame);
        break;
      case "ready":
        if (Array.isArray(frame.availableSymbols)) {
          updatePicker(frame.availableSymbols);
        }
        break;
      case "tick":
        handleTick(frame, text);
        break;
      case "subscribeResponse":
        handleSubscribeResponse(frame);
        break;
      case "unsubscribeResponse":
      case "pong":
      case "heartbeat":
        break;
      case "error":
        showError(frame);
        break;
      case "transition":
        mergeTransitions([normaliseTransition(frame)]);
        break;
      default:
        console.debug("ignoring a frame of unknown type", frame.type);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Start

  elements.subscribeForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const symbol = elements.picker.value;
    if (symbol) {
      subscribe(symbol);
    }
  });

  setInterval(() => {
    renderStatus();
    renderAges();
    renderLinkBanner();
    checkLinkLiveness();
  }, RENDER_INTERVAL_MS);

  loadDiagram();
  connect();
})();
