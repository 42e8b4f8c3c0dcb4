--- drv.recipe: load a recipe and run it through the driver-container lifecycle.
--
-- prepare -> await -> build -> install -> load -> expose -> ready -> (wait for a signal) -> stop
--
-- Every recipe gets the same guarantees: a host-wide lock around every change
-- (install to ready, and stop) but not around waiting or building; ready files
-- removed at start, written atomically only after every module is verified
-- loaded, removed first on stop, and removed (the run ends) when the modules
-- are unloaded behind its back; a journal of host changes that stop (or the
-- next run, after a crash) undoes in reverse; signals stop the current phase
-- and run stop; one log line when a phase starts and one when it ends.
-- See doc/recipes.md.
local M = {}

local config = require "drv.config"
local options = require "drv.options"
local run = require "drv.run"
local phases = require "drv.phases"
local stop = require "drv.stop"
local fault = require "drv.fault"
local netcfg = require "drv.netcfg"
local sys = require "drv.sys"
local log = require "drv.log"

local PHASES = { "prepare", "await", "build", "install", "load", "expose", "ready" }
local BUILD_PHASES = { "prepare", "await", "build", "install" }

-- Fields a recipe may have: the types each may be, and whether it is required.
-- `stack` and `sources` may be functions of the run, for choices made by options.
-- `stack` names the modules the driver loads; what depends on what comes from
-- the build (the modules' own `depends`).
local FIELDS = {
  name = { "string", true }, version = { "string", true }, description = { "string", false },
  options = { "table", false }, stack = { "table|function", true }, sources = { "table|function", false },
  await = { "function", false }, prepare = { "function", false }, build = { "function", false },
  install = { "function", false }, before_load = { "function", false }, after_load = { "function", false },
  stop = { "function", false }, unload_also = { "function", false }, blacklist = { "function", false },
  expose = { "string", false }, module_options = { "function", false },
}

-- Options every recipe has (a recipe may override their defaults).
local COMMON = {
  KVER = { doc = "kernel release to build for (default: the running kernel)" },
  ROOT = { default = "/", doc = "root to install modules and headers into" },
  BUILD_ONLY = { type = "boolean", default = false,
                 doc = "fetch, build and install into ROOT for KVER; do not touch the running kernel" },
  FETCH_TIMEOUT = { type = "integer", default = 3600, min = 0,
                    doc = "seconds a download may take in all, retries and waits included (0: no limit)" },
  FETCH_STALL_TIMEOUT = { type = "integer", default = 60, min = 1,
                          doc = "seconds without a byte before a download attempt is given up (and retried)" },
  CACHE_DIR = { default = "/var/cache/drvrun", doc = "downloads and build results, per kernel" },
  CACHE_KEEP = { type = "integer", default = 2, min = 1,
                 doc = "builds kept per kernel, most recently used first (2: this one and one to roll back to)" },
  STATE_DIR = { default = "/run/drvrun", doc = "journal of host changes, for stop and crash recovery" },
  LOCK_FILE = { default = "/run/drvrun/host.lock", doc = "host-wide lock: one driver reload at a time" },
  INSTANCE_WAIT = { type = "integer", default = 0, min = 0,
                    doc = "seconds to wait for another instance of this recipe on the host to end (0: refuse at once)" },
  LOCK_TIMEOUT = { type = "integer", default = 600, min = 0, doc = "seconds to wait for the host-wide lock" },
  READY_FILES = { type = "list", default = "/.driver-ready", doc = "files written when the driver is ready" },
  AWAIT_TIMEOUT = { type = "integer", default = 2400, min = 0,
                    doc = "seconds to wait for what the recipe needs (other driver containers)" },
  WATCH_INTERVAL = { type = "integer", default = 10, min = 0,
                     doc = "while ready, seconds between checks that the modules are still loaded (0: never)" },
  STOP_TIMEOUT = { type = "integer", default = 120, min = 0, doc = "seconds stop may take before it gives up" },
  BUILD_TIMEOUT = { type = "integer", default = 3600, min = 1, doc = "seconds a build may take (all its steps)" },
  BUILD_JOBS = { type = "integer", default = 0, min = 0, doc = "parallel build jobs (0: one per CPU)" },
  CCACHE = { type = "boolean", default = true,
             doc = "compile through ccache when it is installed, its cache kept in CACHE_DIR: a rebuild "
                   .. "recompiles only what changed" },
  WAIT = { type = "boolean", default = true, doc = "after ready, wait for a signal, then stop" },
}
for name, spec in pairs(netcfg.OPTIONS) do COMMON[name] = spec end -- NET_RESTORE, the guard, the hooks

local function check_stack(names, level)
  local expected = "recipe field 'stack': a list of module names expected ({ \"ib_core\", \"mlx5_core\" })"
  if type(names) ~= "table" then error(expected .. ", got " .. type(names), level) end
  local seen = {}
  for key, name in pairs(names) do
    if math.type(key) ~= "integer" or key > #names or type(name) ~= "string" or not name:match("^[%w_]+$") then
      error(expected, level)
    end
    if seen[name] then error(("recipe field 'stack': %s is listed twice"):format(name), level) end
    seen[name] = true
  end
end

local function check_sources(sources, level)
  if type(sources) ~= "table" then error("recipe field 'sources': table expected, got " .. type(sources), level) end
  for key, src in pairs(sources) do
    local where = ("recipe field 'sources.%s'"):format(tostring(key))
    if type(src) ~= "table" then error(where .. ": table expected", level) end
    if (src.url == nil) == (src.path == nil) then
      error(where .. ": { url = ..., sha256 = ... } or { path = ... } expected", level)
    end
    if src.url ~= nil and (type(src.url) ~= "string" or type(src.sha256) ~= "string") then
      error(where .. ": url and sha256 must be strings", level)
    end
    if src.path ~= nil and type(src.path) ~= "string" then error(where .. ": path must be a string", level) end
  end
end

--- Check a recipe table; raises naming the field at fault.
function M.check(recipe, level)
  level = (level or 1) + 1
  if type(recipe) ~= "table" then error("recipe: table expected, got " .. type(recipe), level) end
  for key, value in pairs(recipe) do
    local f = FIELDS[key]
    if not f then error(("recipe: unknown field '%s'"):format(tostring(key)), level) end
    if not ("|" .. f[1] .. "|"):find("|" .. type(value) .. "|", 1, true) then
      error(("recipe field '%s': %s expected, got %s"):format(key, f[1]:gsub("|", " or "), type(value)), level)
    end
  end
  for key, f in pairs(FIELDS) do
    if f[2] and recipe[key] == nil then error(("recipe: missing field '%s'"):format(key), level) end
  end
  if type(recipe.stack) == "table" then check_stack(recipe.stack, level) end
  if type(recipe.sources) == "table" then check_sources(recipe.sources, level) end
  options.check_specs(recipe.options or {}, level)
  return recipe
end

--- Every option of a recipe, the common ones included: `{ NAME = spec }`.
function M.option_specs(recipe)
  local specs = {}
  for k, v in pairs(COMMON) do specs[k] = v end
  for k, v in pairs(recipe.options or {}) do specs[k] = v end
  return specs
end
local option_specs = M.option_specs

-- A field that may be a function of the run (stack, sources): its value for this run.
local function resolve_field(r, key, check)
  local v = r.recipe[key]
  if type(v) == "function" then
    v = v(r)
    check(v, 4)
  end
  return v
end

local function new_run(recipe, opt)
  local r = run.new(recipe, opt)
  r.stack = resolve_field(r, "stack", check_stack)
  r.source_specs = resolve_field(r, "sources", check_sources) or {}
  local also, why = (recipe.unload_also or function() end)(r)
  r.unload_also, r.unload_why = also or {}, why or {}
  return r
end

local function run_phase(r, name)
  fault.point("before " .. name)
  r:check_cancel()
  local t0 = sys.monotonic()
  log.event("info", "phase " .. name .. " started", { phase = name })
  phases[name](r)
  local saved, err = r.digests:save()
  if not saved then log.warn("cache: cannot keep the file digests: %s", err) end
  local seconds = sys.monotonic() - t0
  log.event("info", ("phase %s done in %s s"):format(name, log.seconds(seconds)),
            { phase = name, seconds = math.floor(seconds * 1000 + 0.5) / 1000 })
end

local function error_text(e)
  if getmetatable(e) == run.Cancel then return "interrupted by SIG" .. e.signal end
  return tostring(e)
end

--- Run the lifecycle; returns the exit code: 0 done (or interrupted and
-- stopped cleanly), 1 failed, 3 another instance of the recipe runs on the host.
function M.run(recipe, opt)
  local r = new_run(recipe, opt)
  r.started = sys.monotonic()
  r.ready_files = opt.READY_FILES
  r.blacklist_file = opt.BLACKLIST_FILE
  r.restore_on_stop = opt.RESTORE_DRIVER_ON_POD_TERMINATION ~= false
  r.signals = sys.signals({ "TERM", "INT", "HUP" })
  log.info("%s %s for kernel %s", recipe.name, recipe.version, r.kver)
  local changes_host = not opt.BUILD_ONLY
  if changes_host then
    local refused = stop.claim(r)
    if refused then
      r.signals:close()
      return refused
    end
  end
  local ok, err = pcall(function()
    if changes_host then
      stop.remove_ready(r)
      stop.remove_stale_blacklist(r)
      stop.recover(r)
    end
    for _, name in ipairs(changes_host and PHASES or BUILD_PHASES) do
      if name == "install" and changes_host then stop.lock(r) end
      run_phase(r, name)
    end
  end)
  if not ok then log.error("%s", error_text(err)) end
  if ok and opt.WAIT and changes_host then
    stop.unlock(r)
    fault.point("ready")
    stop.wait_for_signal(r)
  end
  if changes_host and not r.lock and #r.journal.entries > 0 then
    -- stop changes the host too; it waits for the lock no longer than it may take (STOP_TIMEOUT:
    -- the engine's grace ends in SIGKILL), then proceeds without it rather than not at all
    local lok = pcall(stop.lock, r, math.min(opt.LOCK_TIMEOUT, opt.STOP_TIMEOUT))
    if not lok then log.warn("stop: proceeding without the host-wide lock") end
  end
  local stopped = not changes_host or (ok and not opt.WAIT) or stop.stop(r)
  stop.unlock(r)
  stop.release(r)
  r.signals:close()
  if not stopped or r.lost then return 1 end
  if not ok and getmetatable(err) ~= run.Cancel then return 1 end
  return 0
end

--- Print what a run would do, changing nothing (drv.plan).
function M.plan(recipe, opt, out)
  return require("drv.plan").plan(new_run(recipe, opt), option_specs(recipe), out)
end

--- Print how to run a recipe and its options with their values here, given
-- the KEY=VALUE arguments `kv` (`drvrun RECIPE --help`).
function M.help(recipe, script, kv, out)
  return require("drv.plan").help(recipe, option_specs(recipe), script, kv, out)
end

--- Entry point used by drvrun for a script that returns a recipe table.
-- @tparam table recipe the table the script returned
-- @tparam string script its path
-- @tparam table arg the global arg (KEY=VALUE options at 1..n)
-- @treturn integer exit code
function M.main(recipe, script, arg)
  M.check(recipe, 2)
  local kv, positional = options.parse_args(arg)
  if positional[1] == "--help" or positional[1] == "-h" then return M.help(recipe, script, kv) end
  if #positional > 0 then
    log.error("%s: unexpected argument '%s' (options are KEY=VALUE; %s --help lists them)", script,
              positional[1], script)
    return 2
  end
  local opt, err = options.resolve(option_specs(recipe), kv)
  if not opt then
    log.error("%s: %s", script, err)
    return 2
  end
  if config.plan then return M.plan(recipe, opt) end
  return M.run(recipe, opt)
end

return M
