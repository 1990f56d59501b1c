--[[
  Pause or resume a queue. Fetch skips paused queues; enqueue into them is still accepted.

  State transition: none for jobs (a queue flag)

  KEYS[1] queue:<q>:paused  (string)
  KEYS[2] queues            (hash)
  KEYS[3] events            (stream)

  ARGV[1] now_ms
  ARGV[2] events_maxlen   0 disables events
  ARGV[3] queue name
  ARGV[4] "1" pause, "0" resume
  ARGV[5] notify channel of the queue (published on resume, so idle workers look again)

  Returns: {changed}   1 when the flag changed, 0 when it already had that value
]]
local paused_key, queues_key, events_key = KEYS[1], KEYS[2], KEYS[3]
local now, maxlen, queue, pause = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4] == "1"

rcall("HSETNX", queues_key, queue, now)
local changed
if pause then
  changed = rcall("SET", paused_key, now, "NX") and 1 or 0
else
  changed = rcall("DEL", paused_key)
end
if changed == 1 and not pause then
  rcall("PUBLISH", ARGV[5], "1")
end
if changed == 1 and maxlen > 0 then
  local etype = pause and "queue.paused" or "queue.resumed"
  rcall("XADD", events_key, "MAXLEN", "~", maxlen, "*", "type", etype, "subject", queue,
    "time", now, "data", cjson.encode({queue = queue}))
end
return {changed}
