/* sigmabatch console: plain JavaScript, no build step. It calls the same /api/v1 endpoints as
 * any client, with the bearer token the user signs in with (kept in sessionStorage only).
 * Views: sign in, portfolios, upload (problems shown at their cells), onboarding progress
 * (polled every 2 s, "status unavailable" only after the frontend contract's grace),
 * portfolio (charts, positions, factor exposures, risk when the API has it), operations. */
"use strict";
(() => {
  const TOKEN_KEY = "sigmabatch.token";
  const POLL_MS = 2000;              // the platform frontend polls onboarding status every 2 s
  const GRACE_NOT_FOUND = 5;         // "status unavailable" only after ≥5 not_found answers,
  const GRACE_MS = 10000;            // ≥10 s of polling, and never having seen `running`
  const FINISHED = new Set(["completed", "partial", "failed"]);
  const MAX_CSV_LINES_SHOWN = 400;

  const state = { me: null, timers: [], cleanups: [], lastUpload: null, spec: null };
  const main = document.getElementById("main");

  // ---------------------------------------------------------------- small helpers
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  /** Replace an element's children, skipping the null/false of conditional parts. */
  function put(el, ...nodes) {
    el.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
  }

  /** A decimal (string or number) to a fixed number of places, rounding half away from zero,
   * with thousands separators: money travels as strings, so no float rounding creeps in. */
  function fmtDec(value, dp = 2) {
    if (value === null || value === undefined || value === "") return "—";
    let s = typeof value === "number" ? String(value) : String(value).trim();
    if (/e/i.test(s)) s = Number(s).toFixed(dp + 6);
    let negative = s.startsWith("-");
    if (negative || s.startsWith("+")) s = s.slice(1);
    const [intPart, fracPart = ""] = s.split(".");
    const frac = (fracPart + "0".repeat(dp + 1)).slice(0, dp + 1);
    let units = BigInt((intPart || "0") + frac.slice(0, dp));
    if (Number(frac[dp]) >= 5) units += 1n;
    if (units === 0n) negative = false;
    const digits = units.toString().padStart(dp + 1, "0");
    const whole = digits.slice(0, digits.length - dp).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return (negative ? "-" : "") + whole + (dp ? "." + digits.slice(digits.length - dp) : "");
  }
  const money = (v) => fmtDec(v, 2);
  const pct = (fraction, dp = 2) =>
    fraction === null || fraction === undefined ? "—" : fmtDec(Number(fraction) * 100, dp) + "%";
  const signClass = (v) => (v === null || v === undefined ? "" : Number(v) < 0 ? "neg" : Number(v) > 0 ? "pos" : "");
  const when = (iso) => (iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 19) + "Z" : "—");
  const badge = (text, cls) => h("span", { class: `badge ${cls || text}` }, text);

  function toast(message) {
    const line = h("div", { class: "msg" }, message);
    document.getElementById("toast").append(line);
    setTimeout(() => line.remove(), 6000);
  }

  function confirmAction(text) {
    const dialog = document.getElementById("confirm");
    document.getElementById("confirm-text").textContent = text;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
    });
  }

  function every(ms, fn) { state.timers.push(setInterval(fn, ms)); }
  function stopAll() {
    state.timers.forEach(clearInterval);
    state.timers = [];
    state.cleanups.forEach((fn) => fn());
    state.cleanups = [];
  }

  // ---------------------------------------------------------------- the API
  class ApiError extends Error {
    constructor(status, body) {
      const detail = body && typeof body === "object" ? body.detail : body;
      super(typeof detail === "string" && detail ? detail : `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  async function api(path, { method = "GET", json, form, signOutOn401 = true } = {}) {
    const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
    let body;
    if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
    if (form !== undefined) body = form;
    const response = await fetch(path, { method, headers, body });
    const type = response.headers.get("content-type") || "";
    const data = type.includes("application/json") ? await response.json() : await response.text();
    if (!response.ok) {
      if (response.status === 401 && signOutOn401) signOut("Your token is no longer accepted (401): sign in again.");
      throw new ApiError(response.status, data);
    }
    return data;
  }

  async function apiSpec() {
    if (!state.spec) {
      try { state.spec = await (await fetch("/openapi.json")).json(); } catch { state.spec = { paths: {} }; }
    }
    return state.spec;
  }

  function errorBox(error, notFoundText) {
    let text = error instanceof ApiError ? error.message : `The API could not be reached: ${error.message}`;
    if (error.status === 404 && notFoundText) text = notFoundText;
    if (error.status === 403) text = "This needs an admin token (403): " + error.message;
    return h("div", { class: "error-box", role: "alert" }, text);
  }

  // ---------------------------------------------------------------- routing
  const routes = [
    [/^#\/signin$/, viewSignin],
    [/^#\/portfolios$/, viewPortfolios],
    [/^#\/upload$/, viewUpload],
    [/^#\/onboarding\/([0-9a-fA-F-]{36})$/, viewOnboarding],
    [/^#\/portfolio\/([0-9a-fA-F-]{36})$/, viewPortfolio],
    [/^#\/ops$/, viewOps],
  ];

  function render(...nodes) {
    put(main, ...nodes);
  }

  async function route() {
    stopAll();
    const hash = location.hash || "#/portfolios";
    const nav = document.getElementById("nav");
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      nav.hidden = true;
      return viewSignin();
    }
    if (!state.me) {
      try {
        state.me = await api("/api/v1/me");
      } catch (error) {
        if (error.status === 401) return;  // signOut already showed the sign-in page
        nav.hidden = true;
        return render(h("h1", {}, "sigmabatch console"), errorBox(error));
      }
    }
    nav.hidden = false;
    document.getElementById("nav-ops").hidden = !state.me.is_admin;
    document.getElementById("who").textContent = `${state.me.username}${state.me.is_admin ? " (admin)" : ""}`;
    for (const link of nav.querySelectorAll("a[data-nav]")) {
      if (hash.startsWith("#/" + link.dataset.nav)) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    for (const [pattern, view] of routes) {
      const match = hash.match(pattern);
      if (match) {
        await view(...match.slice(1));
        main.focus({ preventScroll: true });
        return;
      }
    }
    location.hash = "#/portfolios";
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.me = null;
    stopAll();
    document.getElementById("nav").hidden = true;
    viewSignin(message);
  }

  // ---------------------------------------------------------------- sign in
  function viewSignin(message) {
    const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "off",
                                required: true, placeholder: "sb_…" });
    const problem = h("div", { id: "signin-error" });
    if (message) problem.append(h("div", { class: "error-box", role: "alert" }, message));
    const form = h("form", { class: "stack", onsubmit: async (event) => {
      event.preventDefault();
      problem.replaceChildren();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      try {
        state.me = await api("/api/v1/me", { signOutOn401: false });
      } catch (error) {
        sessionStorage.removeItem(TOKEN_KEY);
        document.getElementById("nav").hidden = true;
        const text = error.status === 401
          ? "That token was not accepted (401): it is unknown or revoked. Create one with `sigmabatch token create --user NAME`."
          : error.status === 404
            ? "This server has no sigmabatch API at /api/v1 (404): open the console from the status API's address."
            : (error instanceof ApiError ? error.message : `The API could not be reached: ${error.message}`);
        problem.replaceChildren(h("div", { class: "error-box", role: "alert" }, text));
        return;
      }
      if (!location.hash || location.hash === "#/signin") location.hash = "#/portfolios";
      else route();
    } },
      h("label", { for: "token" }, "Bearer token", input),
      h("button", { type: "submit" }, "Sign in"),
      problem);
    render(h("h1", {}, "Sign in"),
      h("section", { class: "panel" },
        h("p", {}, "Paste an API token. `sigmabatch up` and `sigmabatch demo` print one for local use; ",
          "otherwise run `sigmabatch token create --user NAME` (add --admin for Operations). ",
          "The token stays in this tab only (sessionStorage)."),
        form));
    input.focus();
  }

  // ---------------------------------------------------------------- portfolios
  async function viewPortfolios() {
    render(h("h1", {}, "Portfolios"), h("p", { class: "loading" }, "Loading…"));
    let rows;
    // The landing view after sign-in: the user may have moved on while the list loaded, and a
    // late answer must not replace the view they went to.
    const stillHere = () => (location.hash || "#/portfolios") === "#/portfolios";
    try { rows = await api("/api/v1/portfolios"); } catch (error) { return stillHere() ? render(h("h1", {}, "Portfolios"), errorBox(error)) : undefined; }
    if (!stillHere()) return;
    const table = h("table", { id: "portfolios" },
      h("thead", {}, h("tr", {}, ["Name", "Positions", "Onboarding", "Latest snapshot", "Equity balance"].map(
        (c, i) => h("th", { class: i === 1 || i === 4 ? "num" : "" }, c)))),
      h("tbody", {}, rows.map((p) => h("tr", { dataset: { portfolio: p.portfolio_id } },
        h("td", {}, h("a", { href: p.onboarding_status === "running" ? `#/onboarding/${p.portfolio_id}` : `#/portfolio/${p.portfolio_id}` }, p.name)),
        h("td", { class: "num" }, p.position_count),
        h("td", {}, p.onboarding_status ? badge(p.onboarding_status) : "—"),
        h("td", {}, p.latest_snapshot_date || "—"),
        h("td", { class: "num" }, money(p.equity_balance))))));
    render(h("h1", {}, "Portfolios"),
      h("section", { class: "panel" },
        rows.length ? h("div", { class: "scroll" }, table) : h("p", {}, "No portfolio yet."),
        h("p", {}, h("a", { class: "button", href: "#/upload" }, "Upload a portfolio"))));
  }

  // ---------------------------------------------------------------- upload
  /** Split one CSV line into cells (quotes honoured) for showing the file as written. */
  function csvCells(line) {
    const cells = [];
    let cell = "", quoted = false;
    for (let i = 0; i < line.length; i++) {
      const c = line[i];
      if (quoted) {
        if (c === '"' && line[i + 1] === '"') { cell += '"'; i++; }
        else if (c === '"') quoted = false;
        else cell += c;
      } else if (c === '"') quoted = true;
      else if (c === ",") { cells.push(cell); cell = ""; }
      else cell += c;
    }
    cells.push(cell);
    return cells;
  }

  /** The file as the user wrote it, one table row per line (numbered as an editor numbers
   * them), each problem at its row and column. */
  function problemTable(text, problems) {
    const lines = text.replace(/^\uFEFF/, "").split(/\r\n|\n|\r/);
    if (lines.length && lines[lines.length - 1] === "") lines.pop();
    const headerIndex = lines.findIndex((l) => l.trim() && !l.trim().startsWith("#"));
    const header = headerIndex >= 0 ? csvCells(lines[headerIndex]).map((c) => c.trim()) : [];
    const width = Math.max(header.length, ...lines.map((l) => (l.trim().startsWith("#") ? 0 : csvCells(l).length)));
    const names = Array.from({ length: width }, (_, i) => header[i] || `#${i + 1}`);
    const byCell = new Map(), byRow = new Map();
    for (const p of problems) {
      if (!p.row) continue;
      const col = p.column ? names.findIndex((n) => n.toLowerCase() === String(p.column).trim().toLowerCase()) : -1;
      const key = col >= 0 ? `${p.row}:${col}` : null;
      const target = key ? byCell : byRow;
      const k = key || p.row;
      target.set(k, [...(target.get(k) || []), p.message]);
    }
    const problemRows = new Set(problems.filter((p) => p.row).map((p) => p.row));
    let shown = lines.map((_, i) => i + 1);
    if (lines.length > MAX_CSV_LINES_SHOWN) {   // a big file: the header and each problem's neighbourhood
      const keep = new Set([headerIndex + 1]);
      for (const r of problemRows) for (let d = -1; d <= 1; d++) keep.add(r + d);
      shown = [...keep].filter((n) => n >= 1 && n <= lines.length).sort((a, b) => a - b);
    }
    const body = [];
    let previous = 0;
    for (const n of shown) {
      if (n > previous + 1) body.push(h("tr", { class: "gap" }, h("td", { class: "line" }, "…"),
        h("td", { colspan: width, class: "muted" }, `${n - previous - 1} line(s) without problems`)));
      previous = n;
      const line = lines[n - 1];
      const comment = line.trim().startsWith("#");
      const rowProblems = byRow.get(n);
      const tr = h("tr", { dataset: { row: n }, class: [comment ? "comment" : "", problemRows.has(n) ? "err-row" : ""].join(" ").trim() || null },
        h("td", { class: "line", title: rowProblems ? rowProblems.join("\n") : null,
                  dataset: rowProblems ? { problem: rowProblems.join(" | ") } : {} }, n));
      if (comment) tr.append(h("td", { colspan: width }, line));
      else {
        const cells = csvCells(line);
        for (let i = 0; i < width; i++) {
          const messages = byCell.get(`${n}:${i}`);
          tr.append(h("td", {
            class: messages ? "err" : null, dataset: { row: n, col: names[i], ...(messages ? { problem: messages.join(" | ") } : {}) },
            title: messages ? messages.join("\n") : null, tabindex: messages ? 0 : null,
            "aria-label": messages ? `Line ${n}, ${names[i]}: ${messages.join("; ")}` : null,
          }, cells[i] ?? ""));
        }
      }
      body.push(tr);
    }
    return h("div", { class: "scroll" }, h("table", { class: "csv", id: "csv-problems" },
      h("thead", {}, h("tr", {}, h("th", { class: "num" }, "line"), names.map((n) => h("th", {}, n)))),
      h("tbody", {}, body)));
  }

  function viewUpload() {
    let file = null, text = "";
    const result = h("div", { id: "upload-result", "aria-live": "polite" });
    const chosen = h("p", { class: "muted", id: "chosen" }, "No file chosen.");
    const fileInput = h("input", { type: "file", id: "csv-file", accept: ".csv,text/csv", "aria-label": "CSV file" });
    const choose = async (f) => {
      if (!f) return;
      file = f;
      text = await f.text();
      chosen.textContent = `${f.name} (${fmtDec(f.size / 1024, 1)} KB)`;
      if (!nameInput.value) nameInput.value = f.name.replace(/\.csv$/i, "");
    };
    fileInput.addEventListener("change", () => choose(fileInput.files[0]));
    const drop = h("div", { class: "drop", id: "drop" },
      h("strong", {}, "Drop a CSV here"), " or choose one:", fileInput, chosen);
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files[0]); });
    const nameInput = h("input", { type: "text", id: "portfolio-name", name: "name", required: true });
    const equityInput = h("input", { type: "text", id: "equity-balance", name: "equity_balance", inputmode: "decimal",
                                     placeholder: "default: the positions' net entry value" });
    const submit = h("button", { type: "submit", id: "upload-submit" }, "Upload");
    const form = h("form", { class: "stack", onsubmit: async (event) => {
      event.preventDefault();
      result.replaceChildren();
      if (!file) { result.append(h("div", { class: "error-box", role: "alert" }, "Choose a CSV file first.")); return; }
      const data = new FormData();
      data.append("file", file, file.name);
      data.append("name", nameInput.value);
      if (equityInput.value.trim()) data.append("equity_balance", equityInput.value.trim());
      submit.disabled = true;
      try {
        const created = await api("/api/v1/portfolios", { method: "POST", form: data });
        state.lastUpload = created;
        location.hash = `#/onboarding/${created.portfolio_id}`;
      } catch (error) {
        if (error.status === 422 && error.body && Array.isArray(error.body.errors)) {
          const problems = error.body.errors;
          const general = problems.filter((p) => !p.row);
          put(result,
            h("div", { class: "error-box", role: "alert", id: "upload-rejected" }, error.body.detail),
            general.length ? h("ul", { id: "general-problems" }, general.map((p) =>
              h("li", {}, p.column ? `${p.column}: ` : "", p.message))) : null,
            problems.some((p) => p.row) ? h("section", { class: "panel" },
              h("h2", {}, "Your file, with each problem at its cell"),
              problemTable(text, problems),
              h("h2", {}, "Problems"),
              h("ol", { class: "problems", id: "problem-list" }, problems.filter((p) => p.row).map((p) =>
                h("li", {}, `line ${p.row}${p.column ? `, ${p.column}` : ""}: ${p.message}`)))) : null);
        } else if (error.status !== 401) result.append(errorBox(error));
      } finally { submit.disabled = false; }
    } },
      h("label", { for: "portfolio-name" }, "Portfolio name", nameInput),
      h("label", { for: "equity-balance" }, "Starting equity (optional)", equityInput),
      drop, submit);
    render(h("h1", {}, "Upload a portfolio"),
      h("section", { class: "panel" },
        h("p", { class: "muted" }, "Header: Symbol, Quantity, Entry Price Per Share, Entry Date, Investment Class, ",
          "Investment Subtype, Underlying Symbol, Strike Price, Expiration Date, Option Type, Exit Date, ",
          "Exit Price Per Share. Lines starting with # are comments. Any problem rejects the whole file; nothing is saved."),
        form),
      result);
  }

  // ---------------------------------------------------------------- onboarding progress
  function viewOnboarding(id) {
    const view = h("section", { class: "panel", id: "onboarding" }, h("p", {}, "Asking for the status…"));
    const note = h("p", { class: "muted", id: "poll-note" });
    render(h("h1", {}, "Onboarding"), view, note);
    const began = Date.now();
    let notFound = 0, seenRunning = false, timer = null, done = false;
    const stop = () => { if (timer) clearInterval(timer); timer = null; };
    state.cleanups.push(stop);

    const showUnavailable = () => {
      stop();
      put(view, 
        h("h2", { id: "status-unavailable" }, "Status unavailable"),
        h("p", {}, "The API has no onboarding status for this portfolio. It may have been created without an upload, ",
          "or belong to another user."),
        h("div", { class: "row-actions" },
          h("button", { type: "button", onclick: () => viewOnboarding(id) }, "Refresh"),
          h("a", { class: "button secondary", href: `#/portfolio/${id}` }, "View portfolio")));
    };

    const poll = async () => {
      if (done) return;
      let doc;
      try {
        doc = await api(`/api/v1/onboarding/status/${id}`);
        note.textContent = "";
      } catch (error) {
        if (error.status === 404) notFound += 1;
        else if (error.status === 401) return stop();
        else note.textContent = `The last poll failed (${error.message}); still polling every 2 s.`;
        if (notFound >= GRACE_NOT_FOUND && Date.now() - began >= GRACE_MS && !seenRunning) showUnavailable();
        return;
      }
      if (doc.status === "not_found") notFound += 1; else notFound = 0;
      if (doc.status === "running") seenRunning = true;
      if (doc.status === "not_found") {
        if (notFound >= GRACE_NOT_FOUND && Date.now() - began >= GRACE_MS && !seenRunning) showUnavailable();
        return;
      }
      renderStatus(view, doc, id);
      if (FINISHED.has(doc.status)) {
        done = true;
        stop();
        if (doc.status !== "failed") {
          const wait = setTimeout(() => { if (location.hash === `#/onboarding/${id}`) location.hash = `#/portfolio/${id}`; }, 1500);
          state.cleanups.push(() => clearTimeout(wait));
        }
      }
    };
    poll();
    timer = setInterval(poll, POLL_MS);   // fixed interval, as the platform's frontend
  }

  function renderStatus(view, doc, id) {
    const overall = doc.overall_progress || { percent_complete: 0 };
    const percent = Number(overall.percent_complete || 0);
    const mode = doc.mode === "v2_instant"
      ? ["instant", "every symbol was already known: the first snapshot was made with the upload"]
      : ["async", "new symbols are being fetched before the first snapshot"];
    put(view, 
      h("div", { class: "row-actions" },
        badge(doc.status), h("span", { id: "mode", dataset: { mode: doc.mode || "" } }, h("strong", {}, doc.mode || "—"), ` (${mode[0]}: ${mode[1]})`)),
      h("p", {}, `${overall.current_phase_name || ""} · ${fmtDec(percent, 0)}% · ${fmtDec(doc.elapsed_seconds || 0, 1)} s`),
      h("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": percent,
                 "aria-label": "Onboarding progress", id: "progress" }, h("span", { style: `width:${percent}%` })),
      h("ul", { class: "phases", id: "phases" }, (doc.phases || []).map((p) =>
        h("li", { dataset: { phase: p.phase_id } }, badge(p.status), h("span", {}, p.phase_name),
          h("span", { class: "muted" }, `${p.current}/${p.total} ${p.unit}`)))),
      doc.failed_symbols && doc.failed_symbols.length
        ? h("div", { class: "note" }, "Could not fetch: ", doc.failed_symbols.join(", ")) : null,
      doc.error ? h("div", { class: "error-box" }, doc.error) : null,
      h("h2", {}, "Activity"),
      h("ol", { class: "log", id: "activity" }, (doc.activity_log || []).map((line) =>
        h("li", { class: line.level }, `${when(line.timestamp)}  ${line.message}`))),
      FINISHED.has(doc.status)
        ? h("div", { class: "row-actions" },
            doc.status !== "failed" ? h("a", { class: "button", href: `#/portfolio/${id}`, id: "open-portfolio" }, "Open the portfolio") : null,
            doc.status === "failed" ? h("a", { class: "button", href: "#/upload" }, "Upload again") : null)
        : null);
  }

  // ---------------------------------------------------------------- portfolio
  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  function lineChart(container, title, xs, series) {
    if (typeof uPlot === "undefined" || !xs.length) return;
    const opts = {
      title, width: Math.max(280, container.clientWidth - 4), height: 240,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      scales: { x: { time: true } },
      series: [{}, ...series.map((s) => s.opts)],
      axes: [{}, ...series.filter((s) => s.axis).map((s) => s.axis)],
    };
    const chart = new uPlot(opts, [xs, ...series.map((s) => s.values)], container);
    const resize = () => chart.setSize({ width: Math.max(280, container.clientWidth - 4), height: 240 });
    window.addEventListener("resize", resize);
    state.cleanups.push(() => { window.removeEventListener("resize", resize); chart.destroy(); });
  }

  function figure(label, value, key, cls) {
    return h("div", { class: "figure" }, h("div", { class: "label" }, label),
      h("div", { class: `value ${cls || ""}`, dataset: { figure: key } }, value));
  }

  async function viewPortfolio(id) {
    render(h("h1", {}, "Portfolio"), h("p", { class: "loading" }, "Loading…"));
    let detail, snapshots, positions, factors;
    try {
      [detail, snapshots, positions, factors] = await Promise.all([
        api(`/api/v1/portfolios/${id}`), api(`/api/v1/portfolios/${id}/snapshots`),
        api(`/api/v1/portfolios/${id}/positions`),
        // 404 here means "no exposures yet" (the portfolio itself was found above)
        api(`/api/v1/portfolios/${id}/factor-exposures`).catch((error) => {
          if (error instanceof ApiError && error.status === 404) return { calculation_date: null, factors: [] };
          throw error;
        })]);
    } catch (error) {
      return render(h("h1", {}, "Portfolio"), errorBox(error, "Portfolio not found (404): it does not exist, or it belongs to another user."));
    }
    const latest = detail.latest_snapshot;
    const xs = snapshots.map((s) => Date.parse(s.snapshot_date + "T00:00:00Z") / 1000);
    const equityChart = h("div", { class: "chart", id: "chart-equity" });
    const pnlChart = h("div", { class: "chart", id: "chart-pnl" });
    const riskArea = h("div", { id: "risk-area" });
    render(
      h("h1", {}, detail.name, " ", detail.onboarding_status ? badge(detail.onboarding_status) : null),
      h("section", { class: "panel", id: "summary" },
        h("h2", {}, latest ? `As of ${latest.snapshot_date}` : "No snapshot yet"),
        latest ? h("div", { class: "figures" },
          figure("Equity", money(latest.equity), "equity"),
          figure("Net value", money(latest.total_value), "total_value"),
          figure("Gross exposure", money(latest.gross_exposure), "gross_exposure"),
          figure("Net exposure", money(latest.net_exposure), "net_exposure"),
          figure("Day P&L", money(latest.daily_pnl), "daily_pnl", signClass(latest.daily_pnl)),
          figure("Day return", pct(latest.daily_return), "daily_return", signClass(latest.daily_return)),
          figure("Cumulative P&L", money(latest.cumulative_pnl), "cumulative_pnl", signClass(latest.cumulative_pnl)),
          figure("Positions", String(detail.position_count), "position_count")) : h("p", {}, "The first snapshot is not made yet."),
        latest && (latest.has_stale_prices || latest.has_model_prices) ? h("p", { class: "note" },
          latest.has_stale_prices ? `Stale prices: ${latest.stale_symbols.join(", ")}. ` : "",
          latest.has_model_prices ? "Some positions are valued with a model price." : "") : null),
      h("div", { class: "grid two" },
        h("section", { class: "panel" }, h("h2", {}, "Equity and cumulative P&L"), equityChart,
          snapshots.length < 2 ? h("p", { class: "muted" }, `${snapshots.length} snapshot(s): the lines grow with each nightly batch.`) : null),
        h("section", { class: "panel" }, h("h2", {}, "Daily P&L"), pnlChart)),
      h("section", { class: "panel" }, h("h2", {}, "Positions"), positionsTable(positions)),
      h("section", { class: "panel", id: "factors" }, h("h2", {},
        `Factor exposures${factors.calculation_date ? " on " + factors.calculation_date : ""}`),
        factorBars(factors.factors)),
      riskArea);
    const equity = snapshots.map((s) => (s.equity === null ? null : Number(s.equity)));
    const cumulative = snapshots.map((s) => (s.cumulative_pnl === null ? null : Number(s.cumulative_pnl)));
    lineChart(equityChart, "", xs, [
      { values: equity, opts: { label: "Equity", stroke: "#1f5fbf", width: 2, scale: "eq" },
        axis: { scale: "eq", size: 80 } },
      { values: cumulative, opts: { label: "Cumulative P&L", stroke: "#d9734f", width: 2, scale: "pnl" },
        axis: { scale: "pnl", side: 1, size: 80, grid: { show: false } } }]);
    const daily = snapshots.map((s) => (s.daily_pnl === null ? null : Number(s.daily_pnl)));
    const bars = typeof uPlot !== "undefined" ? uPlot.paths.bars({ size: [0.6, 40] }) : undefined;
    lineChart(pnlChart, "", xs, [
      { values: daily.map((v) => (v !== null && v >= 0 ? v : null)),
        opts: { label: "Gain", fill: "#4f86d9", stroke: "#4f86d9", paths: bars, points: { show: false } },
        axis: { size: 80 } },
      { values: daily.map((v) => (v !== null && v < 0 ? v : null)),
        opts: { label: "Loss", fill: "#d9734f", stroke: "#d9734f", paths: bars, points: { show: false } } }]);
    if (latest) loadRisk(riskArea, id, latest.snapshot_date);
  }

  function positionsTable(positions) {
    const hasPnl = positions.some((p) => p.daily_pnl !== undefined);
    const heads = ["Line", "Symbol", "Class", "Quantity", "Price", "Source", "Market value", ...(hasPnl ? ["Day P&L"] : []), "Entry", "Entry date"];
    const numeric = new Set(["Line", "Quantity", "Price", "Market value", "Day P&L", "Entry"]);
    return h("div", { class: "scroll" }, h("table", { id: "positions" },
      h("thead", {}, h("tr", {}, heads.map((c) => h("th", { class: numeric.has(c) ? "num" : "" }, c)))),
      h("tbody", {}, positions.map((p) => h("tr", { dataset: { position: p.position_id, symbol: p.symbol } },
        h("td", { class: "num muted" }, p.source_row ?? ""),
        h("td", {}, p.symbol, p.exit_date ? h("span", { class: "muted" }, " (closed)") : null),
        h("td", {}, p.investment_class + (p.investment_subtype ? ` · ${p.investment_subtype}` : "")),
        h("td", { class: "num", dataset: { field: "quantity" } }, fmtDec(p.quantity, 4).replace(/\.?0+$/, "")),
        h("td", { class: "num", dataset: { field: "price" } }, p.price === null ? "—" : fmtDec(p.price, 4)),
        h("td", { dataset: { field: "price_source" } }, p.price_source ? badge(p.price_source) : "—"),
        h("td", { class: `num ${signClass(p.market_value)}`, dataset: { field: "market_value" } }, money(p.market_value)),
        hasPnl ? h("td", { class: `num ${signClass(p.daily_pnl)}`, dataset: { field: "daily_pnl" } }, money(p.daily_pnl)) : null,
        h("td", { class: "num" }, fmtDec(p.entry_price, 4)),
        h("td", {}, p.entry_date))))));
  }

  function factorBars(factors) {
    if (!factors.length) return h("p", { class: "muted" }, "No factor exposures yet (they come with the nightly refresh).");
    const scale = Math.max(...factors.map((f) => Math.abs(Number(f.exposure)))) || 1;
    return h("div", { class: "hbars", role: "list" }, factors.map((f) => {
      const beta = Number(f.exposure);
      const half = (Math.abs(beta) / scale) * 50;
      return h("div", { class: "hbar", role: "listitem", dataset: { factor: f.factor } },
        h("span", {}, f.display_name || f.factor),
        h("div", { class: "track", title: `beta ${fmtDec(beta, 3)}` },
          h("span", { class: "zero" }),
          h("span", { class: `fill ${beta < 0 ? "neg" : "pos"}`,
                      style: beta < 0 ? `right:50%;width:${half}%` : `left:50%;width:${half}%` })),
        h("span", { class: "amount" },
          h("span", { dataset: { field: "exposure" } }, fmtDec(beta, 3)), " · ",
          h("span", { class: signClass(f.exposure_dollar), dataset: { field: "exposure_dollar" } }, money(f.exposure_dollar))));
    }));
  }

  /** Risk, correlations and stress tests: shown when the API serves them; a 404 hides the panel. */
  async function loadRisk(area, id, date) {
    const spec = await apiSpec();
    const has = (suffix) => Object.keys(spec.paths || {}).includes(`/api/v1/portfolios/{portfolio_id}/${suffix}`);
    const get = async (suffix) => {
      if (!has(suffix)) return null;
      try { return await api(`/api/v1/portfolios/${id}/${suffix}?date=${date}`); } catch (error) {
        if (error.status !== 404) area.append(errorBox(error));
        return null;
      }
    };
    const [risk, correlations, stress] = await Promise.all([get("risk"), get("correlations"), get("stress-tests")]);
    const panels = [];
    if (risk) {
      const beta = risk.beta_regression || {};
      panels.push(h("section", { class: "panel", id: "risk" }, h("h2", {}, `Risk on ${risk.date || date}`),
        h("div", { class: "figures" },
          figure("Volatility 21d", pct(risk.volatility_21d), "volatility_21d"),
          figure("Volatility 63d", pct(risk.volatility_63d), "volatility_63d"),
          figure("Volatility forecast", pct(risk.volatility_forecast), "volatility_forecast"),
          figure("Beta (regression)", beta.beta === undefined || beta.beta === null ? "—" : fmtDec(beta.beta, 2), "beta"),
          figure("Beta (provider)", risk.beta_provider === null || risk.beta_provider === undefined ? "—" : fmtDec(risk.beta_provider, 2), "beta_provider"),
          figure("HHI", risk.hhi === null || risk.hhi === undefined ? "—" : fmtDec(risk.hhi, 4), "hhi"),
          figure("Effective positions", risk.effective_positions == null ? "—" : fmtDec(risk.effective_positions, 1), "effective_positions"),
          figure("Top 3 weight", pct(risk.top3_weight), "top3_weight"),
          figure("Top 10 weight", pct(risk.top10_weight), "top10_weight"))));
    }
    if (Array.isArray(stress) && stress.length) {
      panels.push(h("section", { class: "panel", id: "stress" }, h("h2", {}, "Stress tests"),
        h("div", { class: "scroll" }, h("table", {},
          h("thead", {}, h("tr", {}, ["Scenario", "Category", "Direct impact", "Correlated impact", "% of equity"].map(
            (c, i) => h("th", { class: i > 1 ? "num" : "" }, c)))),
          h("tbody", {}, stress.map((s) => h("tr", { dataset: { scenario: s.scenario } },
            h("td", {}, s.name || s.scenario), h("td", {}, s.category || ""),
            h("td", { class: `num ${signClass(s.direct_impact)}` }, money(s.direct_impact)),
            h("td", { class: `num ${signClass(s.correlated_impact)}` }, money(s.correlated_impact)),
            h("td", { class: "num" }, pct(s.impact_pct_of_equity)))))))));
    }
    if (correlations && Array.isArray(correlations.symbols) && correlations.symbols.length) {
      const symbols = correlations.symbols;
      const cell = (v) => {
        if (v === null || v === undefined) return h("td", { class: "muted" }, "·");
        const x = Math.max(-1, Math.min(1, Number(v)));
        const color = x >= 0 ? `rgba(31,95,191,${x * 0.85})` : `rgba(217,115,79,${-x * 0.85})`;
        return h("td", { style: `background:${color};color:${Math.abs(x) > 0.55 ? "#fff" : "inherit"}` }, fmtDec(x, 2));
      };
      panels.push(h("section", { class: "panel", id: "correlations" },
        h("h2", {}, "Correlations", correlations.window_sessions ? ` (${correlations.window_sessions} sessions)` : ""),
        correlations.average_correlation != null ? h("p", {}, `Average correlation ${fmtDec(correlations.average_correlation, 3)}`) : null,
        h("div", { class: "scroll" }, h("table", { class: "heat" },
          h("thead", {}, h("tr", {}, h("th", {}, ""), symbols.map((s) => h("th", {}, s)))),
          h("tbody", {}, symbols.map((s, i) => h("tr", {}, h("th", {}, s), (correlations.matrix[i] || []).map(cell))))))));
    }
    // risk and correlations side by side; the stress table is wide, so it takes a full row
    const stressPanel = panels.find((p) => p.id === "stress");
    const others = panels.filter((p) => p !== stressPanel);
    if (others.length) area.append(h("div", { class: "grid two" }, others));
    if (stressPanel) area.append(stressPanel);
  }

  // ---------------------------------------------------------------- operations
  async function viewOps() {
    if (!state.me.is_admin) return render(h("h1", {}, "Operations"),
      h("div", { class: "error-box" }, "Operations need an admin token (403): `sigmabatch token create --user NAME --admin`."));
    const running = h("div", { id: "running" }), failed = h("div", { id: "failed" });
    const dates = h("div", { id: "dates" }), busArea = h("div", { id: "bus" });
    const actionResult = h("p", { id: "action-result", "aria-live": "polite" });
    const dateInput = h("input", { type: "date", id: "rerun-date", "aria-label": "Date to re-run" });
    const post = async (what, path, json) => {
      if (!(await confirmAction(what))) return;
      try {
        const answer = await api(path, { method: "POST", json });
        const text = `${what.replace(/\?$/, "")}: accepted` + (answer && answer.message_id ? ` (${answer.message_id})` : "") +
          (answer && answer.published === false ? "; an identical request was already queued" : "");
        actionResult.textContent = text;
        toast(text);
        refresh();
      } catch (error) {
        if (error.status !== 401) { actionResult.textContent = `Refused: ${error.message} (HTTP ${error.status || "?"})`; toast(actionResult.textContent); }
      }
    };
    const retry = (job) => post(`Retry ${job.job_type} ${job.job_key}?`, `/api/v1/admin/jobs/${job.id}/retry`, undefined);
    render(h("h1", {}, "Operations"),
      h("section", { class: "panel" }, h("h2", {}, "Actions"),
        h("div", { class: "row-actions" },
          h("button", { type: "button", id: "trigger-nightly", onclick: () => post("Run the nightly batch now?", "/api/v1/admin/batch/nightly", {}) }, "Run the nightly batch"),
          h("label", { for: "rerun-date" }, "Date", dateInput),
          h("button", { type: "button", id: "rerun", class: "secondary", onclick: () => {
            if (!dateInput.value) { actionResult.textContent = "Choose the date to re-run first."; return; }
            post(`Re-run the batch for ${dateInput.value}?`, "/api/v1/admin/batch/nightly", { target_date: dateInput.value, rerun: true });
          } }, "Re-run the date"),
          h("button", { type: "button", class: "secondary", onclick: () => refresh() }, "Refresh")),
        actionResult),
      h("section", { class: "panel" }, h("h2", {}, "Running jobs"), running),
      h("section", { class: "panel" }, h("h2", {}, "Batch runs by date"), dates),
      h("section", { class: "panel" }, h("h2", {}, "Failed and dead-lettered jobs"), failed),
      h("section", { class: "panel" }, h("h2", {}, "Streams and consumer lag"), busArea));

    const jobTable = (jobs, withRetry) => jobs.length ? h("div", { class: "scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Type", "Key", withRetry ? "Error" : "Phase", withRetry ? "Finished" : "Progress", "Attempts", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, jobs.map((j) => {
        const dead = j.result && j.result.dead_letter;
        const share = j.progress.total ? Math.round((100 * j.progress.current) / j.progress.total) : 0;
        return h("tr", { dataset: { job: j.id } },
          h("td", {}, j.job_type, dead ? [" ", badge("dead-lettered", "dead")] : null),
          h("td", {}, j.job_key),
          withRetry ? h("td", { style: "white-space:normal;max-width:28rem" }, j.error || "")
                    : h("td", {}, j.current_phase || "—"),
          withRetry ? h("td", {}, when(j.finished_at))
                    : h("td", {}, h("div", { class: "bar", role: "progressbar", "aria-valuenow": share, "aria-valuemin": 0, "aria-valuemax": 100,
                                           "aria-label": `${j.job_type} progress`, style: "min-width:8rem" }, h("span", { style: `width:${share}%` })),
                      h("span", { class: "muted" }, `${j.progress.current}/${j.progress.total} ${j.progress.unit || ""}`)),
          h("td", { class: "num" }, j.attempts),
          h("td", {}, withRetry ? h("button", { type: "button", class: "small", onclick: () => retry(j) }, "Retry") : `${fmtDec(j.duration_seconds || 0, 1)} s`));
      })))) : h("p", { class: "muted" }, "None.");

    const loadRunning = async () => {
      try { running.replaceChildren(jobTable(await api("/api/v1/batch/jobs?status=running&limit=100"), false)); }
      catch (error) { if (error.status !== 401) running.replaceChildren(errorBox(error)); }
    };
    const loadBus = async () => {
      try {
        const b = await api("/api/v1/admin/bus");
        busArea.replaceChildren(h("div", { class: "scroll" },
          h("table", { id: "streams" }, h("thead", {}, h("tr", {}, ["Stream", "Messages", "Bytes"].map((c) => h("th", {}, c)))),
            h("tbody", {}, b.streams.map((s) => h("tr", {}, h("td", {}, s.stream), h("td", { class: "num" }, s.messages), h("td", { class: "num" }, s.bytes))))),
          h("table", { id: "consumers" }, h("thead", {}, h("tr", {}, ["Consumer", "Pending", "Ack pending", "Redelivered"].map((c) => h("th", {}, c)))),
            h("tbody", {}, b.consumers.map((c) => h("tr", { dataset: { consumer: c.consumer } }, h("td", {}, c.consumer),
              h("td", { class: "num" }, c.pending), h("td", { class: "num" }, c.ack_pending), h("td", { class: "num" }, c.redelivered)))))));
      } catch (error) { if (error.status !== 401) busArea.replaceChildren(errorBox(error)); }
    };
    const loadDates = async () => {
      let rows;
      try { rows = await api("/api/v1/admin/batch/dates?limit=60"); } catch (error) { if (error.status !== 401) dates.replaceChildren(errorBox(error)); return; }
      dates.replaceChildren(rows.length ? h("div", { class: "scroll" }, h("table", { id: "batch-dates" },
        h("thead", {}, h("tr", {}, ["Date", "Status", "Symbols", "Failed", "Run", "Phases (s)", "Refresh", ""].map((c) => h("th", {}, c)))),
        h("tbody", {}, rows.map((d) => h("tr", { dataset: { date: d.batch_date } },
          h("td", {}, d.batch_date), h("td", {}, badge(d.status)),
          h("td", { class: "num" }, d.symbols_total), h("td", { class: "num" }, d.symbols_failed),
          h("td", {}, d.run ? `${d.run.job_key} · ${fmtDec(d.run.duration_seconds, 1)} s` : "—"),
          h("td", { style: "white-space:normal" }, d.run ? d.run.phases.map((p) => `${p.name} ${p.seconds === null ? "—" : fmtDec(p.seconds, 2)}`).join(" · ") : "—"),
          h("td", {}, d.refresh ? `${d.refresh.status}, ${d.snapshots}/${d.refresh.planned} planned` : `${d.snapshots} snapshot(s)`),
          h("td", { style: "white-space:normal" }, d.failures.length ? h("details", {}, h("summary", {}, `${d.failures.length} failure(s)`),
            h("ul", { class: "failures" }, d.failures.map((f) => h("li", { dataset: { symbol: f.symbol } }, h("strong", {}, f.symbol), `: ${f.reason}`)))) : "")))))) :
        h("p", { class: "muted" }, "No batch date yet: run the nightly batch."));
    };
    const loadFailed = async () => {
      try { failed.replaceChildren(jobTable(await api("/api/v1/batch/jobs?status=failed&limit=50"), true)); }
      catch (error) { if (error.status !== 401) failed.replaceChildren(errorBox(error)); }
    };
    const refresh = () => Promise.all([loadRunning(), loadDates(), loadFailed(), loadBus()]);
    await refresh();
    every(POLL_MS, loadRunning);     // running jobs: live progress
    every(10000, loadBus);
  }

  // ---------------------------------------------------------------- start
  document.getElementById("signout").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", route);
  route();
})();
