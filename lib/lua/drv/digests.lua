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

--- The memo kept in `file` (absent or unreadable: an empty one).
-- Its lines are "sha256 stamp path". A start reads the whole memo (a hundred
-- lines for a real stack) but uses some of it: a line is only indexed by its
-- path here (plain finds; a pattern, or splitting every line, cost a restart
-- in an emulated guest milliseconds) and split when its path is asked for.
function M.open(file)
  local memo = setmetatable({ file = file, text = fs.read(file) or "", known = {}, dirty = false,
                              settled = SETTLED }, Memo)
  local text, pos, find, sub = memo.text, 1, string.find, string.sub
  while pos <= #text do
    local nl = find(text, "\n", pos, true) or #text + 1
    local sp1 = find(text, " ", pos, true)
    local sp2 = sp1 and sp1 < nl and find(text, " ", sp1 + 1, true)
    if sp2 and sp2 < nl - 1 then memo.known[sub(text, sp2 + 1, nl - 1)] = pos end
    pos = nl + 1
  end
  return memo
end

-- The entry for path: `{ sha, stamp }`, split from its line at first use.
-- (The file is drvrun's own, written whole; a digest of another length is
-- not taken.)
function Memo:entry(path)
  local e = self.known[path]
  if math.type(e) ~= "integer" then return e end
  local sp1 = self.text:find(" ", e, true)
  local sp2 = self.text:find(" ", sp1 + 1, true)
  e = { sha = self.text:sub(e, sp1 - 1), stamp = self.text:sub(sp1 + 1, sp2 - 1) }
  if #e.sha ~= 64 then e = nil end
  self.known[path] = e
  return e
end

--- sha256 of the file at path: remembered, or computed and remembered.
function Memo:sha256(path)
  local s, mtime, ctime = fs.identity(path) -- "dev:ino:size:mtime_ns:ctime_ns"
  if not s then return fs.sha256(path) end
  local e = self:entry(path)
  if e and e.stamp == s then return e.sha end
  local sha, err, errno = fs.sha256(path)
  if not sha then return nil, err, errno end
  if math.max(mtime, ctime) < sys.time() - self.settled then
    self.known[path], self.dirty = { sha = sha, stamp = s }, true
  end
  return sha
end

--- Write the digests, when one was new; those of files that are gone are
-- dropped. Losing the file costs only a hash.
function Memo:save()
  if not self.dirty then return true end
  local lines = {}
  for path in pairs(self.known) do
    local e = self:entry(path)
    if e and fs.exists(path) then lines[#lines + 1] = ("%s %s %s"):format(e.sha, e.stamp, path) end
  end
  table.sort(lines)
  local ok, err, errno = fs.write(self.file, table.concat(lines, "\n") .. "\n", { sync = false })
  if ok then self.dirty = false end
  return ok, err, errno
end

return M
