// Minimal dashboard: shows the feed status, the latest tick per symbol and recent transitions.
"use strict";

const MAX_TRANSITIONS = 100;
const statusEl = document.getElementById("status");
const reasonEl = document.getElementById("reason");
const ticksEl = document.getElementById("ticks");
const transitionsEl = document.getElementById("transitions");
const rows = new Map();

function addTransition(t) {
  const item = document.createElement("li");
  item.textContent = `${new Date(t.at).toISOString()} ${t.from} -> ${t.to}: ${t.cause}`;
  transitionsEl.prepend(item);
  while (transitionsEl.children.length > MAX_TRANSITIONS) {
    transitionsEl.lastChild.remove();
  }
}

function showTick(tick) {
  let row = rows.get(tick.symbol);
  if (!row) {
    row = document.createElement("tr");
    for (let i = 0; i < 4; i += 1) row.appendChild(document.createElement("td"));
    rows.set(tick.symbol, row);
    ticksEl.appendChild(row);
  }
  const cells = row.children;
  cells[0].textContent = tick.symbol;
  cells[1].textContent = tick.bid;
  cells[2].textContent = tick.ask;
  cells[3].textContent = new Date(tick.timestamp).toISOString();
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws${location.search}`);

  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type === "status") {
      statusEl.textContent = frame.status;
      reasonEl.textContent = frame.reason ? `(${frame.reason})` : "";
    } else if (frame.type === "ready") {
      socket.send(JSON.stringify({ type: "subscribe", symbols: frame.availableSymbols.slice(0, 10) }));
    } else if (frame.type === "tick") {
      showTick(frame);
    } else if (frame.type === "transition") {
      addTransition(frame);
    }
  };

  socket.onclose = (event) => {
    statusEl.textContent = `gateway closed (${event.code}); retrying`;
    setTimeout(connect, 2000);
  };
}

fetch("/api/transitions")
  .then((response) => response.json())
  .then((list) => list.forEach(addTransition))
  .catch(() => {});
connect();
