// The throughput chart: one line per series over time, as inline SVG.
import { h } from "./ui.js";
import { s } from "./svg.js";

const WIDTH = 900;
const HEIGHT = 240;
const PAD = { left: 48, right: 16, top: 12, bottom: 28 };

// The top of the value axis: four equal steps of a round size (whole numbers for counts).
function niceMax(value) {
  if (value <= 4) return 4;
  const unit = 10 ** Math.floor(Math.log10(value / 4));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) {
    const step = m * unit;
    if ((unit >= 1 && !Number.isInteger(step)) || 4 * step < value) continue;
    return 4 * step;
  }
  return 40 * unit;
}

function timeLabel(ms, spanMs) {
  const iso = new Date(ms).toISOString();
  return spanMs > 2 * 86400000 ? iso.slice(5, 10) : iso.slice(11, 16);
}

// points: [{timestamp, <series names>...}]; series: names of the fields to draw.
export function lineChart(points, series) {
  const times = points.map((p) => new Date(p.timestamp).getTime());
  const t0 = times.length ? times[0] : Date.now();
  const t1 = times.length > 1 ? times[times.length - 1] : t0 + 60000;
  const top = niceMax(Math.max(0, ...points.flatMap((p) => series.map((name) => p[name] || 0))));
  const innerW = WIDTH - PAD.left - PAD.right;
  const innerH = HEIGHT - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + ((t - t0) / (t1 - t0 || 1)) * innerW;
  const y = (v) => PAD.top + innerH - (v / top) * innerH;

  const grid = s("g", { class: "grid" });
  const axis = s("g", { class: "axis" });
  for (let i = 0; i <= 4; i++) {
    const value = (top / 4) * i;
    grid.append(s("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(value), y2: y(value) }));
    axis.append(s("text", { x: PAD.left - 6, y: y(value) + 4, "text-anchor": "end" }, Number.isInteger(value) ? value : value.toFixed(1)));
  }
  const ticks = Math.min(6, Math.max(1, times.length - 1));
  for (let i = 0; i <= ticks; i++) {
    const t = t0 + ((t1 - t0) / ticks) * i;
    axis.append(s("text", { x: x(t), y: HEIGHT - 8, "text-anchor": "middle" }, timeLabel(t, t1 - t0)));
  }
  const lines = series.map((name) => {
    const d = points.map((p, i) => `${i ? "L" : "M"}${x(times[i]).toFixed(1)},${y(p[name] || 0).toFixed(1)}`).join(" ");
    return s("path", { class: `series s-${name}`, d: d || "M0,0" }, s("title", {}, name));
  });
  const svg = s("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": "Throughput" }, grid, axis, lines);
  const legend = h("div", { class: "legend" },
    series.map((name) => h("span", {}, h("i", { class: `s-${name}` }), name,
      ` (${points.reduce((sum, p) => sum + (p[name] || 0), 0).toLocaleString("en-US")})`)));
  return h("div", { class: "chart" }, svg, legend);
}
