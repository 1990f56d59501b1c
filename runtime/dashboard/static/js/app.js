// Hash router: `#/page/arg?query`. Each page module renders into <main> and may poll; a page's
// timers stop and its late replies are dropped when another page is shown.
import { api, ApiError, apiKey, forgetKey } from "./api.js";
import { clear, errorBox, h, session } from "./ui.js";
import overview from "./pages/overview.js";
import queues from "./pages/queues.js";
import jobs from "./pages/jobs.js";
import jobDetail from "./pages/job.js";
import deadLetters from "./pages/deadletters.js";
import workers from "./pages/workers.js";
import crons from "./pages/crons.js";
import workflows from "./pages/workflows.js";
import workflowDetail from "./pages/workflow.js";

const PAGES = {
  overview: [overview, null],
  queues: [queues, null],
  jobs: [jobs, jobDetail],
  "dead-letters": [deadLetters, null],
  workers: [workers, null],
  cron: [crons, null],
  workflows: [workflows, workflowDetail],
};

let current = null;

class Page {
  constructor(name, arg, query) {
    this.name = name;
    this.arg = arg;
    this.query = query;
    this.timers = new Set();
    this.closed = false;
  }

  alive() {
    return !this.closed && current === this;
  }

  // Calls fn now and again `ms` after each run ends (never two at once), until the page closes.
  every(ms, fn) {
    const run = async () => {
      if (!this.alive()) return;
      try {
        await fn();
      } catch (err) {
        console.warn("refresh failed:", err.message || err);
      }
      if (this.alive()) this.timers.add(setTimeout(run, ms));
    };
    this.timers.add(setTimeout(run, ms));
  }

  // Renders this page again from scratch (after an action that changes what all of it shows).
  reshow() {
    if (this.alive()) return show();
    return undefined;
  }

  close() {
    this.closed = true;
    for (const timer of this.timers) clearTimeout(timer);
  }
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = raw.split("?");
  const [name, ...rest] = path.split("/");
  return { name: name || "overview", arg: rest.length ? decodeURIComponent(rest.join("/")) : null, query: new URLSearchParams(search) };
}

async function show() {
  const { name, arg, query } = parseHash();
  const entry = PAGES[name];
  if (current) current.close();
  const page = new Page(name, arg, query);
  current = page;
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("current", link.dataset.page === name);
  const view = document.getElementById("view");
  view.dataset.page = name;
  view.dataset.route = location.hash; // with `ready`, tells which route the view has finished
  view.dataset.ready = "false";
  if (!entry) {
    clear(view, h("h1", {}, "Not found"), h("p", {}, `No page named "${name}".`));
    return;
  }
  const render = arg !== null && entry[1] ? entry[1] : entry[0];
  clear(view, h("p", { class: "muted" }, "Loading…"));
  try {
    await render(view, page);
  } catch (err) {
    if (!page.alive()) return;
    clear(view, h("h1", {}, "Could not load this page"), errorBox(err));
  }
  if (page.alive()) view.dataset.ready = "true";
}

async function whoAmI() {
  try {
    const auth = await api("/ojs/v1/admin/auth");
    session.readOnly = Boolean(auth && auth.read_only);
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    session.readOnly = false;
  }
  // What the server serves beyond the admin API (the pool endpoints, say); asked once.
  session.manifest = await api("/ojs/manifest").catch(() => ({}));
  document.body.classList.toggle("read-only", session.readOnly);
  const who = document.getElementById("whoami");
  clear(who, session.readOnly ? h("span", { id: "key-kind" }, "read-only key") : null);
  if (apiKey()) {
    who.append(h("a", {
      href: "#", id: "forget-key", title: "Remove the key from this tab; the page asks again",
      onclick: (event) => {
        event.preventDefault();
        forgetKey();
        location.reload();
      },
    }, "forget key"));
  }
}

window.addEventListener("hashchange", show);
await whoAmI();
await show();
document.body.dataset.started = "true";
