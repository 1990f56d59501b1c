--[[
  Remove one args schema of a job type and version (the schema registry extension); the type
  leaves the registry's set of types with its last version.

  KEYS[1] prefix (derived keys: schema:<type>, schemas, schemas:gen)
  ARGV[1] job type
  ARGV[2] version key (its text)
  ARGV[3] the registry's new generation (a fresh token)

  Returns {OK} or {NOT_FOUND} (no such version; nothing changed).
]]
local T = context(KEYS[1], "0", "0")
local versions = T.prefix .. "schema:" .. ARGV[1]
if rcall("HDEL", versions, ARGV[2]) == 0 then
  return {S.NOT_FOUND}
end
if rcall("HLEN", versions) == 0 then
  rcall("SREM", T.schema_types, ARGV[1])
end
rcall("SET", T.schemas_gen, ARGV[3])
return {S.OK}
