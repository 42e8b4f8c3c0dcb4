--- drv.stop: the end of a run and what comes before its start: the host-wide
-- lock, stop (ready files first, then the journal undone in reverse), the
-- watch while ready, and the recovery of what a killed run left.
local M = {}

local journal = require "drv.journal"
local stack = require "drv.stack"
local netcfg = require "drv.netcfg"
local kmod = require "drv.kmod"
local mount = require "drv.mount"
local fs = require "drv.fs"
local sys = require "drv.sys"
local log = require "drv.log"

function M.remove_ready(r)
  for _, path in ipairs(r.ready_files) do
    local ok, err = fs.remove(path, { missing_ok = true })
    if not ok then log.error("stop: cannot remove ready file %s: %s", path, err) end
  end
end

-- Undo kinds this library records.
-- Only an exposed root goes: the volume under it stays (a recovery found no
-- root there, the killed run's having gone with its namespace, and unmounted
-- the volume itself: the next expose then went to the container's own mounts).
journal.define("mount", function(e)
  if not require("drv.expose").exposed_at(e.target) then return true end
  return mount.umount(e.target, { lazy = true })
end)

journal.define("modules", function(e, o)
  if not e.restore then return true end
  if o.lost then log.warn("stop: the modules changed behind this run's back: leaving them as they are"); return true end
  if o.hurry then
    log.warn("stop: %s: not restoring the inbox modules; %s stay loaded as they are", o.hurry,
             table.concat(e.names, " "))
    return true
  end
  log.info("stop: unloading %s (holders first)", table.concat(e.names, " "))
  return netcfg.around(e.net, function() return stack.restore(e.names, e.previous) end, o.deadline)
end)

--- Stop: ready files first, then undo the journal; a second signal hurries it.
function M.stop(r)
  local t0 = sys.monotonic()
  log.event("info", "phase stop started", { phase = "stop" })
  M.remove_ready(r)
  if r.recipe.stop then
    local ok, err = pcall(r.recipe.stop, r)
    if not ok then log.error("stop: %s", tostring(err)) end
  end
  -- A second signal, or the deadline, hurries the rest: handlers skip slow work.
  local deadline = t0 + r.opt.STOP_TIMEOUT
  local o = { hurry = false, lost = r.lost, deadline = deadline }
  o.skip = function()
    if not o.hurry then
      o.hurry = (r.signals:poll() and "second signal")
                or (sys.monotonic() > deadline and ("STOP_TIMEOUT (%d s) reached"):format(r.opt.STOP_TIMEOUT))
      if o.hurry then log.warn("stop: %s: skipping the slow parts", o.hurry) end
    end
    return false
  end
  local ok, failures = r.journal:undo_all(o)
  if not ok then log.error("stop: %s", table.concat(failures, "; ")) end
  log.event("info", ("phase stop done in %.3f s"):format(sys.monotonic() - t0), { phase = "stop" })
  return ok
end

local EINTR = 4
local REFUSED = 3 -- exit code: another instance runs

--- Hold this recipe's instance lock (`STATE_DIR/<name>.lock`) for the whole
-- run, stop included: what a second instance on the host would undo (the
-- journal, the ready files) belongs to a live run. Returns nil when held, or
-- the exit code after saying which instance runs (INSTANCE_WAIT: how long to
-- wait for it first).
function M.claim(r)
  local path = ("%s/%s.lock"):format(r.opt.STATE_DIR, r.recipe.name)
  r:must("instance lock", fs.mkdir(r.opt.STATE_DIR))
  local l, err, errno = sys.lock(path, {
    timeout = r.opt.INSTANCE_WAIT, remove = true,
    owner = ("%s %s on %s"):format(r.recipe.name, r.recipe.version, sys.hostname() or "?"),
    on_wait = function(holder)
      log.info("instance: another %s runs on this host (%s): waiting up to %d s for it to end", r.recipe.name,
               holder, r.opt.INSTANCE_WAIT)
    end,
  })
  if l then
    r.instance = l
    return nil
  end
  if errno == EINTR then
    log.info("instance: %s; nothing was changed", err)
    return 0
  end
  log.error("instance: another %s runs on this host (%s); it is left as it is. Stop it first (its pod or container), "
            .. "or set INSTANCE_WAIT=SECONDS to wait for it", r.recipe.name, err:match("held by (.*)$") or err)
  return REFUSED
end

--- Let go of the instance lock (at the very end of a run).
function M.release(r)
  if r.instance then r.instance:unlock() end
  r.instance = nil
end

--- A blacklist file a killed run of this recipe left (its first line says drvrun
-- wrote it): removed at start, under the instance lock, before anything else.
function M.remove_stale_blacklist(r)
  local file = r.blacklist_file
  if not file or file == "" then return end
  local text = fs.read(file)
  if text and text:find("^# Written by drvrun " .. r.recipe.name:gsub("%p", "%%%0") .. " ") then
    r:must("remove the stale blacklist " .. file, fs.remove(file))
    log.warn("blacklist: removed %s, left by a run of %s that did not stop cleanly", file, r.recipe.name)
  end
end

--- Take the host-wide lock (LOCK_FILE), waiting up to LOCK_TIMEOUT (or `timeout` seconds).
function M.lock(r, timeout)
  r.lock = r:take_lock("lock", r.opt.LOCK_FILE, {
    timeout = timeout or r.opt.LOCK_TIMEOUT,
    owner = ("%s %s"):format(r.recipe.name, r.recipe.version),
    on_wait = function(holder) log.info("lock: waiting for %s (held by %s)", r.opt.LOCK_FILE, holder) end,
  })
end

-- The lock covers changes, not waiting or building: other driver containers
-- on the host must be able to reload meanwhile.
function M.unlock(r)
  if r.lock then r.lock:unlock() end
  r.lock = nil
end

function M.recover(r)
  local old = journal.recover(r.journal.path)
  if not old or #old.entries == 0 then return end
  M.lock(r) -- another container may be mid-reload
  log.warn("recovery: undoing %d changes left by an earlier run that did not stop cleanly", #old.entries)
  local ok, failures = old:undo_all({ hurry = false })
  if not ok then r:fail("recovery: %s", table.concat(failures, "; ")) end
  M.unlock(r)
end

-- While ready: wait for a signal, checking every WATCH_INTERVAL seconds that
-- the modules are still the built ones. False when they are not.
function M.wait_for_signal(r)
  log.info("waiting for a signal (TERM, INT or HUP) to stop")
  local interval = r.opt.WATCH_INTERVAL > 0 and r.opt.WATCH_INTERVAL or nil
  local want = r:built_srcversions()
  while true do
    local sig = r.signals:wait(interval)
    if sig then
      log.info("received SIG%s", sig)
      return true
    end
    local ctx = kmod.new() -- not r:kmod(): nothing here may raise
    local good, bad = true, nil
    if ctx then good, bad = stack.verify(ctx, want) end
    if not good then
      log.error("watch: the driver is not loaded as built any more (%s): no longer ready; stopping, so that "
                .. "the container is restarted and loads it again", table.concat(bad, "; "))
      r.lost = true
      return false
    end
  end
end

return M
