// Dead letters: grouped by error type (and queue); retry or delete the selected ones or all
// matching the chosen group.
import { api, repeatWhileMore } from "../api.js";
import { action, clear, confirmDialog, fmtNumber, h, jobLink, preview, table, toast, when } from "../ui.js";

const PER_PAGE = 50;

function lastError(job) {
  const errors = job.errors || [];
  return job.error || errors[errors.length - 1] || {};
}

export default async function deadLetters(view, page) {
  const filter = {};
  for (const name of ["error_type", "queue"]) if (page.query.get(name)) filter[name] = page.query.get(name);
  const hasFilter = Object.keys(filter).length > 0;
  const go = (next) => {
    const params = new URLSearchParams(Object.entries(next).filter(([, v]) => v));
    location.hash = `#/dead-letters?${params}`;
  };

  const stats = await api("/ojs/v1/admin/dead-letter/stats");
  if (!page.alive()) return;
  const chips = (name, counts) => h("div", { class: "chips", id: `by-${name}` },
    Object.entries(counts || {}).sort((a, b) => b[1] - a[1]).map(([value, count]) => h("button", {
      type: "button", class: `chip${filter[name] === value ? " selected" : ""}`, dataset: { [name === "error_type" ? "errorType" : "queue"]: value },
      onclick: () => go({ ...filter, [name]: filter[name] === value ? "" : value }),
    }, value || "(none)", h("span", { class: "count" }, fmtNumber(count)))));

  const listBox = h("div", { id: "dead-letter-list" });
  const more = h("button", { type: "button", id: "load-more", hidden: true }, "Load more");
  const shown = [];
  const boxes = new Map();
  let cursor = null;

  const columns = [
    { label: "", cell: (job) => { const box = h("input", { type: "checkbox", class: "action select", value: job.id }); boxes.set(job.id, box); return box; } },
    { label: "ID", cell: (job) => jobLink(job.id) },
    { label: "Type", cell: (job) => job.type },
    { label: "Queue", cell: (job) => job.queue },
    { label: "Error type", cell: (job) => lastError(job).type || lastError(job).code || "–" },
    { label: "Message", class: "clip", cell: (job) => preview(lastError(job).message, 140) },
    { label: "Attempts", num: true, cell: (job) => job.attempt },
    { label: "Dead since", cell: (job) => when(job.discarded_at || job.completed_at) },
    { label: "", cell: (job) => action("Retry", () => retry({ ids: [job.id] }, `job ${job.id}`)) },
  ];

  const render = () => clear(listBox, table(columns, shown, { empty: "No dead letters match.", rowAttrs: (job) => ({ dataset: { id: job.id } }) }));
  const loadPage = async () => {
    const reply = await api("/ojs/v1/admin/dead-letter", { query: { ...filter, per_page: PER_PAGE, cursor } });
    if (!page.alive()) return;
    shown.push(...(reply.items || []));
    const p = reply.pagination || {};
    cursor = p.next_cursor || null;
    more.hidden = !(cursor && p.has_more !== false);
    render();
  };
  more.addEventListener("click", loadPage);

  const selected = () => [...boxes.entries()].filter(([, box]) => box.checked).map(([id]) => id);
  const scopeText = (ids) => (ids.length ? `${ids.length} selected dead letter(s)` : `all dead letters matching ${JSON.stringify(filter)}`);

  const retry = async (scope, what) => {
    if (!(await confirmDialog("Retry dead letters", `Retry ${what}? They go back to their queues.`, { confirmLabel: "Retry" }))) return;
    const total = await repeatWhileMore(() => api("/ojs/v1/admin/dead-letter/retry", { method: "POST", body: { ...scope, confirm: true } }));
    toast(`Retried ${fmtNumber(total.succeeded)}${total.failed ? `, ${fmtNumber(total.failed)} failed` : ""}`, total.failed > 0);
    await page.reshow(); // the group counts change too
  };
  const retryChosen = async () => {
    const ids = selected();
    if (!ids.length && !hasFilter) return toast("Select dead letters or pick a group first.", true);
    await retry(ids.length ? { ids } : { filter }, scopeText(ids));
  };
  const deleteChosen = async () => {
    const ids = selected();
    if (!ids.length && !hasFilter) return toast("Select dead letters or pick a group first.", true);
    if (!(await confirmDialog("Delete dead letters", `Delete ${scopeText(ids)}? This cannot be undone.`, { confirmLabel: "Delete", danger: true }))) return;
    let deleted = 0;
    if (ids.length) {
      for (const id of ids) {
        await api(`/ojs/v1/admin/dead-letter/${encodeURIComponent(id)}`, { method: "DELETE" });
        deleted += 1;
      }
    } else {
      deleted = (await repeatWhileMore((cursor) => api("/ojs/v1/admin/dead-letter", {
        method: "DELETE", body: { ...filter, confirm: true, ...(cursor ? { cursor } : {}) },
      }))).purged_count;
    }
    toast(`Deleted ${fmtNumber(deleted)}`);
    await page.reshow();
  };

  clear(view,
    h("h1", {}, "Dead letters ", h("span", { class: "muted", id: "dead-total" }, `(${fmtNumber(stats.total)})`)),
    h("section", { class: "panel" }, h("h2", {}, "By error type"), chips("error_type", stats.by_error_type),
      h("h2", {}, "By queue"), chips("queue", stats.by_queue)),
    h("section", { class: "panel" },
      h("div", { class: "toolbar" }, hasFilter ? h("span", {}, "Filter: ", JSON.stringify(filter), " ", h("a", { href: "#/dead-letters" }, "clear")) : h("span", { class: "muted" }, "All dead letters"),
        h("span", { class: "spacer" }),
        action("Retry", retryChosen, { primary: true, title: "selected, or all in the chosen group" }),
        action("Delete", deleteChosen, { danger: true, title: "selected, or all in the chosen group" })),
      listBox, more));
  await loadPage();
}
