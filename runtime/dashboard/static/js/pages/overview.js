// Overview: totals, throughput history chart, queue depths with the oldest job's age, failure rate.
import { api } from "../api.js";
import { lineChart } from "../chart.js";
import { action, bar, card, clear, confirmDialog, fmtDuration, fmtNumber, h, table, toast } from "../ui.js";

const RANGES = {
  "1h": { period: "1m", spanMs: 3600e3, label: "last hour, per minute" },
  "24h": { period: "1h", spanMs: 86400e3, label: "last 24 hours, per hour" },
  "30d": { period: "1d", spanMs: 30 * 86400e3, label: "last 30 days, per day" },
};

export default async function overview(view, page) {
  let range = page.query.get("range") || "1h";
  if (!RANGES[range]) range = "1h";
  const cards = h("div", { class: "cards", id: "overview-cards" });
  const chartBox = h("div", { id: "throughput" });
  const rangeSelect = h("select", { id: "range", onchange: () => { location.hash = `#/overview?range=${rangeSelect.value}`; } },
    Object.entries(RANGES).map(([key, r]) => h("option", { value: key, selected: key === range }, r.label)));
  const queuesBox = h("div", { id: "queue-depths" });
  const maintenanceBox = h("div", { id: "maintenance" });
  const toggleBox = h("span", { id: "maintenance-toggle" });
  clear(view,
    h("div", { class: "toolbar heading" }, h("h1", {}, "Overview"), h("span", { class: "spacer" }), toggleBox),
    maintenanceBox,
    cards,
    h("section", { class: "panel" }, h("div", { class: "toolbar" }, h("h2", {}, "Throughput"), h("span", { class: "spacer" }), rangeSelect), chartBox),
    h("section", { class: "panel" }, h("h2", {}, "Queues"), queuesBox));

  const load = async () => {
    const { period, spanMs } = RANGES[range];
    const until = new Date();
    const since = new Date(until.getTime() - spanMs);
    const [stats, history, queueList, dead] = await Promise.all([
      api("/ojs/v1/admin/stats"),
      api("/ojs/v1/admin/stats/history", { query: { period, since: since.toISOString(), until: until.toISOString() } }),
      api("/ojs/v1/admin/queues", { query: { per_page: 100 } }),
      api("/ojs/v1/admin/dead-letter/stats"),
    ]);
    if (!page.alive()) return;
    const points = history.data || [];
    const completed = points.reduce((n, p) => n + (p.completed || 0), 0);
    const failed = points.reduce((n, p) => n + (p.failed || 0), 0);
    const rate = completed + failed ? failed / (completed + failed) : 0;
    const jobs = stats.jobs || {};
    clear(cards,
      card("Available", fmtNumber(jobs.available)),
      card("Active", fmtNumber(jobs.active)),
      card("Scheduled", fmtNumber(jobs.scheduled)),
      card("Retryable", fmtNumber(jobs.retryable)),
      card("Completed", fmtNumber(jobs.completed)),
      card("Dead letters", fmtNumber(dead.total)),
      card("Workers", fmtNumber(stats.workers)),
      card("Processed / min", fmtNumber((stats.throughput || {}).processed_per_minute)),
      card("Failure rate", `${(rate * 100).toFixed(1)}%`, `failed / (completed + failed), ${RANGES[range].label}`));
    clear(chartBox, lineChart(points, ["enqueued", "completed", "failed", "discarded"]));
    showMaintenance(Boolean(stats.maintenance));
    const items = queueList.items || [];
    const deepest = Math.max(1, ...items.map((q) => q.depth || 0));
    clear(queuesBox, table([
      { label: "Queue", cell: (q) => h("a", { href: `#/jobs?queue=${encodeURIComponent(q.name)}` }, q.name) },
      { label: "State", cell: (q) => h("span", { class: `badge ${q.paused ? "paused" : "running"}` }, q.paused ? "paused" : "active") },
      { label: "Depth", num: true, cell: (q) => fmtNumber(q.depth) },
      { label: "", cell: (q) => bar((q.depth || 0) / deepest) },
      { label: "Available", num: true, cell: (q) => fmtNumber((q.counts || {}).available) },
      { label: "Active", num: true, cell: (q) => fmtNumber((q.counts || {}).active) },
      { label: "Oldest job", num: true, cell: (q) => (q.oldest_available_at ? fmtDuration(Date.now() - new Date(q.oldest_available_at).getTime()) : "–") },
      { label: "Processed / min", num: true, cell: (q) => fmtNumber((q.throughput || {}).processed_per_minute) },
      { label: "Failed / min", num: true, cell: (q) => fmtNumber((q.throughput || {}).failed_per_minute) },
    ], items, { empty: "No queues yet." }));
  };
  // Maintenance mode stops every fetch (enqueues still work): said at the top while it is on.
  const showMaintenance = (on) => {
    const toggle = action(on ? "Leave maintenance" : "Enter maintenance", async () => {
      if (!on && !(await confirmDialog("Maintenance mode", "Stop every worker fetching jobs? Enqueues keep working.", { confirmLabel: "Enter", danger: true }))) return;
      await api("/ojs/v1/admin/system/maintenance", { method: "POST", body: { enabled: !on } });
      toast(on ? "Maintenance mode off" : "Maintenance mode on");
      await load();
    }, { danger: !on });
    clear(toggleBox, toggle);
    clear(maintenanceBox, on ? h("div", { class: "error-box" }, h("strong", {}, "Maintenance mode: no job is handed out."), " Enqueues go on.") : null);
  };

  await load();
  page.every(5000, load);
}
