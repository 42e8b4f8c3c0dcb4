--- drv.digests: sha256 of files, remembered between runs.
--
-- A file is hashed again only when its stat changed (device, inode, size,
-- mtime, ctime: a writer cannot set ctime back), as git's index does. A
-- restart of a driver container then reads none of its cached files.
--
--   local memo = digests.open(cache .. "/digests")
--   local sha = memo:sha256(path)   -- or nil, message, errno
--   memo:save()
local fs = require "drv.fs"
local sys = require "drv.sys"

local M = {}
local Memo = {}
Memo.__index = Memo

-- A file changed within its file system's timestamp granularity before the
-- stat could change again without its times moving: a digest is remembered
-- only when the file has not changed for `settled` seconds (a second covers
-- file systems that keep whole seconds).
local SETTLED = 1

local function stamp(st)
  return ("%d:%d:%d:%d:%d"):format(st.dev, st.ino, st.size, st.mtime_ns, st.ctime_ns)
end

--- The memo kept in `file` (absent or unreadable: an empty one).
function M.open(file)
  local memo = setmetatable({ file = file, known = {}, dirty = false, settled = SETTLED }, Memo)
  for line in (fs.read(file) or ""):gmatch("[^\n]+") do
    local sha, st, path = line:match("^(%x+) (%S+) (.+)$")
    if sha then memo.known[path] = { sha = sha, stamp = st } end
  end
  return memo
end

--- sha256 of the file at path: remembered, or computed and remembered.
function Memo:sha256(path)
  local st = fs.stat(path)
  if not st or st.type ~= "file" then return fs.sha256(path) end
  local s, e = stamp(st), self.known[path]
  if e and e.stamp == s then return e.sha end
  local sha, err, errno = fs.sha256(path)
  if not sha then return nil, err, errno end
  if math.max(st.mtime, st.ctime) < sys.time() - self.settled then
    self.known[path], self.dirty = { sha = sha, stamp = s }, true
  end
  return sha
end

--- Write the digests, when one was new; those of files that are gone are
-- dropped. Losing the file costs only a hash.
function Memo:save()
  if not self.dirty then return true end
  local lines = {}
  for path, e in pairs(self.known) do
    if fs.exists(path) then lines[#lines + 1] = ("%s %s %s"):format(e.sha, e.stamp, path) end
  end
  table.sort(lines)
  local ok, err, errno = fs.write(self.file, table.concat(lines, "\n") .. "\n", { sync = false })
  if ok then self.dirty = false end
  return ok, err, errno
end

return M
