// restmq dashboard. Plain HTTP against the server's own routes:
//   GET /stats/ every second (the table, the totals, the publish rates),
//   POST /q/<q> and GET /q/<q> (publish, take one), DELETE /q/<q> (purge),
//   POST /control/<q> status=stop|start, POST /p/<q> policy=...,
//   EventSource /sse/<q> (the live tail: a consumer).
// Everything that comes from the server or the user is put on the page with
// textContent or DOM properties, never parsed as HTML.
"use strict";

(() => {
  const POLL_MS = 1000;
  const HISTORY = 60; // rate samples kept per queue: about a minute
  const MIN_SAMPLE_MS = 900; // closer polls (after an action) update counts, not rates
  const TAIL_MAX = 200;
  const VALUE_MAX = 4000;
  const TOKEN_KEY = "restmq.token";
  const THEME_KEY = "restmq.theme";
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const queuePath = (name) => name.split("/").map(encodeURIComponent).join("/");

  // ---- small helpers -------------------------------------------------------

  const store = {
    get(key) {
      try { return localStorage.getItem(key) || ""; } catch { return ""; }
    },
    set(key, value) {
      try {
        if (value) localStorage.setItem(key, value); else localStorage.removeItem(key);
      } catch { /* storage disabled: the value lasts for this page only */ }
    },
  };
  let token = store.get(TOKEN_KEY);

  const fmtCount = (n) => (typeof n === "number" ? n.toLocaleString() : "–");
  const fmtRate = (r) => {
    if (r == null || !Number.isFinite(r)) return "–";
    if (r === 0) return "0/s";
    if (r < 10) return r.toFixed(1) + "/s";
    return Math.round(r).toLocaleString() + "/s";
  };

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  /** A failed request: status 0 when the server could not be reached. */
  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** What to tell a person about a failed request. */
  function explain(err) {
    if (!(err instanceof HttpError)) return String(err);
    switch (err.status) {
      case 0: return "Cannot reach the server.";
      case 401: return "Sign-in needed (401): enter an access token with the token button above, or the Basic credentials the browser asks for.";
      case 403: return "Refused (403): " + err.message;
      default: return err.status + ": " + err.message;
    }
  }

  /** A request to the server, with the token when one is set. */
  async function api(method, path, form) {
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (form) init.body = new URLSearchParams(form);
    let res;
    try {
      res = await fetch(path, init);
    } catch {
      throw new HttpError(0, "cannot reach the server");
    }
    const text = await res.text();
    if (!res.ok) {
      let message = text.trim();
      try {
        const json = JSON.parse(message);
        if (json && typeof json.error === "string") message = json.error;
      } catch { /* not JSON: the text as it is */ }
      throw new HttpError(res.status, message || res.statusText);
    }
    return { status: res.status, text };
  }

  function toast(message, bad) {
    const el = document.createElement("div");
    el.className = bad ? "toast bad" : "toast";
    el.setAttribute("role", bad ? "alert" : "status");
    el.textContent = message;
    $("toasts").append(el);
    setTimeout(() => el.remove(), bad ? 7000 : 3500);
  }

  function banner(message, bad) {
    const el = $("banner");
    if (!message) {
      el.hidden = true;
      return;
    }
    setText(el, message);
    el.classList.toggle("bad", !!bad);
    el.hidden = false;
  }

  function setConn(state, text) {
    $("conn").dataset.state = state;
    setText($("conn-text"), text);
  }

  // ---- sparklines ----------------------------------------------------------

  /** Draws `values` (newest last) into `box` as an inline SVG line and area. */
  function spark(box, values, label) {
    let svg = box.firstElementChild;
    if (!svg) {
      svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("viewBox", `0 0 ${HISTORY - 1} 20`);
      svg.setAttribute("preserveAspectRatio", "none");
      svg.setAttribute("role", "img");
      const base = document.createElementNS(SVG, "line");
      base.setAttribute("x1", "0");
      base.setAttribute("x2", String(HISTORY - 1));
      base.setAttribute("y1", "19.5");
      base.setAttribute("y2", "19.5");
      svg.append(document.createElementNS(SVG, "title"), base,
        document.createElementNS(SVG, "path"),
        document.createElementNS(SVG, "polyline"));
      box.append(svg);
    }
    const [title, , area, line] = svg.children;
    const peak = Math.max(0, ...values);
    const scale = peak > 0 ? 17 / peak : 0;
    const start = HISTORY - values.length;
    const points = values.map((v, i) => `${start + i},${(19 - v * scale).toFixed(2)}`);
    if (points.length === 1) points.unshift(`${start - 1},${(19 - values[0] * scale).toFixed(2)}`);
    line.setAttribute("points", points.join(" "));
    if (points.length) {
      const first = points[0].split(",")[0];
      area.setAttribute("d", `M${first},20 L${points.join(" L")} L${HISTORY - 1},20 Z`);
    } else {
      area.removeAttribute("d");
    }
    box.classList.toggle("idle", peak === 0);
    title.textContent = `${label}: peak ${fmtRate(peak)} over the last minute`;
  }

  // ---- the queue table -----------------------------------------------------

  /** name -> { row, cells, history, sample: {t, published}, info } */
  const queues = new Map();
  const totals = { history: [], sample: null };
  let order = "";

  function makeRow(name) {
    const row = $("row-template").content.firstElementChild.cloneNode(true);
    row.dataset.queue = name;
    const link = row.querySelector(".name a");
    link.href = "/j/" + queuePath(name);
    link.textContent = name;
    link.title = "Job view of " + name;
    const cells = {
      spark: row.querySelector(".rate .spark"),
      rate: row.querySelector(".rate-num"),
      len: row.querySelector(".len"),
      inflight: row.querySelector(".inflight"),
      delayed: row.querySelector(".delayed"),
      consumers: row.querySelector(".consumers"),
      waiting: row.querySelector(".waiting"),
      status: row.querySelector(".status .pill"),
      policy: row.querySelector(".policy .pill"),
      pause: row.querySelector(".act-pause"),
      switchPolicy: row.querySelector(".act-policy"),
      tail: row.querySelector(".act-tail"),
      purge: row.querySelector(".act-purge"),
    };
    const entry = { name, row, cells, history: [], sample: null, info: null };
    cells.pause.addEventListener("click", () => setStatus(entry));
    cells.switchPolicy.addEventListener("click", () => switchPolicy(entry));
    cells.tail.addEventListener("click", () => {
      $("tail-queue").value = name;
      startTail(name);
      $("tail-log").scrollIntoView({ behavior: "smooth", block: "nearest" });
    });
    cells.purge.addEventListener("click", () => purge(entry));
    cells.tail.title = "Tail " + name + " below (the tail consumes what it shows)";
    cells.purge.title = "Purge " + name + ": DELETE /q/" + name;
    spark(cells.spark, [], name);
    return entry;
  }

  function number(cell, value) {
    setText(cell, fmtCount(value));
    cell.classList.toggle("zero", !value);
  }

  function showStatus(entry, running) {
    const { status, pause } = entry.cells;
    setText(status, running ? "running" : "paused");
    status.className = "pill " + (running ? "running" : "paused");
    status.title = running ? "Streaming delivery runs" : "Streaming delivery is paused: GET and POST still work";
    setText(pause.firstElementChild, running ? "pause" : "resume");
    pause.classList.toggle("resume", !running);
    pause.title = (running ? "Pause streaming: " : "Resume streaming: ") + "POST /control/" + entry.name;
  }

  function showPolicy(entry, policy) {
    const { policy: pill, switchPolicy } = entry.cells;
    const roundrobin = policy === 2;
    setText(pill, roundrobin ? "roundrobin" : "broadcast");
    pill.className = "pill " + (roundrobin ? "roundrobin" : "broadcast");
    pill.title = roundrobin ? "Each streamed message goes to one consumer, in turn"
      : policy === 1 ? "Every streaming consumer gets every message"
        : "Never set: behaves as broadcast";
    const other = roundrobin ? "broadcast" : "roundrobin";
    setText(switchPolicy.firstElementChild, "switch to " + other);
    switchPolicy.title = "Switch to " + other + ": POST /p/" + entry.name;
  }

  function update(entry, q, now) {
    entry.info = q;
    const c = entry.cells;
    number(c.len, q.len);
    number(c.inflight, q.inflight);
    number(c.delayed, q.delayed);
    number(c.consumers, q.consumers);
    number(c.waiting, q.waiting);
    showStatus(entry, q.status === 1);
    showPolicy(entry, q.policy);
    c.tail.classList.toggle("on", !!tail && tail.queue === entry.name);
    if (typeof q.published === "number") {
      const rate = sample(entry, q.published, now);
      if (rate != null) {
        spark(c.spark, entry.history, entry.name);
        setText(c.rate, fmtRate(rate));
      }
      return rate;
    }
    return null;
  }

  /** Adds a rate sample when enough time passed since the last one. */
  function sample(holder, published, now) {
    const last = holder.sample;
    if (!last) {
      holder.sample = { t: now, published };
      return null;
    }
    const dt = now - last.t;
    if (dt < MIN_SAMPLE_MS) return null;
    const rate = Math.max(0, published - last.published) / (dt / 1000);
    holder.sample = { t: now, published };
    holder.history.push(rate);
    if (holder.history.length > HISTORY) holder.history.shift();
    return rate;
  }

  function render(stats, now) {
    const list = Object.values(stats.queues || {})
      .filter((q) => q && typeof q.name === "string")
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const seen = new Set();
    let sum = { len: 0, inflight: 0, consumers: 0, published: 0 };
    for (const q of list) {
      seen.add(q.name);
      let entry = queues.get(q.name);
      if (!entry) {
        entry = makeRow(q.name);
        queues.set(q.name, entry);
        if (order) entry.row.classList.add("flash");
      }
      update(entry, q, now);
      sum.len += q.len || 0;
      sum.inflight += q.inflight || 0;
      sum.consumers += q.consumers || 0;
      sum.published += q.published || 0;
    }
    for (const [name, entry] of queues) {
      if (!seen.has(name)) {
        entry.row.remove();
        queues.delete(name);
      }
    }
    const names = list.map((q) => q.name);
    const key = names.join("\u0000");
    if (key !== order) {
      order = key;
      const body = $("queue-rows");
      for (const name of names) body.append(queues.get(name).row);
      const datalist = $("queue-names");
      datalist.replaceChildren(...names.map((name) => {
        const option = document.createElement("option");
        option.value = name;
        return option;
      }));
      applyFilter();
    }
    setText($("t-queues"), fmtCount(list.length));
    setText($("t-len"), fmtCount(sum.len));
    setText($("t-inflight"), fmtCount(sum.inflight));
    setText($("t-consumers"), fmtCount(sum.consumers));
    const rate = sample(totals, sum.published, now);
    if (rate != null) {
      setText($("t-rate"), fmtRate(rate));
      spark($("t-spark"), totals.history, "all queues");
    }
    setText($("store"), typeof stats.redis === "string" ? stats.redis : "");
    $("store").title = "Store: " + $("store").textContent;
    showTailState();
  }

  function applyFilter() {
    const needle = $("filter").value.trim().toLowerCase();
    let shown = 0;
    for (const entry of queues.values()) {
      const hide = !!needle && !entry.name.toLowerCase().includes(needle);
      entry.row.hidden = hide;
      if (!hide) shown += 1;
    }
    const empty = $("empty");
    empty.hidden = shown > 0;
    setText(empty, queues.size === 0
      ? "No queues yet: publish a message and its queue appears here."
      : "No queue matches the filter.");
  }

  // ---- polling -------------------------------------------------------------

  let timer = 0;
  let polling = false;
  let again = false;

  async function poll() {
    if (polling) {
      again = true;
      return;
    }
    polling = true;
    clearTimeout(timer);
    try {
      const { text } = await api("GET", "/stats/");
      render(JSON.parse(text), performance.now());
      setConn("live", "live");
      banner("");
    } catch (err) {
      if (err instanceof HttpError && (err.status === 401 || err.status === 403)) {
        setConn("auth", err.status === 401 ? "sign-in needed" : "refused");
        banner(explain(err) + (err.status === 403
          ? " The queue table needs the right to list every queue (a token with admin on *, or the rest:consumer rules)."
          : ""));
      } else if (err instanceof HttpError && err.status === 0) {
        setConn("offline", "offline");
        banner("Cannot reach the server: retrying every second.", true);
      } else {
        setConn("offline", "error");
        banner("The statistics could not be read: " + explain(err), true);
      }
    } finally {
      polling = false;
      if (again) {
        again = false;
        poll();
      } else {
        timer = setTimeout(poll, POLL_MS);
      }
    }
  }

  // ---- actions -------------------------------------------------------------

  async function setStatus(entry) {
    const running = entry.cells.status.textContent === "running";
    const status = running ? "stop" : "start";
    entry.cells.pause.disabled = true;
    try {
      const { text } = await api("POST", "/control/" + queuePath(entry.name), { status });
      const stat = JSON.parse(text).stat;
      if (!stat || typeof stat !== "object") throw new Error(String(stat));
      showStatus(entry, stat.status === 1);
      toast((stat.status === 1 ? "Resumed " : "Paused ") + entry.name);
    } catch (err) {
      toast("Could not " + (running ? "pause " : "resume ") + entry.name + ": " + explain(err), true);
    } finally {
      entry.cells.pause.disabled = false;
      poll();
    }
  }

  async function switchPolicy(entry) {
    const policy = entry.cells.policy.textContent === "roundrobin" ? "broadcast" : "roundrobin";
    entry.cells.switchPolicy.disabled = true;
    try {
      const { text } = await api("POST", "/p/" + queuePath(entry.name), { policy });
      if (text.trim() !== "OK") throw new Error("the server answered " + text.trim());
      showPolicy(entry, policy === "roundrobin" ? 2 : 1);
      toast(entry.name + " is now " + policy);
    } catch (err) {
      toast("Could not set the policy of " + entry.name + ": " + explain(err), true);
    } finally {
      entry.cells.switchPolicy.disabled = false;
      poll();
    }
  }

  /** Asks in a modal dialog; resolves true when confirmed. */
  function confirmPurge(name, len) {
    const dialog = $("confirm");
    setText($("confirm-title"), "Purge this queue?");
    const code = document.createElement("code");
    code.textContent = name;
    const what = len === 0 ? ["No message is waiting in ", code, "; purging closes its streams."]
      : typeof len === "number"
        ? ["Deletes the ", len.toLocaleString(), len === 1 ? " message" : " messages", " waiting in ", code,
          " and closes its streams. This cannot be undone."]
        : ["Deletes every message waiting in ", code, " and closes its streams. This cannot be undone."];
    $("confirm-text").replaceChildren(...what, " The queue stays listed and its numbering continues.");
    return new Promise((resolve) => {
      dialog.returnValue = "";
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.showModal();
      $("confirm-cancel").focus();
    });
  }

  async function purge(entry) {
    if (!(await confirmPurge(entry.name, entry.info && entry.info.len))) return;
    entry.cells.purge.disabled = true;
    try {
      const { text } = await api("DELETE", "/q/" + queuePath(entry.name));
      const answer = JSON.parse(text);
      toast(answer.status === 1 ? "Purged " + entry.name : entry.name + " had nothing waiting");
    } catch (err) {
      toast("Could not purge " + entry.name + ": " + explain(err), true);
    } finally {
      entry.cells.purge.disabled = false;
      poll();
    }
  }

  function output(text, kind) {
    const out = $("pub-out");
    out.textContent = text;
    out.className = "out" + (kind ? " " + kind : "");
  }

  $("publish").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("pub-queue").value.trim();
    const value = $("pub-value").value;
    if (!name) return;
    const form = { value };
    for (const [field, id] of [["ttl", "pub-ttl"], ["delay", "pub-delay"]]) {
      const v = $(id).value.trim();
      if (v) form[field] = v;
    }
    const button = $("pub-send");
    button.disabled = true;
    try {
      const { text } = await api("POST", "/q/" + queuePath(name), form);
      output("published " + text.trim().split("\n").join(", "), "ok");
      $("pub-value").value = "";
      $("pub-value").focus();
    } catch (err) {
      output(explain(err), "bad");
    } finally {
      button.disabled = false;
      poll();
    }
  });

  $("take").addEventListener("click", async () => {
    const name = $("pub-queue").value.trim();
    if (!name) {
      $("pub-queue").focus();
      return;
    }
    try {
      const { status, text } = await api("GET", "/q/" + queuePath(name));
      if (status === 204) {
        output(name + " is empty");
      } else {
        const message = JSON.parse(text);
        output("took " + message.key + ": " + String(message.value).slice(0, VALUE_MAX), "ok");
      }
    } catch (err) {
      output(explain(err), "bad");
    } finally {
      poll();
    }
  });

  // ---- the live tail -------------------------------------------------------

  /** The tail in progress: { queue, source, state } or null. */
  let tail = null;

  function showTailState() {
    const el = $("tail-state");
    let state = "off";
    let text = "off";
    if (tail) {
      const entry = queues.get(tail.queue);
      const paused = entry && entry.info && entry.info.status !== 1;
      if (tail.state === "live" && paused) {
        state = "paused";
        text = "queue paused";
      } else {
        state = tail.state;
        text = { connecting: "connecting…", live: "live", retrying: "reconnecting…" }[tail.state] || tail.state;
      }
    }
    el.dataset.state = state;
    setText(el, text);
    $("tail-stop").disabled = !tail;
    for (const entry of queues.values()) {
      entry.cells.tail.classList.toggle("on", !!tail && tail.queue === entry.name);
    }
  }

  function logLine(parts, event) {
    const log = $("tail-log");
    const li = document.createElement("li");
    li.className = event ? "event new" : "new";
    const time = document.createElement("time");
    const now = new Date();
    time.dateTime = now.toISOString();
    time.textContent = now.toLocaleTimeString([], { hour12: false });
    li.append(time, ...parts);
    log.prepend(li);
    while (log.children.length > TAIL_MAX) log.lastElementChild.remove();
  }

  function logEvent(text) {
    const span = document.createElement("span");
    span.textContent = text;
    logLine([span], true);
  }

  function logMessage(key, value) {
    const k = document.createElement("span");
    k.className = "key";
    k.textContent = key;
    const v = document.createElement("span");
    v.className = "value";
    v.textContent = value.length > VALUE_MAX ? value.slice(0, VALUE_MAX) + "…" : value;
    logLine([k, v], false);
  }

  function stopTail(say) {
    if (!tail) return;
    tail.source.close();
    if (say) logEvent("stopped tailing " + tail.queue);
    tail = null;
    showTailState();
  }

  function startTail(name) {
    stopTail(false);
    let url = "/sse/" + queuePath(name);
    if (token) url += "?access_token=" + encodeURIComponent(token);
    const source = new EventSource(url, { withCredentials: true });
    const current = { queue: name, source, state: "connecting", opened: false };
    tail = current;
    source.onopen = () => {
      if (tail !== current) return;
      if (!current.opened) logEvent("tailing " + name + ": messages published to it now appear here");
      current.opened = true;
      current.state = "live";
      showTailState();
    };
    source.onmessage = (ev) => {
      if (tail !== current) return;
      let key = ev.lastEventId;
      let value = ev.data;
      try {
        const message = JSON.parse(ev.data);
        if (message && typeof message === "object") {
          if (typeof message.key === "string") key = message.key;
          value = typeof message.value === "string" ? message.value : JSON.stringify(message.value);
        }
      } catch { /* not JSON: shown as it came */ }
      logMessage(key, value);
    };
    source.addEventListener("deleted", () => {
      if (tail === current) logEvent(name + " was purged: the stream reconnects");
    });
    source.addEventListener("gap", () => {
      if (tail === current) logEvent("some messages streamed while the tail was away are no longer available to resume");
    });
    source.onerror = () => {
      if (tail !== current) return;
      if (source.readyState === EventSource.CLOSED) {
        logEvent("the server refused the stream of " + name +
          " (a token needs the consume right on it; an ACL file, the comet:consumer rules)");
        toast("The live tail of " + name + " was refused", true);
        tail = null;
      } else {
        current.state = "retrying";
      }
      showTailState();
    };
    showTailState();
  }

  $("tail-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = $("tail-queue").value.trim();
    if (name) startTail(name);
  });
  $("tail-stop").addEventListener("click", () => stopTail(true));
  $("tail-clear").addEventListener("click", () => $("tail-log").replaceChildren());

  // ---- token and theme -----------------------------------------------------

  function showToken() {
    setText($("token-label"), token ? "token set" : "token");
    $("token-toggle").classList.toggle("on", !!token);
  }

  $("token-toggle").addEventListener("click", () => {
    const panel = $("token-panel");
    panel.hidden = !panel.hidden;
    $("token-toggle").setAttribute("aria-expanded", String(!panel.hidden));
    if (!panel.hidden) {
      $("token").value = token;
      $("token").focus();
    }
  });

  function useToken(value) {
    token = value;
    store.set(TOKEN_KEY, token);
    showToken();
    $("token-panel").hidden = true;
    $("token-toggle").setAttribute("aria-expanded", "false");
    if (tail) startTail(tail.queue);
    poll();
  }

  $("token-panel").addEventListener("submit", (ev) => {
    ev.preventDefault();
    useToken($("token").value.trim());
    toast(token ? "Token saved in this browser" : "Token cleared");
  });
  $("token-clear").addEventListener("click", () => {
    $("token").value = "";
    useToken("");
    toast("Token forgotten");
  });

  const THEMES = ["auto", "light", "dark"];
  function applyTheme(theme) {
    if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
    else delete document.documentElement.dataset.theme;
    setText($("theme-label"), THEMES.includes(theme) ? theme : "auto");
  }
  $("theme").addEventListener("click", () => {
    const current = store.get(THEME_KEY) || "auto";
    const next = THEMES[(THEMES.indexOf(current) + 1) % THEMES.length];
    store.set(THEME_KEY, next === "auto" ? "" : next);
    applyTheme(next);
  });

  $("filter").addEventListener("input", applyFilter);

  applyTheme(store.get(THEME_KEY));
  showToken();
  showTailState();
  applyFilter();
  poll();
})();
