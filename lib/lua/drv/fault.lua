--- drv.fault: points where the fault-injection suite stops a run, for real.
--
-- `DRVRUN_FAULT=POINT:SIGNAL` (e.g. `reload:KILL`, `before build:TERM`) makes
-- the run send SIGNAL to itself when it reaches POINT: KILL ends it there,
-- as a node crash or `kill -9` would; TERM is handled like one from outside
-- (the current step is cancelled, stop runs). Unset, a point costs one table
-- lookup. The points: `before PHASE` for each phase, `ready` (while ready),
-- `reload` (the old stack unloaded, the new one not loaded yet: armed, it makes
-- the swap unload all before it loads) and `restore`
-- (stop: the stack unloaded, the previous one not loaded back yet).
local M = {}

local sys = require "drv.sys"
local log = require "drv.log"

local point, signal = (os.getenv("DRVRUN_FAULT") or ""):match("^(.+):(%u+)$")

--- Whether `name` is the point configured: a step may take the way that passes through it.
function M.armed(name)
  return name == point
end

--- Reached `name`: send the configured signal to this process if it is the point.
function M.point(name)
  if name ~= point then return end
  log.warn("fault: SIG%s at '%s' (DRVRUN_FAULT)", signal, name)
  sys.kill(sys.getpid(), signal)
end

return M
