-- Run a drvrun snippet in a fresh private mount namespace (unshare -m), so
-- mount specs never touch the namespace the tests run in.
local proc = require "drv.proc"

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

return M
