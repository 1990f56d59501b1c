// The admin API client: one place for the key, the 401 prompt and error bodies.
import { askKey } from "./ui.js";

const KEY_STORAGE = "ojs.admin.key";
let pendingKey = null; // one prompt for every request that got a 401 at the same time

export class ApiError extends Error {
  constructor(status, body) {
    const err = body && body.error;
    super(err ? `${err.code}: ${err.message}` : `HTTP ${status}`);
    this.status = status;
    this.code = err ? err.code : null;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

function keyFromUser(refused) {
  if (!pendingKey) {
    pendingKey = askKey(refused).then((key) => {
      sessionStorage.setItem(KEY_STORAGE, key);
      pendingKey = null;
    });
  }
  return pendingKey;
}

function urlFor(path, query) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  return url.pathname + url.search;
}

// `api(path, {method, body, query})`: the decoded JSON reply (null for 204), or an ApiError.
export async function api(path, { method = "GET", body, query } = {}) {
  const url = urlFor(path, query);
  for (;;) {
    const key = apiKey();
    const headers = { Accept: "application/json" };
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const reply = await fetch(url, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (reply.status === 401) {
      await keyFromUser(Boolean(key));
      continue;
    }
    const text = reply.status === 204 ? "" : await reply.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        throw new ApiError(reply.status, null);
      }
    }
    if (!reply.ok) throw new ApiError(reply.status, data);
    return data;
  }
}

// Repeats a bounded bulk call while the server says there is more; the totals of every call.
export async function repeatWhileMore(call, { maxCalls = 200 } = {}) {
  const total = { matched: 0, succeeded: 0, failed: 0, purged_count: 0, calls: 0, errors: [] };
  let cursor = null;
  for (let i = 0; i < maxCalls; i++) {
    const reply = (await call(cursor)) || {};
    total.calls += 1;
    for (const name of ["matched", "succeeded", "failed", "purged_count"]) total[name] += reply[name] || 0;
    total.errors.push(...(reply.errors || []));
    // A call that changed nothing cannot make the next one see more: stop rather than spin.
    const progressed = (reply.succeeded || 0) + (reply.purged_count || 0) > 0 || reply.next_cursor;
    if (!reply.has_more || !progressed) break;
    cursor = reply.next_cursor || null;
  }
  return total;
}
