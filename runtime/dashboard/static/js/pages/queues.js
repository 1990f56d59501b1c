// Queues: counts, pause/resume, purge of terminal jobs (confirmed), and max_depth configuration.
import { api, repeatWhileMore } from "../api.js";
import { action, clear, confirmDialog, fmtNumber, h, table, toast } from "../ui.js";

const PURGEABLE = ["completed", "discarded", "cancelled"];

export default async function queues(view, page) {
  const box = h("div", { id: "queues-table" });
  clear(view, h("h1", {}, "Queues"), h("section", { class: "panel" }, box));

  const load = async () => {
    const reply = await api("/ojs/v1/admin/queues", { query: { per_page: 100 } });
    if (!page.alive()) return;
    clear(box, table([
      { label: "Queue", cell: (q) => h("a", { href: `#/jobs?queue=${encodeURIComponent(q.name)}` }, q.name) },
      { label: "State", cell: (q) => h("span", { class: `badge queue-state ${q.paused ? "paused" : "running"}` }, q.paused ? "paused" : "active") },
      ...["available", "active", "scheduled", "retryable", "completed", "discarded", "cancelled"].map((state) => ({
        label: state, num: true, cell: (q) => fmtNumber((q.counts || {})[state]),
      })),
      { label: "Processed / min", num: true, cell: (q) => fmtNumber((q.throughput || {}).processed_per_minute) },
      {
        label: "", class: "nowrap", cell: (q) => [
          q.paused ? action("Resume", () => setPaused(q.name, false)) : action("Pause", () => setPaused(q.name, true)),
          " ", action("Config", () => configure(q.name)),
          " ", action("Purge", () => purge(q.name), { danger: true }),
        ],
      },
    ], reply.items || [], { empty: "No queues yet.", rowAttrs: (q) => ({ dataset: { queue: q.name } }) }));
  };

  const setPaused = async (name, paused) => {
    await api(`/ojs/v1/admin/queues/${encodeURIComponent(name)}/${paused ? "pause" : "resume"}`, { method: "POST" });
    toast(`${name} ${paused ? "paused" : "resumed"}`);
    await load();
  };

  const purge = async (name) => {
    const checks = PURGEABLE.map((state) => h("label", {}, h("input", { type: "checkbox", value: state, checked: state === "completed" }), state));
    const ok = await confirmDialog(`Purge ${name}`, "Delete the queue's jobs in these states. This cannot be undone.", {
      confirmLabel: "Purge", danger: true, fields: [h("div", { class: "checks" }, checks)],
    });
    const states = checks.map((label) => label.firstChild).filter((box) => box.checked).map((box) => box.value);
    if (!ok || !states.length) return;
    const total = await repeatWhileMore((cursor) => api(`/ojs/v1/admin/queues/${encodeURIComponent(name)}/jobs`, {
      method: "DELETE", body: { states, confirm: true, ...(cursor ? { cursor } : {}) },
    }));
    toast(`Purged ${fmtNumber(total.purged_count)} jobs from ${name}`);
    await load();
  };

  const configure = async (name) => {
    const detail = await api(`/ojs/v1/admin/queues/${encodeURIComponent(name)}`);
    const config = detail.configuration || {};
    const depth = ((config.backpressure || {}).max_depth) || "";
    const rate = { ...(config.rate_limit || {}) };
    // The server answers the period as a duration (PT1M) with its window_ms: shown as a word.
    const word = { 1000: "second", 60000: "minute", 3600000: "hour", 86400000: "day" }[rate.window_ms];
    if (word) rate.period = word;
    const depthInput = h("input", { type: "number", min: "1", name: "max_depth", value: depth, placeholder: "no limit" });
    const limitInput = h("input", { type: "number", min: "1", name: "rate_limit", value: rate.limit ?? "", placeholder: "no limit" });
    const periodSelect = h("select", { name: "rate_period" },
      ["second", "minute", "hour", "day"].map((p) => h("option", { value: p, selected: rate.period === p }, `per ${p}`)));
    if (rate.period && !["second", "minute", "hour", "day"].includes(rate.period)) {
      periodSelect.append(h("option", { value: rate.period, selected: true }, `per ${rate.period}`));
    }
    const ok = await confirmDialog(`Configure ${name}`, "Leave a field empty for no limit.", {
      confirmLabel: "Save",
      fields: [
        h("label", {}, "max_depth: enqueues past it are refused with 429 QUEUE_FULL", depthInput),
        h("label", {}, "Rate limit: jobs handed out", limitInput, periodSelect),
      ],
    });
    if (!ok) return;
    const maxDepth = depthInput.value.trim();
    const limit = limitInput.value.trim();
    await api(`/ojs/v1/admin/queues/${encodeURIComponent(name)}/config`, {
      method: "PUT",
      body: {
        backpressure: maxDepth ? { max_depth: Number(maxDepth), strategy: "reject" } : null,
        rate_limit: limit ? { limit: Number(limit), period: periodSelect.value } : null,
      },
    });
    toast(`${name}: max_depth ${maxDepth || "none"}, rate limit ${limit ? `${limit} per ${periodSelect.value}` : "none"}`);
    await load();
  };

  await load();
  page.every(5000, load);
}
