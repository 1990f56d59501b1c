// One job: facts, progress, timeline, args/meta/result (large values cut), error history with
// tracebacks, and cancel / retry / delete.
import { api } from "../api.js";
import { action, badge, bar, clear, confirmDialog, fmtDuration, fmtTime, h, toast, valueView } from "../ui.js";

const TERMINAL = new Set(["completed", "discarded", "cancelled"]);
const TIMELINE = [
  ["created_at", "created"], ["scheduled_at", "scheduled for"], ["enqueued_at", "enqueued"],
  ["started_at", "started"], ["completed_at", "completed"], ["cancelled_at", "cancelled"],
  ["discarded_at", "discarded"], ["expired_at", "expired"], ["re_enqueued_at", "re-enqueued"],
];

function errorTime(err) {
  return err.at || err.occurred_at || err.failed_at || err.timestamp || null;
}

function traceback(err) {
  const trace = err.backtrace || err.traceback || err.stacktrace || (err.details || {}).traceback || (err.details || {}).backtrace;
  if (!trace) return null;
  return Array.isArray(trace) ? trace.join("\n") : String(trace);
}

function progressView(progress) {
  if (progress === undefined || progress === null) return null;
  const value = typeof progress === "number" ? progress : progress.progress ?? progress.percent ?? progress.value;
  const message = typeof progress === "object" ? progress.message : null;
  if (typeof value !== "number") return null;
  const fraction = value > 1 ? value / 100 : value;
  return h("div", { id: "progress" }, bar(fraction, "bar progress"),
    h("div", { class: "muted" }, `${(fraction * 100).toFixed(0)}%${message ? ` · ${message}` : ""}`));
}

// Events at the same millisecond keep the order a job lives them: a failure before its discard.
const RANK = { created_at: 0, scheduled_at: 1, enqueued_at: 2, re_enqueued_at: 2, started_at: 3, error: 4 };

function timeline(job) {
  // A job that ended otherwise than completed carries completed_at as its end time too: said once.
  const ended = job.state !== "completed" && (job.discarded_at || job.cancelled_at || job.expired_at);
  const events = TIMELINE.filter(([field]) => job[field] && !(field === "completed_at" && ended))
    .map(([field, label]) => ({ at: job[field], label, kind: field }));
  for (const err of job.errors || []) {
    if (errorTime(err)) events.push({ at: errorTime(err), label: `attempt ${err.attempt ?? "?"} failed: ${err.type || err.code || "error"}`, kind: "error" });
  }
  events.sort((a, b) => new Date(a.at) - new Date(b.at) || (RANK[a.kind] ?? 5) - (RANK[b.kind] ?? 5));
  const first = events.length ? new Date(events[0].at).getTime() : 0;
  return h("ol", { class: "timeline", id: "timeline" }, events.map((e) => h("li", {
    class: e.kind === "error" || e.kind === "discarded_at" ? "bad" : e.kind === "completed_at" ? "good" : "",
  }, h("strong", {}, e.label), " ", h("span", { class: "muted" }, fmtTime(e.at)),
  e.at !== events[0].at ? h("span", { class: "muted" }, ` (+${fmtDuration(new Date(e.at).getTime() - first)})`) : null)));
}

function errorHistory(job) {
  const errors = [...(job.errors || [])];
  if (!errors.length && job.error) errors.push(job.error);
  if (!errors.length) return h("div", { class: "empty" }, "No errors.");
  return h("div", { id: "errors" }, errors.map((err, i) => {
    const trace = traceback(err);
    return h("div", { class: "panel error-entry" },
      h("div", {}, h("strong", {}, err.type || err.code || "error"), " ",
        h("span", { class: "muted" }, `attempt ${err.attempt ?? i + 1}${errorTime(err) ? ` · ${fmtTime(errorTime(err))}` : ""}`)),
      valueView(err.message || "", { limit: 2000 }),
      trace ? h("details", {}, h("summary", {}, "Traceback"), valueView(trace)) : null);
  }));
}

export default async function jobDetail(view, page) {
  const id = page.arg;
  const path = `/ojs/v1/admin/jobs/${encodeURIComponent(id)}`;
  const act = (label, verb, opts) => action(label, async () => {
    const ok = await confirmDialog(`${label} job`, `${label} ${id}?`, { confirmLabel: label, danger: verb !== "retry" });
    if (!ok) return;
    if (verb === "delete") {
      await api(path, { method: "DELETE" });
      toast(`Deleted ${id}`);
      location.hash = "#/jobs";
      return;
    }
    await api(`${path}/${verb}`, { method: "POST" });
    toast(`${label}: ${id}`);
    await load();
  }, opts);

  let shown = null;
  const load = async () => {
    const job = await api(path);
    if (!page.alive()) return;
    const key = JSON.stringify([job.state, job.attempt, job.progress, (job.errors || []).length]);
    if (key === shown) return; // unchanged: keep what the reader expanded
    shown = key;
    clear(view,
      h("p", {}, h("a", { href: `#/jobs?queue=${encodeURIComponent(job.queue)}` }, `← jobs in ${job.queue}`)),
      h("h1", {}, `${job.type} `, badge(job.state)),
      h("div", { class: "toolbar" }, h("span", { class: "mono" }, job.id), h("span", { class: "spacer" }),
        TERMINAL.has(job.state) ? null : act("Cancel", "cancel", { danger: true }),
        job.state === "discarded" || job.state === "cancelled" ? act("Retry", "retry", { primary: true }) : null,
        TERMINAL.has(job.state) ? act("Delete", "delete", { danger: true }) : null),
      progressView(job.progress),
      h("div", { class: "grid2" },
        h("section", { class: "panel" }, h("h2", {}, "Job"), h("dl", { class: "facts" },
          [["Queue", job.queue], ["Priority", job.priority], ["Attempt", `${job.attempt}/${job.max_attempts}`],
            ["Worker", job.worker_id || "–"], ["Workflow", job.workflow_id ? h("a", { href: `#/workflows/${encodeURIComponent(job.workflow_id)}` }, job.workflow_id) : "–"]]
            .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))),
        h("section", { class: "panel" }, h("h2", {}, "Timeline"), timeline(job))),
      h("section", { class: "panel", id: "args" }, h("h2", {}, "Args"), valueView(job.args)),
      job.meta && Object.keys(job.meta).length ? h("section", { class: "panel", id: "meta" }, h("h2", {}, "Meta"), valueView(job.meta)) : null,
      h("section", { class: "panel", id: "result" }, h("h2", {}, "Result"), valueView(job.result)),
      h("section", { class: "panel" }, h("h2", {}, "Errors"), errorHistory(job)));
  };
  await load();
  page.every(2000, async () => {
    if (!TERMINAL.has(JSON.parse(shown || "[]")[0])) await load();
  });
}
