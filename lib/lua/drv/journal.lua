--- drv.journal: what a recipe changed on the host, so stop can undo it.
--
-- Each change is recorded as data (`{ kind = "file", path = ... }`) before or as
-- it is made, and the journal is saved atomically after every change. Stop
-- undoes the entries in reverse order. A journal left behind by a killed run is
-- found by the next run and undone first (crash recovery), so no blacklist or
-- stale mount outlives the container that made it.
local M = {}
M.__index = M

local fs = require "drv.fs"
local log = require "drv.log"

local undo = {} -- kind -> function(entry, opts) -> true | nil, message

--- Register how to undo entries of `kind`.
function M.define(kind, fn)
  undo[kind] = fn
end

local function serialize(v, out)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = ("%q"):format(v)
  elseif t == "number" or t == "boolean" then
    out[#out + 1] = tostring(v)
  elseif t == "table" then
    out[#out + 1] = "{"
    for k, x in pairs(v) do
      out[#out + 1] = "["
      serialize(k, out)
      out[#out + 1] = "]="
      serialize(x, out)
      out[#out + 1] = ","
    end
    out[#out + 1] = "}"
  else
    error("journal: cannot record a " .. t, 3)
  end
end

--- Data (strings, numbers, booleans, tables of them) as a Lua chunk that `decode` reads back.
function M.encode(v)
  local out = { "return " }
  serialize(v, out)
  return table.concat(out) .. "\n"
end

--- What `encode` wrote (`name` names the chunk in errors); nil, message when it is not that.
function M.decode(text, name)
  local chunk, err = load(text, "=" .. name, "t", {})
  if not chunk then return nil, err end
  local ok, v = pcall(chunk)
  if not ok then return nil, v end
  return v
end

--- Open the journal at `path` (nil: in memory only).
function M.new(path)
  return setmetatable({ path = path, entries = {} }, M)
end

--- Write the journal to its file, atomically (nothing for one in memory only).
-- @treturn[1] true
-- @treturn[2] nil, message, errno
function M:save()
  if not self.path then return true end
  local dir = self.path:match("^(.*)/[^/]+$")
  if dir and dir ~= "" then fs.mkdir(dir) end
  return fs.write(self.path, M.encode(self.entries))
end

--- Record a change; `entry.kind` must have an undo. Returns the entry.
function M:record(entry)
  if not undo[entry.kind] then error("journal: no undo for kind '" .. tostring(entry.kind) .. "'", 2) end
  self.entries[#self.entries + 1] = entry
  local ok, err = self:save()
  if not ok then log.warn("journal: cannot save %s: %s", self.path, err) end
  return entry
end

--- Forget an entry already undone by its owner (e.g. a blacklist removed after the reload).
function M:forget(entry)
  for i = #self.entries, 1, -1 do
    if self.entries[i] == entry then table.remove(self.entries, i) end
  end
  self:save()
end

--- Undo every entry, newest first. `opts.skip(entry)` may skip slow ones.
-- @treturn boolean all undone
-- @treturn table messages of the failures
function M:undo_all(opts)
  opts = opts or {}
  local failures = {}
  for i = #self.entries, 1, -1 do
    local e = self.entries[i]
    if opts.skip and opts.skip(e) then
      log.warn("stop: skipping %s %s", e.kind, e.path or e.target or "")
    else
      local ok, res, err = pcall(undo[e.kind], e, opts)
      if not ok or not res then
        failures[#failures + 1] = ("%s %s: %s"):format(e.kind, e.path or e.target or "", ok and err or res)
      end
    end
    self.entries[i] = nil
    self:save()
  end
  if self.path and #failures == 0 then fs.remove(self.path, { missing_ok = true }) end
  return #failures == 0, failures
end

--- Load a journal left by an earlier run, or nil if there is none.
function M.recover(path)
  local text = fs.read(path)
  if not text then return nil end
  local entries = M.decode(text, path)
  if type(entries) ~= "table" then
    log.warn("journal %s is unreadable; ignoring it", path)
    return nil
  end
  local j = M.new(path)
  j.entries = entries
  return j
end

-- Undo of a file written on the host.
M.define("file", function(e)
  return fs.remove(e.path, { missing_ok = true })
end)

return M
