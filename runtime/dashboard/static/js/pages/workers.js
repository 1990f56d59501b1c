// Workers and pools: slots busy/free, heartbeats, the jobs a worker holds, quiet and deregister.
import { api } from "../api.js";
import { action, badge, bar, card, clear, confirmDialog, errorBox, fmtDuration, fmtNumber, h, hasExtension, jobLink, table, toast, when } from "../ui.js";

function slots(busy, total) {
  if (!total) return `${fmtNumber(busy)} busy`;
  return h("div", { class: "slots" }, bar(busy / total), h("span", { class: "muted" }, `${fmtNumber(busy)} busy / ${fmtNumber(Math.max(0, total - busy))} free`));
}

export default async function workers(view, page) {
  const summaryBox = h("div", { class: "cards", id: "worker-summary" });
  const poolsBox = h("div", { id: "pools" });
  const workersBox = h("div", { id: "workers-table" });
  const jobsBox = h("div", { id: "worker-jobs" });
  let opened = page.query.get("worker");
  clear(view, h("h1", {}, "Workers and pools"), summaryBox,
    h("section", { class: "panel" }, h("h2", {}, "Pools"), poolsBox),
    h("section", { class: "panel" }, h("h2", {}, "Workers"), workersBox),
    jobsBox);

  const showJobs = async (id) => {
    opened = id;
    const detail = await api(`/ojs/v1/admin/workers/${encodeURIComponent(id)}`);
    if (!page.alive() || opened !== id) return;
    clear(jobsBox, h("section", { class: "panel" }, h("h2", {}, `Jobs held by ${id}`), table([
      { label: "ID", cell: (job) => jobLink(job.id) },
      { label: "Type", cell: (job) => job.type },
      { label: "Queue", cell: (job) => job.queue },
      { label: "State", cell: (job) => badge(job.state) },
      { label: "Started", cell: (job) => when(job.started_at) },
    ], detail.jobs || [], { empty: "No current jobs." })));
  };

  const quiet = async (id) => {
    if (!(await confirmDialog("Quiet worker", `Stop ${id} fetching new jobs? It finishes what it holds.`, { confirmLabel: "Quiet" }))) return;
    await api(`/ojs/v1/admin/workers/${encodeURIComponent(id)}/quiet`, { method: "POST" });
    toast(`${id}: quiet`);
    await load();
  };
  const deregister = async (id) => {
    if (!(await confirmDialog("Deregister worker", `Remove stale ${id} and requeue its jobs?`, { confirmLabel: "Deregister", danger: true }))) return;
    const reply = await api(`/ojs/v1/admin/workers/${encodeURIComponent(id)}`, { method: "DELETE" });
    toast(`${id}: deregistered, ${fmtNumber(reply.requeued)} job(s) requeued`);
    await load();
  };

  const load = async () => {
    // The pools are shown apart: a failure there must not hide the workers.
    const [list, pools, scheduling] = await Promise.all([
      api("/ojs/v1/admin/workers", { query: { per_page: 100 } }),
      hasExtension("fair-scheduling") ? api("/ojs/v1/admin/pools").catch((err) => ({ error: err })) : { absent: true },
      hasExtension("fair-scheduling") ? api("/ojs/v1/admin/scheduling/stats").catch((err) => ({ error: err })) : { absent: true },
    ]);
    if (!page.alive()) return;
    const items = list.items || [];
    const summary = list.summary || {};
    const busy = items.reduce((n, w) => n + (w.active_jobs || 0), 0);
    // Free slots are known only for workers that say their concurrency (HTTP workers may not).
    const sized = items.filter((w) => w.concurrency);
    const free = sized.length ? sized.reduce((n, w) => n + Math.max(0, w.concurrency - (w.active_jobs || 0)), 0) : null;
    clear(summaryBox, card("Workers", fmtNumber(summary.total ?? items.length)), card("Running", fmtNumber(summary.running)),
      card("Quiet", fmtNumber(summary.quiet)), card("Stale", fmtNumber(summary.stale)),
      card("Busy slots", fmtNumber(busy)), card("Free slots", fmtNumber(free)));
    if (pools.absent) clear(poolsBox, h("div", { class: "empty" }, "This server does not list the fair-scheduling extension: no pool endpoints."));
    else if (pools.error) clear(poolsBox, errorBox(pools.error));
    else clear(poolsBox, table([
      { label: "Pool", cell: (p) => p.name },
      { label: "Queues (weight)", cell: (p) => (p.queues || []).map((q) => (p.weights && p.weights[q] !== undefined ? `${q} ×${p.weights[q]}` : q)).join(", ") },
      { label: "Strategy", cell: (p) => p.strategy || "–" },
      { label: "Workers", num: true, cell: (p) => fmtNumber(p.active_workers) },
      { label: "Slots", cell: (p) => slots(p.active_jobs || 0, p.concurrency || 0) },
    ], pools.items || [], { empty: "No pools.", rowAttrs: (p) => ({ dataset: { pool: p.name } }) }),
    scheduling.absent || scheduling.error ? null : h("div", { id: "scheduling" }, h("h2", {}, "Dispatch over the last minute"), table([
      { label: "Queue", cell: (q) => q.name },
      { label: "Claims", num: true, cell: (q) => fmtNumber(q.dispatch_count_1m) },
      { label: "Share", num: true, cell: (q) => (q.dispatch_ratio_1m === undefined || q.dispatch_ratio_1m === null ? "–" : `${(q.dispatch_ratio_1m * 100).toFixed(0)}%`) },
      { label: "Mean wait", num: true, cell: (q) => (q.avg_wait_ms === undefined || q.avg_wait_ms === null ? "–" : fmtDuration(q.avg_wait_ms)) },
      { label: "Active", num: true, cell: (q) => fmtNumber(q.active_jobs) },
    ], scheduling.queues || [], { empty: "Nothing claimed in the last minute." })));
    clear(workersBox, table([
      { label: "Worker", cell: (w) => h("a", { href: "#", class: "mono", onclick: (e) => { e.preventDefault(); showJobs(w.id); } }, w.id) },
      { label: "Kind", cell: (w) => w.kind },
      { label: "Host", cell: (w) => (w.hostname ? `${w.hostname}${w.pid ? `:${w.pid}` : ""}` : "–") },
      { label: "State", cell: (w) => badge(w.state) },
      { label: "Queues", cell: (w) => (w.queues || []).join(", ") },
      { label: "Slots", cell: (w) => slots(w.active_jobs || 0, w.concurrency || 0) },
      { label: "Heartbeat", cell: (w) => when(w.last_heartbeat_at) },
      { label: "", class: "nowrap", cell: (w) => [
        w.state === "running" ? action("Quiet", () => quiet(w.id)) : null,
        w.state === "stale" ? action("Deregister", () => deregister(w.id), { danger: true }) : null,
      ] },
    ], items, { empty: "No workers.", rowAttrs: (w) => ({ dataset: { worker: w.id } }) }));
    if (opened) await showJobs(opened);
  };
  await load();
  page.every(3000, load);
}
