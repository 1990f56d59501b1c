// One workflow: its steps as a graph (SVG) and as a table.
import { api } from "../api.js";
import { badge, clear, h, jobLink, table, when } from "../ui.js";
import { workflowGraph } from "../graph.js";

export default async function workflowDetail(view, page) {
  const id = page.arg;
  let shown = null;
  const load = async () => {
    const reply = await api(`/ojs/v1/workflows/${encodeURIComponent(id)}`);
    if (!page.alive()) return;
    const wf = reply.workflow || reply;
    const steps = [...(wf.steps || []), ...Object.values(wf.callbacks || {})];
    const key = JSON.stringify([wf.state, steps.map((s) => s.state)]);
    if (key === shown) return;
    shown = key;
    clear(view,
      h("p", {}, h("a", { href: "#/workflows" }, "← workflows")),
      h("h1", {}, `${wf.name || wf.type} `, badge(wf.state)),
      h("p", { class: "muted" }, h("span", { class: "mono" }, wf.id), ` · ${wf.type} · created `, when(wf.created_at)),
      h("section", { class: "panel", id: "workflow-graph" }, workflowGraph(steps, {
        onOpen: (step) => { location.hash = `#/jobs/${encodeURIComponent(step.job_id)}`; },
      })),
      h("section", { class: "panel" }, table([
        { label: "Step", cell: (s) => s.id },
        { label: "Type", cell: (s) => s.type },
        { label: "State", cell: (s) => badge(s.state) },
        { label: "Depends on", cell: (s) => (s.depends_on || []).join(", ") || "–" },
        { label: "Job", cell: (s) => (s.job_id ? jobLink(s.job_id) : "–") },
      ], steps, { rowAttrs: (s) => ({ dataset: { step: s.id } }) })));
  };
  await load();
  page.every(3000, load);
}
