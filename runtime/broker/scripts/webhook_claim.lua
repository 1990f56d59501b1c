--[[
  Claim due webhook deliveries for sending, each under a lease: a delivery whose sender dies is
  due again when its lease ends, and is sent again (same delivery id, next attempt).

  State transition: pending (or delivering, lease ended) -> delivering (attempt + 1)
                    pending -> cancelled when its subscription is gone or inactive
                    delivering, lease ended, at max_attempts -> dead (its attempts never
                    settled, e.g. a sender that dies on it each time: not sent for ever)
  KEYS[1] prefix (derived keys: webhook:delivery:<id>, webhook:sub:<id>)
  KEYS[2] webhook:due (zset)

  ARGV[1] now_ms
  ARGV[2] lease_ms
  ARGV[3] at most this many deliveries
  ARGV[4] retention of a cancelled delivery's record (ms)
  ARGV[5] max attempts

  Returns: per claimed delivery {id, subscription id, url, secret, previous secret or "",
           previous secret valid until (ms) or "", event type, body, attempt}
]]
local prefix, due_key = KEYS[1], KEYS[2]
local now, lease, limit, retention = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local max_attempts = tonumber(ARGV[5])

local out = {}
local due = rcall("ZRANGE", due_key, "-inf", now, "BYSCORE", "LIMIT", 0, limit)
for _, id in ipairs(due) do
  local key = prefix .. "webhook:delivery:" .. id
  local d = rcall("HMGET", key, "subscription_id", "event_type", "body", "attempt", "state")
  if not d[1] then
    rcall("ZREM", due_key, id)  -- its record is gone (flushed): nothing to send
  elseif d[5] == "delivering" and (tonumber(d[4]) or 0) >= max_attempts then
    rcall("ZREM", due_key, id)
    rcall("HSET", key, "state", "dead", "updated_at", ARGV[1],
      "last_error", "no outcome within its lease, " .. d[4] .. " attempt(s)")
    rcall("HDEL", key, "next_attempt_at")
    rcall("PEXPIRE", key, retention)
  else
    local s = rcall("HMGET", prefix .. "webhook:sub:" .. d[1], "url", "active", "secret", "old_secret",
      "old_secret_until")
    if s[2] ~= "1" then
      rcall("ZREM", due_key, id)
      rcall("HSET", key, "state", "cancelled", "updated_at", ARGV[1],
        "last_error", s[1] and "subscription inactive" or "subscription deleted")
      rcall("PEXPIRE", key, retention)
    else
      local attempt = rcall("HINCRBY", key, "attempt", 1)
      rcall("HSET", key, "state", "delivering", "updated_at", ARGV[1])
      rcall("ZADD", due_key, now + lease, id)
      out[#out + 1] = {id, d[1], s[1], s[3], s[4] or "", s[5] or "", d[2], d[3], attempt}
    end
  end
end
return out
