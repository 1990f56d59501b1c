// Cron: schedules, next and last runs, enable/disable, trigger now.
import { api } from "../api.js";
import { runsAfter } from "../cron.js";
import { action, ago, clear, confirmDialog, fmtNumber, fmtTime, h, table, toast, when } from "../ui.js";

export default async function crons(view, page) {
  const box = h("div", { id: "cron-table" });
  clear(view, h("h1", {}, "Cron"), h("section", { class: "panel" }, box));

  const setEnabled = async (name, enabled) => {
    await api(`/ojs/v1/cron/${encodeURIComponent(name)}`, { method: "PATCH", body: { enabled } });
    toast(`${name} ${enabled ? "enabled" : "disabled"}`);
    await load();
  };
  const trigger = async (name) => {
    if (!(await confirmDialog("Trigger now", `Enqueue ${name}'s job now, outside its schedule?`, { confirmLabel: "Trigger" }))) return;
    const reply = await api(`/ojs/v1/admin/crons/${encodeURIComponent(name)}/trigger`, { method: "POST" });
    // The contract's reply is {job}; the server may answer {job_id} instead: either names the job.
    const jobId = reply && (reply.job ? reply.job.id : reply.job_id);
    toast(jobId ? `${name}: enqueued ${jobId}` : `${name}: triggered`);
    await load();
  };

  const load = async () => {
    const reply = await api("/ojs/v1/cron");
    if (!page.alive()) return;
    const items = reply.crons || reply.items || [];
    clear(box, table([
      { label: "Name", cell: (c) => h("strong", {}, c.name) },
      { label: "Schedule", cell: (c) => h("code", {}, c.expression || c.schedule || c.cron) },
      { label: "Timezone", cell: (c) => c.timezone },
      { label: "Job type", cell: (c) => (c.job_template || {}).type || "–" },
      { label: "Enabled", cell: (c) => h("span", { class: `badge ${c.enabled ? "completed" : "cancelled"}` }, c.enabled ? "enabled" : "disabled") },
      { label: "Next runs", cell: (c) => {
        const later = c.next_run_at ? runsAfter(c.expression || c.cron, c.timezone, c.next_run_at, 2) || [] : [];
        const runs = c.next_runs || (c.next_run_at ? [c.next_run_at, ...later] : []);
        return runs.length ? runs.slice(0, 3).map((t) => h("div", { class: "next-run", title: fmtTime(t) }, fmtTime(t), " ", h("span", { class: "muted" }, `(${ago(t)})`))) : "–";
      } },
      { label: "Last run", cell: (c) => when(c.last_run_at) },
      { label: "Runs", num: true, cell: (c) => fmtNumber(c.run_count) },
      { label: "Last error", class: "clip", cell: (c) => c.last_error || "" },
      { label: "", class: "nowrap", cell: (c) => [
        c.enabled ? action("Disable", () => setEnabled(c.name, false)) : action("Enable", () => setEnabled(c.name, true)),
        " ", action("Trigger now", () => trigger(c.name)),
      ] },
    ], items, { empty: "No cron jobs registered.", rowAttrs: (c) => ({ dataset: { cron: c.name } }) }));
  };
  await load();
  page.every(5000, load);
}
