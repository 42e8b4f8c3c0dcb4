--- drv.ahead: the driver built ahead for the kernels the host will boot next, and what
-- a start on a kernel would find.
--
-- While a recipe is ready and waits (drv.lifecycle's wait), `watcher(s)` looks at the
-- kernels the host has installed (drv.kernels, under HOST_ROOT) at ready and at every
-- WATCH_INTERVAL. For one the build cache has no build for, it runs the recipe as it runs,
-- build-only for that kernel (`drvrun RECIPE ... BUILD_ONLY=true KVER=K BUILD_JOBS=AHEAD_JOBS`,
-- the code path of an image's precompile and of tools/fill-cache) as a child at nice 19 in
-- the idle I/O class: one kernel at a time, its log lines marked `ahead=K`. The running
-- driver is not touched: no reload, the ready files and the watch as they are. A failed build
-- is kept in the cache (why, and its log) and tried again when the kernel's headers change
-- (or at the next start); a TERM stops the child with the run.
--
-- `verdict(s, kver)` says what a start on kernel `kver` would find: its build in the cache,
-- one being built, a build that failed and why, no headers to build with, or nothing yet.
-- `drvrun --plan RECIPE KVER=K` prints it; `drvrun --preflight RECIPE KVER=K` prints it and
-- says it in its exit status (`EXIT`), for a cluster's upgrade tooling to wait on.
local M = {}

local cache = require "drv.cache"
local kernels = require "drv.kernels"
local proc = require "drv.proc"
local fs = require "drv.fs"
local sys = require "drv.sys"
local log = require "drv.log"
local function packages() return require "drv.packages" end -- its distro lookup only for a verdict that needs it

--- The options of building ahead (drv.recipe's common options).
M.OPTIONS = {
  HOST_ROOT = { default = "/host",
    doc = "where the host's root is mounted in the container: its lib/modules (the kernels it has installed) and "
          .. "usr (their headers: usr/src, and what they link to); / when drvrun runs on the host itself" },
  BUILD_AHEAD = { type = "boolean", default = true,
    doc = "while ready, build the driver for the other kernels installed on the host (HOST_ROOT/lib/modules) "
          .. "into the build cache, in the background at a low priority, so that a reboot into one finds it built" },
  AHEAD_JOBS = { type = "integer", default = 1, min = 1,
    doc = "parallel jobs of a build ahead (the rest of the node's CPUs stay with its work)" },
}

--- The exit status of `drvrun --preflight` for each verdict: 0 the build is in the cache (a start
-- on the kernel runs no compiler); 4 not yet (being built, or not built yet: ask again later);
-- 5 failing (the last build failed, or there are no headers to build with: it needs a change).
M.EXIT = { cached = 0, building = 4, pending = 4, failing = 5, missing = 5 }

local AHEAD_NICE = 19
local CHILD_STOP_WAIT = 30 -- seconds a stopped build ahead has to end before it is killed

-- ---- the verdict --------------------------------------------------------------------

-- Does the recipe's build key depend on what its await finds (peermem: OFED's Module.symvers
-- for the kernel)? Then only a run for the kernel knows it: the newest build for it stands in.
local function keyed_by_await(s)
  return s.recipe.await ~= nil or s.recipe.requires ~= nil
end

local function sources_at_hand(s)
  for key in pairs(s.source_specs) do
    if not s.sources[key] then return false end
  end
  return true
end

-- What failed (a failure's first line), the first line of its log's that says why (a compiler's
-- error), its log.
local function failure_text(f)
  local first = f.message:match("^[^\n]*"):gsub("; last lines of .*$", "")
  local err = require("drv.compile").first_error(f.message:match("\n(.*)$") or "")
  local parts = { first }
  if err then parts[#parts + 1] = "first error: " .. err:match("^%s*(.-)%s*$") end
  if f.log ~= "" then parts[#parts + 1] = "log: " .. f.log end
  return table.concat(parts, "; ") .. (" (%s)"):format(f.time)
end

--- What a start on kernel `kver` would find: `{ state, text }`, state one of cached, building,
-- failing, missing (no headers to build with), pending (not built yet); `M.EXIT[state]` its
-- exit status. The run's sources must be at hand (fetched, or in the cache) for an exact answer.
function M.verdict(s, kver)
  local exact = not keyed_by_await(s) and sources_at_hand(s)
  local entry = cache.entry(s, kver)
  if exact and cache.load(s, entry) then
    return { state = "cached", text = ("in the build cache (%s): a start on it runs no compiler"):format(entry.dir) }
  end
  local builder = cache.builder(s, kver)
  if builder then return { state = "building", text = "being built (" .. builder .. ")" } end
  if not exact then
    local _, _, latest = cache.latest(s, kver)
    if latest then
      return { state = "cached", text = ("in the build cache (%s, the newest build for it: its key depends on what "
                                         .. "the run awaits): a start on it runs no compiler"):format(latest.dir) }
    end
  end
  local failed = cache.failure(s, kver)
  if failed and (not exact or failed.key == entry.key) then
    return { state = "failing", text = "the last build failed: " .. failure_text(failed) }
  end
  local headers, why = kernels.headers(kver, s.opt.HOST_ROOT)
  if not headers then
    return { state = "missing", text = ("not built, and no kernel headers to build it with: %s; a build would install "
                                        .. "the package %s, if it can be had"):format(why, packages().kernel_headers(kver)) }
  end
  return { state = "pending", text = ("not built yet (headers: %s)"):format(headers) }
end

--- Say the verdict for the run's kernel (a plan's line).
function M.plan(s, say)
  local v = M.verdict(s, s.kver)
  say("kernel %s: %s [%s]", s.kver, v.text, v.state)
  return v
end

-- ---- the watcher ------------------------------------------------------------------------

local Watcher = {}
Watcher.__index = Watcher

--- The watcher of a run that is ready (nil when BUILD_AHEAD is off, in a build-only run, or
-- when the host's kernels are not to be seen: HOST_ROOT/lib/modules is not mounted).
function M.watcher(s)
  if not s.opt.BUILD_AHEAD or s.opt.BUILD_ONLY then return nil end
  local modules = kernels.host_modules(s.opt.HOST_ROOT)
  if not modules then
    log.info("ahead: the host's kernels are not at %s/lib/modules (HOST_ROOT): nothing is built ahead", s.opt.HOST_ROOT)
    return nil
  end
  return setmetatable({ s = s, modules = modules, looked = {} }, Watcher)
end

--- The build ahead for kernel `kver` of recipe file `recipe_file` run with options `args`
-- (`{ NAME = "value" }`): its command line (the run's own, build-only for `kver`, `jobs` jobs)
-- and drv.proc.spawn's options (nice 19, the idle I/O class, its log lines marked `ahead=K`).
function M.command(recipe_file, args, kver, jobs)
  local argv = { assert(fs.readlink("/proc/self/exe")), "--log-format", log.format, "--log-level", log.level,
                 recipe_file }
  local set = { BUILD_ONLY = "true", KVER = kver, BUILD_JOBS = tostring(jobs) }
  local names = {}
  for k in pairs(args or {}) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    if not set[k] then argv[#argv + 1] = k .. "=" .. args[k] end
  end
  for _, k in ipairs { "BUILD_ONLY", "KVER", "BUILD_JOBS" } do argv[#argv + 1] = k .. "=" .. set[k] end
  return argv, { nice = AHEAD_NICE, io_idle = true, env = { DRVRUN_LOG_FIELDS = "ahead=" .. kver } }
end

function Watcher:start(kver, headers)
  local s = self.s
  local p, err = proc.spawn(M.command(s.recipe_file, s.args, kver, s.opt.AHEAD_JOBS))
  if not p then return log.error("ahead: cannot start the build for kernel %s: %s", kver, err) end
  self.child, self.kver, self.started = p, kver, sys.monotonic()
  log.info("ahead: kernel %s is installed on the host (%s/%s) and has no build here: building it in the background "
           .. "(pid %d, nice %d, idle I/O, %d jobs; headers: %s); the driver stays loaded and ready", kver, self.modules,
           kver, p:pid(), AHEAD_NICE, s.opt.AHEAD_JOBS, headers)
end

-- The build ahead, when it has ended: its outcome logged.
function Watcher:reap()
  local p = self.child
  if not p or p:running() then return end
  local res = p:wait()
  local seconds = log.seconds(sys.monotonic() - self.started)
  self.child = nil
  if res.status == 0 then
    local v = M.verdict(self.s, self.kver)
    log.info("ahead: kernel %s: built in %s s; %s", self.kver, seconds, v.text)
    return
  end
  local failed = cache.failure(self.s, self.kver)
  log.warn("ahead: kernel %s: the build failed after %s s (exit %s): %s; tried again when its headers change",
           self.kver, seconds, tostring(res.status or res.signal), failed and failure_text(failed) or "see its log above")
end

--- Look at the host's kernels; start a build ahead for the first that needs one. Called at
-- ready and at each wake-up of the wait; never raises (the driver's wait goes on).
function Watcher:tick()
  local ok, err = pcall(function()
    self:reap()
    if self.child then return end
    for _, kver in ipairs(kernels.installed(self.modules)) do
      local headers, why = kernels.headers(kver, self.s.opt.HOST_ROOT)
      local seen = headers or why
      if kver ~= self.s.kver and self.looked[kver] ~= seen then
        self.looked[kver] = seen
        local v = M.verdict(self.s, kver)
        -- a failed build is tried again at a start, and when the kernel's headers change
        if v.state ~= "cached" and v.state ~= "building" then return self:start(kver, headers or "none: " .. why) end
        log.info("ahead: kernel %s is installed on the host: %s", kver, v.text)
      end
    end
  end)
  if not ok then log.error("ahead: %s", tostring(err)) end
end

--- Stop the build ahead, if one runs (TERM; KILL after 30 s).
function Watcher:stop()
  local p = self.child
  if not p or not p:running() then return end
  log.info("ahead: stopping the build for kernel %s", self.kver)
  p:kill("TERM")
  if not p:wait(CHILD_STOP_WAIT) then
    p:kill("KILL")
    p:wait()
  end
  self.child = nil
end
Watcher.__close = Watcher.stop -- `local w <close> = ahead.watcher(s)`: the wait's end stops it

return M
