// Jobs: search with filters (kept in the URL), "load more" by cursor, live updates of the first
// page, and bulk retry/cancel/delete of the selected jobs or of everything matching the filter.
import { api, repeatWhileMore } from "../api.js";
import { action, badge, clear, confirmDialog, fmtNumber, h, jobLink, preview, tableRow, toast, when } from "../ui.js";

const STATES = ["", "available", "active", "scheduled", "retryable", "pending", "completed", "discarded", "cancelled"];
const FILTERS = ["queue", "state", "type", "since", "until", "worker", "error_type", "q"];
const ORDERS = { desc: "newest first", asc: "oldest first" };
const PER_PAGE = 50;
const REFRESH_CHOICES = { 1: "every 1 s", 3: "every 3 s", 10: "every 10 s", 0: "paused" };
const DEFAULT_REFRESH_S = 3;

function toIso(local) {
  if (!local) return "";
  const date = new Date(local);
  return Number.isNaN(date.getTime()) ? local : date.toISOString();
}

function toLocal(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

export default async function jobs(view, page) {
  const filter = {};
  for (const name of FILTERS) if (page.query.get(name)) filter[name] = page.query.get(name);
  const order = page.query.get("order") in ORDERS ? page.query.get("order") : "desc";
  const chosen = page.query.get("every");
  const refreshS = chosen !== null && chosen in REFRESH_CHOICES ? Number(chosen) : DEFAULT_REFRESH_S;

  const field = (name, label, input) => {
    input.name = name;
    input.id = `filter-${name}`;
    return h("label", {}, label, input);
  };
  const queueInput = h("input", { value: filter.queue || "", list: "queue-names", placeholder: "any" });
  const queueNames = h("datalist", { id: "queue-names" });
  const form = h("form", { class: "filters", id: "job-filters" },
    field("queue", "Queue", queueInput), queueNames,
    field("state", "State", h("select", {}, STATES.map((s) => h("option", { value: s, selected: (filter.state || "") === s }, s || "any")))),
    field("type", "Type (prefix*)", h("input", { value: filter.type || "", placeholder: "any" })),
    field("since", "Created after", h("input", { type: "datetime-local", value: toLocal(filter.since) })),
    field("until", "Created before", h("input", { type: "datetime-local", value: toLocal(filter.until) })),
    field("worker", "Worker", h("input", { value: filter.worker || "", placeholder: "any" })),
    field("error_type", "Error type", h("input", { value: filter.error_type || "", placeholder: "any" })),
    field("q", "Args / meta contain", h("input", { type: "search", value: filter.q || "", placeholder: "text" })),
    field("order", "Order", h("select", {}, Object.entries(ORDERS).map(([value, label]) => h("option", { value, selected: value === order }, label)))),
    h("div", { class: "toolbar" }, h("button", { type: "submit", class: "primary" }, "Search"),
      h("a", { href: "#/jobs", class: "button" }, "Reset")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const name of FILTERS) {
      let value = form.elements[name].value.trim();
      if (name === "since" || name === "until") value = toIso(value);
      if (value) params.set(name, value);
    }
    if (form.elements.order.value !== "desc") params.set("order", form.elements.order.value);
    if (refreshS !== DEFAULT_REFRESH_S) params.set("every", String(refreshS));
    location.hash = `#/jobs?${params}`;
  });

  const tbody = h("tbody", { id: "job-rows" });
  const status = h("span", { class: "muted", id: "job-count" });
  const live = h("select", { id: "refresh", title: "How often the list updates itself",
    onchange: () => {
      const params = new URLSearchParams(page.query);
      params.set("every", live.value);
      location.hash = `#/jobs?${params}`;
    } },
  Object.entries(REFRESH_CHOICES).map(([s, label]) => h("option", { value: s, selected: Number(s) === refreshS }, label)));
  const more = h("button", { type: "button", id: "load-more", hidden: true }, "Load more");
  const selectAll = h("input", { type: "checkbox", title: "Select all shown", class: "action" });
  const rows = new Map(); // id -> {job, tr, box}
  const selected = () => [...rows.values()].filter((r) => r.box && r.box.checked).map((r) => r.job.id);
  const hasFilter = Object.keys(filter).length > 0;

  const bulk = (verb) => async () => {
    const ids = selected();
    const scope = ids.length ? { ids } : { filter };
    if (!ids.length && !hasFilter) {
      toast("Select jobs or set a filter first: a bulk action never applies to every job.", true);
      return;
    }
    const endpoint = `/ojs/v1/admin/jobs/bulk/${verb}`;
    const dry = await api(endpoint, { method: "POST", body: { ...scope, dry_run: true, confirm: true } });
    const count = ids.length ? ids.length : `${fmtNumber(dry.matched)}${dry.has_more ? "+" : ""}`;
    const label = `${verb[0].toUpperCase()}${verb.slice(1)}`;
    const ok = await confirmDialog(`${label} jobs`,
      `${verb} ${count} ${ids.length ? "selected" : "matching"} job(s)?`, { confirmLabel: label, danger: verb !== "retry" });
    if (!ok) return;
    const total = await repeatWhileMore((cursor) => api(endpoint, {
      method: "POST", body: { ...scope, confirm: true, ...(cursor ? { cursor } : {}) },
    }));
    toast(`${verb}: ${fmtNumber(total.succeeded)} done${total.failed ? `, ${fmtNumber(total.failed)} failed` : ""}`, total.failed > 0);
    await reload();
  };

  const columns = [
    { label: "", cell: (job) => { const box = h("input", { type: "checkbox", class: "action select", value: job.id }); rows.get(job.id).box = box; return box; } },
    { label: "ID", cell: (job) => jobLink(job.id) },
    { label: "Type", cell: (job) => job.type },
    { label: "Queue", cell: (job) => job.queue },
    { label: "State", cell: (job) => badge(job.state) },
    { label: "Attempt", num: true, cell: (job) => `${job.attempt ?? 0}/${job.max_attempts ?? "?"}` },
    { label: "Created", cell: (job) => when(job.created_at) },
    { label: "Error", class: "clip", cell: (job) => (job.error ? `${job.error.type || ""}: ${preview(job.error.message, 120)}` : "") },
  ];

  const put = (job, { atTop = false } = {}) => {
    const known = rows.get(job.id);
    const entry = known || { job };
    entry.job = job;
    rows.set(job.id, entry);
    const checked = known && known.box ? known.box.checked : false;
    const tr = tableRow(columns, job, () => ({ dataset: { id: job.id, state: job.state } }));
    if (entry.box) entry.box.checked = checked;
    if (known) known.tr.replaceWith(tr);
    else if (atTop) tbody.prepend(tr);
    else tbody.append(tr);
    entry.tr = tr;
  };

  let cursor = null;
  let firstPage = null; // ids of the first page as last read
  const query = (extra) => ({ ...filter, per_page: PER_PAGE, order, ...extra });

  const loadPage = async () => {
    const first = cursor === null;
    const reply = await api("/ojs/v1/admin/jobs", { query: query({ cursor }) });
    if (!page.alive()) return;
    for (const job of reply.items || []) put(job);
    if (first) firstPage = new Set((reply.items || []).map((job) => job.id));
    const p = reply.pagination || {};
    cursor = p.next_cursor || null;
    more.hidden = !cursor;
    const total = p.total !== null && p.total !== undefined ? ` of ${fmtNumber(p.total)}` : "";
    status.textContent = `${fmtNumber(rows.size)}${total} shown${p.has_more && !(reply.items || []).length ? " (searching further: load more)" : ""}`;
    empty.hidden = rows.size > 0;
  };

  // The first page again: changed rows are redrawn in place, new jobs put on top, and a row of
  // the first page that is no longer in it is marked (it left the filter: its state changed,
  // or it was deleted) rather than shown as it was.
  const refresh = async () => {
    const reply = await api("/ojs/v1/admin/jobs", { query: query({}) });
    if (!page.alive()) return;
    const items = reply.items || [];
    for (const job of [...items].reverse()) {
      const known = rows.get(job.id);
      // A new job is the newest: on top when newest come first; oldest first, at the end once
      // the whole list is shown (before that, "load more" reaches it).
      if (!known) {
        if (order === "desc") put(job, { atTop: true });
        else if (cursor === null) put(job);
      }
      else if (known.job.state !== job.state || known.job.attempt !== job.attempt || known.tr.classList.contains("gone")) put(job);
    }
    const now = new Set(items.map((job) => job.id));
    for (const id of firstPage || []) {
      const row = rows.get(id);
      if (row && !now.has(id)) {
        row.tr.classList.add("gone");
        row.tr.title = "No longer matches the filter";
      }
    }
    firstPage = now;
    empty.hidden = rows.size > 0;
  };

  const reload = async () => {
    rows.clear();
    tbody.replaceChildren();
    cursor = null;
    await loadPage();
  };

  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      await loadPage();
    } finally {
      more.disabled = false;
    }
  });
  selectAll.addEventListener("change", () => {
    for (const r of rows.values()) if (r.box) r.box.checked = selectAll.checked;
  });

  const empty = h("div", { class: "empty", hidden: true }, "No jobs match.");
  const head = h("tr", {}, columns.map((c, i) => h("th", { class: c.num ? "num" : "" }, i === 0 ? selectAll : c.label)));
  clear(view,
    h("h1", {}, "Jobs"),
    h("section", { class: "panel" }, form),
    h("section", { class: "panel" },
      h("div", { class: "toolbar" }, status, live, h("span", { class: "spacer" }),
        action("Retry", bulk("retry"), { title: "selected jobs, or all matching the filter" }),
        action("Cancel", bulk("cancel"), { danger: true, title: "selected jobs, or all matching the filter" }),
        action("Delete", bulk("delete"), { danger: true, title: "selected jobs, or all matching the filter" })),
      h("table", { id: "jobs-table" }, h("thead", {}, head), tbody), empty, more));

  api("/ojs/v1/admin/queues", { query: { per_page: 100 } }).then((reply) => {
    if (page.alive()) clear(queueNames, (reply.items || []).map((q) => h("option", { value: q.name })));
  }).catch(() => {});
  await loadPage();
  if (refreshS > 0) page.every(refreshS * 1000, refresh);
}
