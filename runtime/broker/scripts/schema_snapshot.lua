--[[
  Read the whole schema registry at one instant, with its generation (what enqueue.lua
  compares): an enqueue checked against this snapshot is checked against exactly this registry.
  Read only.

  KEYS[1] prefix (derived keys: schema:<type>, schemas, schemas:gen)

  Returns {generation or "", type1, {version, registration, ...}, type2, {...}, ...}
]]
local T = context(KEYS[1], "0", "0")
local out = {rcall("GET", T.schemas_gen) or ""}
for _, job_type in ipairs(rcall("SMEMBERS", T.schema_types)) do
  out[#out + 1] = job_type
  out[#out + 1] = rcall("HGETALL", T.prefix .. "schema:" .. job_type)
end
return out
