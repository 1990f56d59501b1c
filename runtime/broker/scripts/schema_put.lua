--[[
  Register one args schema of a job type and version (the schema registry extension). A
  version is registered once: a second registration of it is refused, never an overwrite.

  KEYS[1] prefix (derived keys: schema:<type>, schemas, schemas:gen)
  ARGV[1] job type
  ARGV[2] version key (its text)
  ARGV[3] registration (JSON text, stored as it is)
  ARGV[4] the registry's new generation (a fresh token): enqueues checked against an older
          one are refused by enqueue.lua and checked again

  Returns {OK} or {DUPLICATE_ID} (the version is registered already; nothing changed).
]]
local T = context(KEYS[1], "0", "0")
if rcall("HSETNX", T.prefix .. "schema:" .. ARGV[1], ARGV[2], ARGV[3]) == 0 then
  return {S.DUPLICATE_ID}
end
rcall("SADD", T.schema_types, ARGV[1])
rcall("SET", T.schemas_gen, ARGV[4])
return {S.OK}
