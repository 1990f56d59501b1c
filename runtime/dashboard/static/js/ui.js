// DOM helpers, formatting, dialogs and the large-value viewer. Text always goes in as text nodes.

export const session = { readOnly: false, manifest: {} };

// Whether the server's manifest lists an extension, in either of its shapes: `extensions` as
// {name: {...}} or as {official: [{name}], experimental: [{name}]}.
export function hasExtension(name) {
  const extensions = (session.manifest && session.manifest.extensions) || {};
  if (Object.prototype.hasOwnProperty.call(extensions, name)) return true;
  return Object.values(extensions).some((list) => Array.isArray(list) && list.some((e) => e && e.name === name));
}

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// A button that changes something: never made for a read-only key.
export function action(label, onclick, { danger = false, primary = false, title } = {}) {
  if (session.readOnly) return null;
  const classes = ["action", danger ? "danger" : "", primary ? "primary" : ""].filter(Boolean).join(" ");
  const button = h("button", { type: "button", class: classes, title });
  button.textContent = label;
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    button.disabled = true;
    try {
      await onclick(event);
    } catch (err) {
      toast(err.message || String(err), true);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

export function badge(state) {
  return h("span", { class: `badge ${state || ""}` }, state || "?");
}

export function toast(message, bad = false) {
  const box = document.getElementById("toasts");
  const item = h("div", { class: bad ? "toast bad" : "toast" }, message);
  box.append(item);
  setTimeout(() => item.remove(), bad ? 8000 : 4000);
}

export function errorBox(err) {
  return h("div", { class: "error-box" }, err.message || String(err));
}

// --- formatting -------------------------------------------------------------------------------

export function fmtNumber(n) {
  return n === undefined || n === null ? "–" : Number(n).toLocaleString("en-US");
}

export function fmtTime(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  const s = Math.abs(ms) / 1000;
  if (s < 1) return `${Math.round(Math.abs(ms))} ms`;
  if (s < 90) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

export function ago(iso) {
  if (!iso) return "–";
  const ms = Date.now() - new Date(iso).getTime();
  return ms >= 0 ? `${fmtDuration(ms)} ago` : `in ${fmtDuration(-ms)}`;
}

export function when(iso) {
  return iso ? h("span", { title: fmtTime(iso), class: "nowrap" }, ago(iso)) : "–";
}

export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// --- large values -----------------------------------------------------------------------------

export const PREVIEW_CHARS = 4000;

// A JSON value as text, cut at PREVIEW_CHARS with a link to show the rest (a 1 MB result would
// otherwise cost the page a long layout of text nobody asked to read).
export function valueView(value, { limit = PREVIEW_CHARS } = {}) {
  if (value === undefined) return h("span", { class: "muted" }, "none");
  const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  if (text === undefined) return h("span", { class: "muted" }, "none");
  const pre = h("pre", { class: "value" });
  if (text.length <= limit) {
    pre.textContent = text;
    return pre;
  }
  pre.textContent = text.slice(0, limit) + "…";
  const wrap = h("div", { class: "large-value" }, pre);
  const note = h("div", { class: "truncated-note" },
    `Showing ${fmtBytes(limit)} of ${fmtBytes(text.length)}. `,
    h("a", {
      href: "#", class: "expand",
      onclick: (event) => {
        event.preventDefault();
        pre.textContent = text;
        note.remove();
      },
    }, "Show all"));
  wrap.append(note);
  return wrap;
}

// A one-line preview for tables: never more than `chars` characters of JSON.
export function preview(value, chars = 80) {
  if (value === undefined || value === null) return "";
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > chars ? text.slice(0, chars) + "…" : text;
}

// --- dialogs ----------------------------------------------------------------------------------

// A modal dialog; `fields` are extra elements in its body. Resolves true on confirm, false on cancel.
export function confirmDialog(title, message, { confirmLabel = "Confirm", danger = false, fields = [] } = {}) {
  return new Promise((resolve) => {
    const confirm = h("button", { type: "submit", class: danger ? "primary danger confirm" : "primary confirm" }, confirmLabel);
    const cancel = h("button", { type: "button", class: "cancel" }, "Cancel");
    const form = h("form", {}, h("h2", {}, title), h("div", {}, message),
      h("div", { class: "fields" }, fields), h("div", { class: "buttons" }, cancel, confirm));
    const dialog = h("dialog", { class: "dialog" }, form);
    const finish = (ok) => {
      dialog.close();
      dialog.remove();
      resolve(ok);
    };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      finish(true);
    });
    cancel.addEventListener("click", () => finish(false));
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      finish(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    confirm.focus();
  });
}

// Asks for the API key; resolves with it (non-empty).
export function askKey(refused) {
  return new Promise((resolve) => {
    const input = h("input", { type: "password", name: "api-key", id: "api-key", autocomplete: "off", required: true });
    const form = h("form", {},
      h("h2", {}, "API key"),
      h("p", {}, refused ? "The server refused that key. Enter another one." : "This server needs an API key."),
      h("label", {}, "Key", input),
      h("p", { class: "muted" }, "Kept in this browser tab's session storage only."),
      h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary" }, "Use key")));
    const dialog = h("dialog", { class: "dialog", id: "key-dialog" }, form);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      dialog.close();
      dialog.remove();
      resolve(key);
    });
    dialog.addEventListener("cancel", (event) => event.preventDefault());
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
}

// --- tables -----------------------------------------------------------------------------------

// columns: [{label, cell(row) -> node|string, num?}]
export function table(columns, rows, { empty = "Nothing here.", rowAttrs } = {}) {
  if (!rows.length) return h("div", { class: "empty" }, empty);
  const head = h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : "" }, c.label)));
  const body = h("tbody", {}, rows.map((row) => tableRow(columns, row, rowAttrs)));
  return h("table", {}, h("thead", {}, head), body);
}

export function tableRow(columns, row, rowAttrs) {
  return h("tr", rowAttrs ? rowAttrs(row) : {},
    columns.map((c) => h("td", { class: c.num ? "num" : (c.class || "") }, c.cell(row))));
}

export function card(label, value, title) {
  return h("div", { class: "card", title }, h("div", { class: "label" }, label), h("div", { class: "value" }, value));
}

export function bar(fraction, className = "bar") {
  const fill = h("span");
  fill.style.width = `${Math.max(0, Math.min(1, fraction || 0)) * 100}%`;
  return h("div", { class: className }, fill);
}

export function jobLink(id) {
  return h("a", { href: `#/jobs/${encodeURIComponent(id)}`, class: "mono" }, id);
}
