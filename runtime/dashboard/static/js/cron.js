// The runs after a cron's next one, for the cron page: computed here for the plain forms (five
// fields of numbers, *, ranges, steps and lists, or @hourly/@daily/@weekly/@monthly/@yearly, or
// @every N s|m|h) in UTC. Anything else (seconds fields, names, L, W, #, other time zones) gets
// no guess: the page then shows only the server's next_run_at.

const MACROS = {
  "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
  "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
};
const BOUNDS = [[0, 59], [0, 23], [1, 31], [1, 12], [0, 7]];
const UNIT_MS = { s: 1000, m: 60000, h: 3600000 };
const SEARCH_STEPS = 20000; // month, day, hour and minute jumps: years ahead, never a frozen page

function field(text, [low, high]) {
  const values = new Set();
  for (const part of text.split(",")) {
    const match = /^(\*|(\d+)(?:-(\d+))?)(?:\/(\d+))?$/.exec(part);
    if (!match) return null;
    const from = match[1] === "*" ? low : Number(match[2]);
    const to = match[1] === "*" ? high : match[3] !== undefined ? Number(match[3]) : match[4] ? high : from;
    const step = match[4] ? Number(match[4]) : 1;
    if (from < low || to > high || from > to || step < 1) return null;
    for (let v = from; v <= to; v += step) values.add(v);
  }
  return values;
}

function parse(expression) {
  const text = MACROS[expression.trim().toLowerCase()] || expression.trim();
  const parts = text.split(/\s+/);
  if (parts.length !== 5) return null;
  const sets = parts.map((p, i) => field(p, BOUNDS[i]));
  if (sets.some((s) => s === null)) return null;
  if (sets[4].has(7)) sets[4].add(0);
  // Day of month and day of week both restricted: either may match (as cron has it).
  return { sets, anyDom: parts[2] === "*", anyDow: parts[4] === "*" };
}

function dayMatches({ sets, anyDom, anyDow }, d) {
  const dom = sets[2].has(d.getUTCDate());
  const dow = sets[4].has(d.getUTCDay());
  if (anyDom && anyDow) return true;
  if (anyDom) return dow;
  if (anyDow) return dom;
  return dom || dow;
}

// The first matching minute at or after `t` (ms, on a minute), skipping whole months, days and
// hours that cannot match; null when none is found within SEARCH_STEPS jumps.
function nextMatch(schedule, t) {
  const { sets } = schedule;
  let d = new Date(t);
  for (let i = 0; i < SEARCH_STEPS; i++) {
    if (!sets[3].has(d.getUTCMonth() + 1)) {
      d = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1));
    } else if (!dayMatches(schedule, d)) {
      d = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1));
    } else if (!sets[1].has(d.getUTCHours())) {
      d = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate(), d.getUTCHours() + 1));
    } else if (!sets[0].has(d.getUTCMinutes())) {
      d = new Date(d.getTime() + 60000);
    } else {
      return d;
    }
  }
  return null;
}

// The `count` runs after `afterIso` (exclusive), or null when this form is not one computed here.
export function runsAfter(expression, timezone, afterIso, count) {
  if (!expression || !afterIso || (timezone && timezone !== "UTC" && timezone !== "Etc/UTC")) return null;
  const start = new Date(afterIso).getTime();
  if (Number.isNaN(start)) return null;
  const every = /^@every\s+(\d+)\s*([smh])$/i.exec(expression.trim());
  if (every) {
    const step = Number(every[1]) * UNIT_MS[every[2].toLowerCase()];
    return step > 0 ? Array.from({ length: count }, (_, i) => new Date(start + step * (i + 1)).toISOString()) : null;
  }
  const schedule = parse(expression);
  if (!schedule) return null;
  const runs = [];
  let t = Math.floor(start / 60000) * 60000 + 60000;
  while (runs.length < count) {
    const found = nextMatch(schedule, t);
    if (found === null) break;
    runs.push(found.toISOString());
    t = found.getTime() + 60000;
  }
  return runs;
}
