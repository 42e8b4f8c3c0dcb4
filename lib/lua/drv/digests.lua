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
-- lines for a real stack) but looks up a few of its paths: nothing is split
-- until a path is asked for, and then one plain find (in C) finds its line
-- (splitting every line cost a restart in an emulated guest milliseconds).
function M.open(file)
  local text = fs.read(file) or ""
  if text ~= "" and text:sub(-1) ~= "\n" then text = text .. "\n" end
  return setmetatable({ file = file, text = "\n" .. text, known = {}, dirty = false, settled = SETTLED }, Memo)
end

-- The entry for path in the memo's text: `{ sha, stamp }`, or nil. The two
-- fields before the path are read from the hundred bytes before it (a line is
-- 64 hex digits, a stamp of some 60 bytes and the path). (The file is
-- drvrun's own, written whole; a digest of another length is not taken.)
local function parse_entry(text, path)
  local at = 1
  repeat
    local s = text:find(" " .. path .. "\n", at, true)
    if not s then return nil end
    local sha, stamp = text:sub(math.max(1, s - 200), s - 1):match("\n(%x+) (%S+)$")
    if sha and #sha == 64 then return { sha = sha, stamp = stamp } end
    at = s + 1
  until false
end

-- The entry for path: `{ sha, stamp }`, found in the memo's text at first use.
function Memo:entry(path)
  local e = self.known[path]
  if e == nil then
    e = parse_entry(self.text, path) or false
    self.known[path] = e
  end
  return e or nil
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
  for path in self.text:gmatch("%x+ %S+ ([^\n]*)") do self:entry(path) end
  local lines = {}
  for path, e in pairs(self.known) do
    if e and fs.exists(path) then lines[#lines + 1] = ("%s %s %s"):format(e.sha, e.stamp, path) end
  end
  table.sort(lines)
  local ok, err, errno = fs.write(self.file, table.concat(lines, "\n") .. "\n", { sync = false })
  if ok then self.dirty = false end
  return ok, err, errno
end

return M
