// A workflow's steps as a left-to-right graph: a column per dependency depth, an edge per
// depends_on, each node coloured by its step's state.
import { h } from "./ui.js";
import { s } from "./svg.js";

const NODE_W = 170;
const NODE_H = 44;
const GAP_X = 60;
const GAP_Y = 18;
const PAD = 16;

function depths(steps) {
  const byId = new Map(steps.map((step) => [step.id, step]));
  const memo = new Map();
  const depth = (step, seen = new Set()) => {
    if (memo.has(step.id)) return memo.get(step.id);
    if (seen.has(step.id)) return 0; // the server rejects cycles; never loop on a bad reply
    seen.add(step.id);
    const parents = (step.depends_on || []).map((id) => byId.get(id)).filter(Boolean);
    const d = parents.length ? 1 + Math.max(...parents.map((p) => depth(p, seen))) : 0;
    memo.set(step.id, d);
    return d;
  };
  return steps.map((step) => depth(step));
}

export function workflowGraph(steps, { onOpen } = {}) {
  const levels = depths(steps);
  const columns = [];
  steps.forEach((step, i) => {
    (columns[levels[i]] ||= []).push(step);
  });
  const tallest = Math.max(1, ...columns.map((c) => c.length));
  const width = PAD * 2 + columns.length * NODE_W + Math.max(0, columns.length - 1) * GAP_X;
  const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * GAP_Y;
  const where = new Map();
  columns.forEach((column, ci) => {
    const offset = (height - (column.length * NODE_H + (column.length - 1) * GAP_Y)) / 2;
    column.forEach((step, ri) => {
      where.set(step.id, { x: PAD + ci * (NODE_W + GAP_X), y: offset + ri * (NODE_H + GAP_Y) });
    });
  });
  const defs = s("defs", {}, s("marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
  }, s("path", { d: "M0,0 L10,5 L0,10 z" })));
  const edges = steps.flatMap((step) => (step.depends_on || []).filter((id) => where.has(id)).map((id) => {
    const a = where.get(id);
    const b = where.get(step.id);
    const x1 = a.x + NODE_W; const y1 = a.y + NODE_H / 2;
    const x2 = b.x; const y2 = b.y + NODE_H / 2;
    const mid = (x1 + x2) / 2;
    return s("path", { class: "edge", d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`, "marker-end": "url(#arrow)" });
  }));
  const nodes = steps.map((step) => {
    const { x, y } = where.get(step.id);
    const label = step.id.length > 22 ? step.id.slice(0, 21) + "…" : step.id;
    const kind = (step.type || "").length > 24 ? step.type.slice(0, 23) + "…" : step.type || "";
    const node = s("g", { class: `node ${step.state}${step.job_id ? " linked" : ""}`, "data-step": step.id, transform: `translate(${x},${y})` },
      s("title", {}, `${step.id} (${step.type}): ${step.state}`),
      s("rect", { class: "node", width: NODE_W, height: NODE_H, rx: 6 }),
      s("text", { x: 10, y: 18 }, label),
      s("text", { x: 10, y: 34, class: "state" }, `${step.state} · ${kind}`));
    if (step.job_id && onOpen) node.addEventListener("click", () => onOpen(step));
    return node;
  });
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "Workflow graph" },
    defs, edges, nodes);
  return h("div", { class: "graph" }, svg);
}
