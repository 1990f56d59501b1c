// Workflows: the list, filtered by state, with step counts.
import { api } from "../api.js";
import { badge, clear, fmtNumber, h, table, when } from "../ui.js";

const STATES = ["", "running", "completed", "failed", "cancelled"];

function stepCounts(w) {
  if (w.counts) return Object.entries(w.counts).filter(([, n]) => n).map(([k, n]) => `${k} ${fmtNumber(n)}`).join(" · ") || "–";
  if (w.total === undefined) return "–";
  return `${fmtNumber(w.completed || 0)}/${fmtNumber(w.total)} done${w.failed ? ` · ${fmtNumber(w.failed)} failed` : ""}`;
}

export default async function workflows(view, page) {
  const state = page.query.get("state") || "";
  const box = h("div", { id: "workflow-table" });
  const more = h("button", { type: "button", id: "load-more", hidden: true }, "Load more");
  const select = h("select", { id: "workflow-state", onchange: () => { location.hash = select.value ? `#/workflows?state=${select.value}` : "#/workflows"; } },
    STATES.map((s) => h("option", { value: s, selected: s === state }, s || "any state")));
  clear(view, h("h1", {}, "Workflows"), h("section", { class: "panel" }, h("div", { class: "toolbar" }, h("label", {}, "State ", select)), box, more));
  const shown = [];
  let cursor = null;
  const columns = [
    { label: "ID", cell: (w) => h("a", { href: `#/workflows/${encodeURIComponent(w.id)}`, class: "mono" }, w.id) },
    { label: "Name", cell: (w) => w.name || "–" },
    { label: "Type", cell: (w) => w.type },
    { label: "State", cell: (w) => badge(w.state) },
    { label: "Steps", cell: stepCounts },
    { label: "Created", cell: (w) => when(w.created_at) },
  ];
  const load = async () => {
    const reply = await api("/ojs/v1/workflows", { query: { state, cursor, per_page: 50 } });
    if (!page.alive()) return;
    shown.push(...(reply.items || []));
    cursor = (reply.pagination || {}).next_cursor || null;
    more.hidden = !cursor;
    clear(box, table(columns, shown, { empty: "No workflows.", rowAttrs: (w) => ({ dataset: { workflow: w.id } }) }));
  };
  more.addEventListener("click", load);
  await load();
}
