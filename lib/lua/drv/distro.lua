--- drv.distro: facts about the distribution drvrun runs on.
local M = {}

local fs = require "drv.fs"
local sys = require "drv.sys"

local ESCAPES = { ["\\"] = "\\", ['"'] = '"', ["$"] = "$", ["`"] = "`" }

-- A value of os-release(5): shell-like quoting with \ escapes in double quotes.
local function unquote(v)
  local q = v:sub(1, 1)
  if (q == '"' or q == "'") and v:sub(-1) == q and #v >= 2 then
    v = v:sub(2, -2)
    if q == '"' then v = v:gsub("\\(.)", function(c) return ESCAPES[c] or "\\" .. c end) end
  end
  return v
end

--- Parse os-release(5).
-- @tparam[opt] string path default /etc/os-release, else /usr/lib/os-release
-- @treturn[1] table `{ ID = "ubuntu", VERSION_ID = "22.04", ... }`
-- @treturn[2] nil, message
function M.os_release(path)
  local text, err = fs.read(path or "/etc/os-release")
  if not text and not path then text, err = fs.read("/usr/lib/os-release") end
  if not text then return nil, err end
  local t = {}
  for line in text:gmatch("[^\n]+") do
    local k, v = line:match("^%s*([%w_]+)=(.-)%s*$")
    if k then t[k] = unquote(v) end
  end
  return t
end

--- The OS tag vendor bundles use, e.g. "ubuntu22.04", "rhel9.2", "debian12".
function M.id(release)
  release = release or assert(M.os_release())
  return (release.ID or "linux") .. (release.VERSION_ID or "")
end

--- The CPU architecture, as uname -m says it.
function M.arch()
  return sys.uname().machine
end

return M
