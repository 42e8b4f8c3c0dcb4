-- Run a drvrun snippet in a fresh private mount namespace (unshare -m), so
-- mount specs never touch the namespace the tests run in; and a network
-- namespace of its own for specs that change links, addresses and routes.
local proc = require "drv.proc"
local fs = require "drv.fs"
local sys = require "drv.sys"

local M = {}

--- Run `code` under `unshare -m --propagation PROP`; returns the proc result.
function M.run(code, propagation)
  return assert(proc.run({ "unshare", "-m", "--propagation", propagation or "private",
                           os.getenv("DRVRUN"), "-e", code }))
end

--- Mount targets under `prefix` in this (the test's) namespace.
function M.mounts_under(prefix)
  local found = {}
  for line in io.lines("/proc/self/mountinfo") do
    local target = line:match("^%S+ %S+ %S+ %S+ (%S+)")
    if target:sub(1, #prefix) == prefix then found[#found + 1] = target end
  end
  return found
end

--- A new network namespace, held by a sleeping process until `:close()`:
-- `{ path = "/proc/PID/ns/net", ip = function(...) (runs ip(8) in it), close = function() }`.
function M.netns()
  local p = assert(proc.spawn({ "unshare", "-n", "sleep", "3600" }))
  local path = ("/proc/%d/ns/net"):format(p:pid())
  local own = fs.readlink("/proc/self/ns/net")
  local deadline = sys.monotonic() + 10
  while fs.readlink(path) == own or not fs.readlink(path) do
    assert(p:running() and sys.monotonic() < deadline, "unshare -n did not make a network namespace")
    sys.sleep(0.01)
  end
  local ns = { path = path }
  function ns.ip(...)
    local r = assert(proc.run({ "nsenter", "--net=" .. path, "ip", ... }))
    assert(r.status == 0, "ip " .. table.concat({ ... }, " ") .. ": " .. r.stderr)
    return r.stdout
  end
  function ns.close()
    if p:running() then p:kill("KILL") end
    p:wait()
  end
  return ns
end

return M
