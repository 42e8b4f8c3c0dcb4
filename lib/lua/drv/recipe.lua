--- drv.recipe: load a recipe and run it through the driver-container lifecycle.
--
-- prepare -> build -> install -> load -> expose -> ready -> (wait for a signal) -> stop
--
-- Every recipe gets the same guarantees: a host-wide lock before the first
-- change; ready files removed at start, written atomically only after every
-- module is verified loaded, removed first on stop; a journal of host changes
-- that stop (or the next run, after a crash) undoes in reverse; signals stop
-- the current phase and run stop; one log line when a phase starts and one
-- when it ends. See doc/recipes.md.
local M = {}

local config = require "drv.config"
local options = require "drv.options"
local journal = require "drv.journal"
local stack = require "drv.stack"
local graph = require "drv.graph"
local compile = require "drv.compile"
local fetch = require "drv.fetch"
local archive = require "drv.archive"
local kmod = require "drv.kmod"
local mount = require "drv.mount"
local proc = require "drv.proc"
local fs = require "drv.fs"
local sys = require "drv.sys"
local log = require "drv.log"

local PHASES = { "prepare", "build", "install", "load", "expose", "ready" }

-- Fields a recipe may have: the type each must be, and whether it is required.
local FIELDS = {
  name = { "string", true }, version = { "string", true }, description = { "string", false },
  options = { "table", false }, stack = { "table", true }, sources = { "table", false },
  prepare = { "function", false }, build = { "function", false }, install = { "function", false },
  after_load = { "function", false }, stop = { "function", false },
  unload_also = { "function", false }, blacklist = { "function", false },
  expose = { "string", false }, module_options = { "function", false },
}

-- Options every recipe has (a recipe may override their defaults).
local COMMON = {
  KVER = { doc = "kernel release to build for (default: the running kernel)" },
  ROOT = { default = "/", doc = "root to install modules and headers into" },
  BUILD_ONLY = { type = "boolean", default = false,
                 doc = "fetch, build and install into ROOT for KVER; do not touch the running kernel" },
  CACHE_DIR = { default = "/var/cache/drvrun", doc = "downloads and build results, per kernel" },
  STATE_DIR = { default = "/run/drvrun", doc = "journal of host changes, for stop and crash recovery" },
  LOCK_FILE = { default = "/run/drvrun/host.lock", doc = "host-wide lock: one driver reload at a time" },
  LOCK_TIMEOUT = { type = "integer", default = 600, doc = "seconds to wait for the host-wide lock" },
  READY_FILES = { type = "list", default = "/.driver-ready", doc = "files written when the driver is ready" },
  STOP_TIMEOUT = { type = "integer", default = 120, doc = "seconds stop may take before it gives up" },
  BUILD_TIMEOUT = { type = "integer", default = 3600, doc = "seconds a build may take" },
  BUILD_JOBS = { type = "integer", default = 0, doc = "parallel build jobs (0: one per CPU)" },
  WAIT = { type = "boolean", default = true, doc = "after ready, wait for a signal, then stop" },
}

local Cancel = {} -- metatable of the error raised when a signal cancels a phase

--- Check a recipe table; raises naming the field at fault.
function M.check(recipe, level)
  level = (level or 1) + 1
  if type(recipe) ~= "table" then error("recipe: table expected, got " .. type(recipe), level) end
  for key, value in pairs(recipe) do
    local f = FIELDS[key]
    if not f then error(("recipe: unknown field '%s'"):format(tostring(key)), level) end
    if type(value) ~= f[1] then
      error(("recipe field '%s': %s expected, got %s"):format(key, f[1], type(value)), level)
    end
  end
  for key, f in pairs(FIELDS) do
    if f[2] and recipe[key] == nil then error(("recipe: missing field '%s'"):format(key), level) end
  end
  for name, deps in pairs(recipe.stack) do
    if type(name) ~= "string" or type(deps) ~= "table" then
      error("recipe field 'stack': { module = { dependencies... } } expected", level)
    end
  end
  local _, err = graph.levels(recipe.stack)
  if err then error("recipe field 'stack': " .. err, level) end
  options.check_specs(recipe.options or {}, level)
  return recipe
end

local function option_specs(recipe)
  local specs = {}
  for k, v in pairs(COMMON) do specs[k] = v end
  for k, v in pairs(recipe.options or {}) do specs[k] = v end
  return specs
end

-- The run object handed to phase functions: options, kernel, paths, helpers.
local Run = {}
Run.__index = Run

local function new_run(recipe, opt)
  local r = setmetatable({ recipe = recipe, opt = opt, sources = {}, built = nil }, Run)
  r.kver = opt.KVER or sys.uname().release
  r.root = opt.ROOT
  r.cache = ("%s/%s"):format(opt.CACHE_DIR, recipe.name)
  r.journal = journal.new(("%s/%s.journal"):format(opt.STATE_DIR, recipe.name))
  return r
end

--- Path under the install root.
function Run:path(p)
  if self.root == "/" then return p end
  return self.root .. p
end

--- Raise a cancel when a signal has arrived.
function Run:check_cancel()
  local sig = self.signals and self.signals:poll()
  if sig then
    self.cancelled = sig
    error(setmetatable({ signal = sig }, Cancel), 0)
  end
end

--- Fail the current phase with a message for the operator.
function Run.fail(_, fmt, ...)
  error(select("#", ...) > 0 and fmt:format(...) or fmt, 0)
end

local function ok_or_fail(r, what, ok, err)
  if not ok then r:fail("%s: %s", what, err) end
  return ok
end

--- Build with kbuild for this run's kernel; installs headers first when needed.
function Run:kbuild(o)
  o.kver = o.kver or self.kver
  o.jobs = o.jobs or (self.opt.BUILD_JOBS > 0 and self.opt.BUILD_JOBS or nil)
  o.timeout = o.timeout or self.opt.BUILD_TIMEOUT
  o.kdir = o.kdir or compile.kernel_build_dir(o.kver)
  self:ensure_headers(o.kdir, o.kver)
  local res, err = compile.kbuild(o)
  self:check_cancel()
  if not res then self:fail("%s", err) end
  return res
end

--- Make sure kernel headers for `kver` exist; install linux-headers-KVER with apt if not.
function Run:ensure_headers(kdir, kver)
  if fs.exists(kdir .. "/Makefile") then return end
  local pkg = "linux-headers-" .. kver
  log.info("kernel headers for %s missing (%s): installing %s", kver, kdir, pkg)
  local res, err = proc.run({ "apt-get", "install", "-y", "--no-install-recommends", pkg },
                            { stderr = "stdout", timeout = self.opt.BUILD_TIMEOUT })
  if not res or res.status ~= 0 then
    self:fail("kernel headers for %s not found at %s, and installing %s failed: %s", kver, kdir, pkg,
      res and res.stdout:match("E: ([^\n]*)") or err or "apt-get failed")
  end
end

--- Extract an archive into a fresh directory under the build area; returns the directory.
function Run:extract(path, o)
  local dir = ("%s/%s/work/%s"):format(self.cache, self.kver, (path:match("[^/]+$"):gsub("%.t[agx]z$", "")))
  fs.remove(dir, { recursive = true, missing_ok = true })
  ok_or_fail(self, "extract", fs.mkdir(dir))
  local res, err = archive.extract(path, dir, o)
  ok_or_fail(self, "extract " .. path, res, err)
  return dir
end

-- Sources: fetched into the cache, skipped when present with the right checksum.
local function fetch_sources(r)
  local dir = r.cache .. "/sources"
  ok_or_fail(r, "cache " .. dir, fs.mkdir(dir))
  for key, src in pairs(r.recipe.sources or {}) do
    local url = r:expand(src.url)
    local sha = r:expand(src.sha256)
    local dest = dir .. "/" .. url:match("([^/?#]+)[^/]*$")
    if sha ~= "" and fs.sha256(dest) == sha then
      log.info("source %s: %s already in the cache", key, dest)
    else
      local res, err = fetch.get(url, dest, { sha256 = sha ~= "" and sha or nil, resume = true })
      ok_or_fail(r, "fetch " .. key, res, err)
    end
    r.sources[key] = dest
    r:check_cancel()
  end
end

--- Expand `${OPTION}` references in s.
function Run:expand(s)
  return (s:gsub("%${([%w_]+)}", function(k)
    local v = self.opt[k]
    if v == nil then self:fail("recipe refers to ${%s}, which is not set", k) end
    return tostring(v)
  end))
end

-- The build cache: one directory per kernel, one entry per build key. The key
-- is readable text kept in the manifest; its directory is named by a short hash.
local function cache_key(r)
  local parts = { r.recipe.name, r.recipe.version, r.kver }
  for _, key in ipairs(graph.sorted(r.sources)) do
    parts[#parts + 1] = key .. "=" .. (fs.sha256(r.sources[key]) or "?")
  end
  for _, k in ipairs(graph.sorted(r.recipe.options or {})) do
    if r.recipe.options[k].build then
      local v = r.opt[k]
      parts[#parts + 1] = k .. "=" .. (type(v) == "table" and table.concat(v, " ") or tostring(v))
    end
  end
  return table.concat(parts, "\n")
end

local function short_hash(s) -- FNV-1a, 64 bits: names a directory, not a security check
  local h = 0xcbf29ce484222325
  for i = 1, #s do h = (h ~ s:byte(i)) * 0x100000001b3 end
  return ("%016x"):format(h)
end

local function cache_load(dir, key)
  local text = fs.read(dir .. "/manifest.lua")
  if not text then return nil end
  local ok, manifest = pcall(load(text, "=manifest", "t", {}))
  if not ok or type(manifest) ~= "table" or manifest.key ~= key then return nil end
  for _, m in ipairs(manifest) do
    m.path = dir .. "/" .. m.file
    if fs.sha256(m.path) ~= m.sha256 then return nil end
  end
  local kept = {}
  for _, name in ipairs(manifest.keep or {}) do kept[name] = dir .. "/keep/" .. name end
  return manifest, kept
end

--- Copy a directory tree (cp -a) or fail the phase.
function Run:copy_tree(from, to)
  local res, err = proc.run({ "cp", "-a", "--", from, to }, { stderr = "stdout" })
  if not res or res.status ~= 0 then self:fail("copy %s to %s: %s", from, to, res and res.stdout or err) end
end

-- Store the built modules and the files the build asked to keep (res.keep:
-- { name = path }), then the manifest last, so a half-written entry never loads.
local function cache_store(r, dir, key, res)
  fs.remove(dir, { recursive = true, missing_ok = true })
  ok_or_fail(r, "cache " .. dir, fs.mkdir(dir .. "/keep"))
  local lines = { ("return { key = %q,"):format(key) }
  for _, m in ipairs(res.modules) do
    local file = m.name .. ".ko"
    ok_or_fail(r, "cache " .. file, fs.copy(m.path, dir .. "/" .. file))
    lines[#lines + 1] = ("{ name = %q, file = %q, srcversion = %q, vermagic = %q, sha256 = %q },")
      :format(m.name, file, m.srcversion or "", m.vermagic or "", fs.sha256(dir .. "/" .. file))
  end
  local keep = {}
  for _, name in ipairs(graph.sorted(res.keep or {})) do
    r:copy_tree(res.keep[name], dir .. "/keep/" .. name)
    keep[#keep + 1] = ("%q"):format(name)
  end
  lines[#lines + 1] = "keep = {" .. table.concat(keep, ", ") .. "} }"
  ok_or_fail(r, "cache manifest", fs.write(dir .. "/manifest.lua", table.concat(lines, "\n") .. "\n"))
end

-- Builds for other kernels are of no use on this node any more.
local function cache_prune(r)
  for _, name in ipairs(fs.dir(r.cache) or {}) do
    if name ~= r.kver and name ~= "sources" and fs.exists(r.cache .. "/" .. name .. "/builds") then
      log.info("cache: removing builds for kernel %s", name)
      fs.remove(r.cache .. "/" .. name, { recursive = true })
    end
  end
end

local function check_built(r, built)
  local have = {}
  for _, m in ipairs(built) do have[m.name] = m end
  for name in pairs(r.recipe.stack) do
    if not have[name] then r:fail("build produced no module %s (the recipe's stack names it)", name) end
    local declared = {}
    for _, d in ipairs(r.recipe.stack[name]) do declared[d] = true end
    for _, d in ipairs(have[name].depends or {}) do
      if r.recipe.stack[d] and not declared[d] then
        log.warn("stack: %s depends on %s, which the recipe does not declare", name, d)
      end
    end
  end
end

local phase = {}

-- Everything that can be checked before the first change is checked here.
local function check_blacklist_dir(r)
  local file = r.blacklist_file
  if r.opt.BUILD_ONLY or not file or file == "" then return end
  local dir = file:match("^(.*)/[^/]+$") or "."
  if not fs.exists(dir) then
    r:fail("blacklist directory %s does not exist: mount the host's /etc there, or set BLACKLIST_FILE= "
           .. "(empty) to reload without a blacklist", dir)
  end
end

-- Refuse now, before anything changes, when the reload could not happen.
local function check_blockers(r)
  if r.opt.BUILD_ONLY then return end
  local live = stack.snapshot(kmod.new())
  local plan = stack.plan(r.recipe.stack, live, { also = r.unload_also })
  if #plan.blockers > 0 then r:fail("cannot reload the driver stack: %s", table.concat(plan.blockers, "; ")) end
end

function phase.prepare(r)
  check_blacklist_dir(r)
  if r.recipe.prepare then r.recipe.prepare(r) end
  check_blockers(r)
end

function phase.build(r)
  fetch_sources(r)
  local key = cache_key(r)
  local dir = ("%s/%s/builds/%s"):format(r.cache, r.kver, short_hash(key))
  local cached, kept = cache_load(dir, key)
  if cached then
    log.info("build: cache hit for kernel %s (%s)", r.kver, dir)
    r.built, r.kept, r.cache_hit = cached, kept, true
    return
  end
  if not r.recipe.build then r:fail("nothing in the build cache at %s and the recipe has no build", dir) end
  local res = r.recipe.build(r)
  check_built(r, res.modules)
  cache_store(r, dir, key, res)
  r.built, r.kept = cache_load(dir, key)
  cache_prune(r)
end

-- Default install: the built modules under ROOT/lib/modules/KVER/updates/<recipe>/, then depmod.
-- depmod runs only when a file changed: it reads every module of the kernel.
local function install_modules(r)
  local dir = r:path(("/lib/modules/%s/updates/%s"):format(r.kver, r.recipe.name))
  local changed = false
  ok_or_fail(r, "install", fs.mkdir(dir))
  for _, m in ipairs(r.built) do
    local dest = dir .. "/" .. m.name .. ".ko"
    if fs.sha256(dest) ~= m.sha256 then
      ok_or_fail(r, "install " .. dest, fs.copy(m.path, dest))
      changed = true
    end
    m.installed = dest
  end
  if changed then
    ok_or_fail(r, "depmod", compile.depmod(r.kver, r.root))
  else
    log.info("install: %s already installed", dir)
  end
end

function phase.install(r)
  if not r.opt.BUILD_ONLY then
    local ctx = kmod.new()
    local names = {}
    for _, n in ipairs(graph.sorted(r.recipe.stack)) do
      if ctx:state(n) then names[#names + 1] = n end
    end
    for _, n in ipairs(r.unload_also or {}) do
      if ctx:state(n) then names[#names + 1] = n end
    end
    r.previous = stack.remember(ctx, names)
  end
  install_modules(r)
  if r.recipe.install then r.recipe.install(r) end
end

local function built_srcversions(r)
  local want = {}
  for _, m in ipairs(r.built) do want[m.name] = m.srcversion ~= "" and m.srcversion or false end
  return want
end

local function write_blacklist(r, names, file)
  if not file or file == "" or #names == 0 then return nil end
  local lines = { "# Written by drvrun " .. r.recipe.name .. " while it reloads the driver stack; removed after." }
  for _, n in ipairs(names) do lines[#lines + 1] = "blacklist " .. n end
  local entry = r.journal:record({ kind = "file", path = file })
  ok_or_fail(r, "blacklist " .. file, fs.write(file, table.concat(lines, "\n") .. "\n"))
  log.info("blacklist: %s written (%d modules) for the reload", file, #names)
  return entry
end

local function remove_blacklist(r, entry)
  if not entry then return end
  fs.remove(entry.path, { missing_ok = true })
  r.journal:forget(entry)
  log.info("blacklist: %s removed", entry.path)
end

function phase.load(r)
  local ctx = kmod.new()
  local want = built_srcversions(r)
  if stack.verify(ctx, want) then
    log.info("load: the built stack is already loaded (srcversions match); no reload")
    r.reloaded = false
    return
  end
  local plan = stack.plan(r.recipe.stack, stack.snapshot(ctx), { also = r.unload_also })
  if #plan.blockers > 0 then r:fail("cannot reload the driver stack: %s", table.concat(plan.blockers, "; ")) end
  log.info("load: unload %s", table.concat(graph.flatten(plan.unload), " "))
  log.info("load: load %s", table.concat(graph.flatten(plan.load), " "))
  local paths = {}
  for _, m in ipairs(r.built) do paths[m.name] = m.installed or m.path end
  local bl = write_blacklist(r, r.recipe.blacklist and r.recipe.blacklist(r) or {}, r.blacklist_file)
  r.journal:record({ kind = "modules", names = graph.flatten(plan.load), previous = r.previous,
                     restore = r.restore_on_stop })
  local ok, down_or_err = stack.swap(plan, paths, r.recipe.module_options and r.recipe.module_options(r),
                                     r.previous)
  remove_blacklist(r, bl)
  if not ok then r:fail("reload: %s", down_or_err) end
  log.info("load: the stack was down for %.3f s", down_or_err)
  local good, bad = stack.verify(kmod.new(), want)
  if not good then r:fail("verify: %s", table.concat(bad, "; ")) end
  r.reloaded = true
  if r.recipe.after_load then r.recipe.after_load(r) end
end

function phase.expose(r)
  local target = r.recipe.expose and r:expand(r.recipe.expose)
  if not target then return end
  if mount.is_mountpoint(target) and (mount.info(target).root or "/") == "/" and mount.find(target).id ~= mount.find("/").id then
    log.info("expose: replacing a stale mount at %s", target)
    ok_or_fail(r, "umount " .. target, mount.umount(target, { recursive = true, lazy = true }))
  end
  ok_or_fail(r, "expose", fs.mkdir(target))
  -- /sys must not be rbound into the target: it would pin sysfs submounts.
  ok_or_fail(r, "expose /sys", mount.propagation("/sys", "unbindable", { recursive = true }))
  ok_or_fail(r, "expose /sys", mount.propagation("/sys", "private"))
  r.journal:record({ kind = "mount", target = target })
  ok_or_fail(r, "expose " .. target, mount.rbind("/", target))
  log.info("expose: container root visible at %s", target)
end

local function ready_content(r)
  local lines = {
    "recipe=" .. r.recipe.name, "version=" .. r.recipe.version, "kernel=" .. r.kver,
    "boot_id=" .. (sys.boot_id() or "unknown"), "time=" .. os.date("!%Y-%m-%dT%H:%M:%SZ"),
  }
  local ctx = kmod.new()
  for _, name in ipairs(graph.flatten(assert(graph.levels(r.recipe.stack)))) do
    local st = ctx:state(name)
    lines[#lines + 1] = ("module=%s srcversion=%s"):format(name, st and st.srcversion or "none")
  end
  return table.concat(lines, "\n") .. "\n"
end

function phase.ready(r)
  local content = ready_content(r)
  for _, path in ipairs(r.ready_files) do
    ok_or_fail(r, "ready " .. path, fs.write(path, content))
  end
  log.info("ready: %s (%.3f s after start)", table.concat(r.ready_files, ", "), sys.monotonic() - r.started)
end

local function remove_ready(r)
  for _, path in ipairs(r.ready_files) do
    local ok, err = fs.remove(path, { missing_ok = true })
    if not ok then log.error("stop: cannot remove ready file %s: %s", path, err) end
  end
end

-- Undo kinds this library records.
journal.define("mount", function(e)
  if not mount.is_mountpoint(e.target) then return true end
  return mount.umount(e.target, { recursive = true, lazy = true })
end)

journal.define("modules", function(e, o)
  if not e.restore then return true end
  if o.hurry then log.warn("stop: second signal: not restoring the inbox modules"); return true end
  log.info("stop: unloading %s and loading the previous modules back", table.concat(e.names, " "))
  return stack.restore(e.names, e.previous)
end)

local function run_phase(r, name)
  r:check_cancel()
  local t0 = sys.monotonic()
  log.event("info", "phase " .. name .. " started", { phase = name })
  phase[name](r)
  log.event("info", ("phase %s done in %.3f s"):format(name, sys.monotonic() - t0),
            { phase = name, seconds = tonumber(("%.3f"):format(sys.monotonic() - t0)) })
end

--- Stop: ready files first, then undo the journal; a second signal hurries it.
local function stop(r)
  local t0 = sys.monotonic()
  log.event("info", "phase stop started", { phase = "stop" })
  remove_ready(r)
  if r.recipe.stop then
    local ok, err = pcall(r.recipe.stop, r)
    if not ok then log.error("stop: %s", tostring(err)) end
  end
  -- A second signal, or the deadline, hurries the rest: handlers skip slow work.
  local deadline = t0 + r.opt.STOP_TIMEOUT
  local o = { hurry = false }
  o.skip = function()
    if not o.hurry and (r.signals:poll() or sys.monotonic() > deadline) then
      log.warn("stop: second signal or deadline: skipping the slow parts")
      o.hurry = true
    end
    return false
  end
  local ok, failures = r.journal:undo_all(o)
  if not ok then log.error("stop: %s", table.concat(failures, "; ")) end
  log.event("info", ("phase stop done in %.3f s"):format(sys.monotonic() - t0), { phase = "stop" })
  return ok
end

local function recover(r)
  local old = journal.recover(r.journal.path)
  if not old or #old.entries == 0 then return end
  log.warn("recovery: undoing %d changes left by an earlier run that did not stop cleanly", #old.entries)
  local ok, failures = old:undo_all({ hurry = false })
  if not ok then r:fail("recovery: %s", table.concat(failures, "; ")) end
end

local function lock(r)
  ok_or_fail(r, "lock", fs.mkdir(r.opt.LOCK_FILE:match("^(.*)/[^/]*$") or "/"))
  local l, err = sys.lock(r.opt.LOCK_FILE, {
    timeout = r.opt.LOCK_TIMEOUT,
    owner = ("%s %s"):format(r.recipe.name, r.recipe.version),
    on_wait = function(holder) log.info("lock: waiting for %s (held by %s)", r.opt.LOCK_FILE, holder) end,
  })
  if not l then r:fail("lock: %s", err) end
  r.lock = l
end

-- The lock covers changes (start and stop), not the wait between them: other
-- driver containers on the host must be able to reload meanwhile.
local function unlock(r)
  if r.lock then r.lock:unlock() end
  r.lock = nil
end

local function wait_for_signal(r)
  unlock(r)
  log.info("waiting for a signal (TERM, INT or HUP) to stop")
  local sig = r.signals:wait()
  log.info("received SIG%s", sig)
end

local function error_text(e)
  if getmetatable(e) == Cancel then return "interrupted by SIG" .. e.signal end
  return tostring(e)
end

--- Run the lifecycle; returns the exit code.
function M.run(recipe, opt)
  local r = new_run(recipe, opt)
  r.started = sys.monotonic()
  r.ready_files = opt.READY_FILES
  r.unload_also = recipe.unload_also and recipe.unload_also(r) or {}
  r.blacklist_file = opt.BLACKLIST_FILE
  r.restore_on_stop = opt.RESTORE_DRIVER_ON_POD_TERMINATION
  r.signals = sys.signals({ "TERM", "INT", "HUP" })
  log.info("%s %s for kernel %s", recipe.name, recipe.version, r.kver)
  local phases = opt.BUILD_ONLY and { "prepare", "build", "install" } or PHASES
  local ok, err = pcall(function()
    if not opt.BUILD_ONLY then
      remove_ready(r)
      lock(r)
      recover(r) -- under the lock: another container may be mid-reload
    end
    for _, name in ipairs(phases) do run_phase(r, name) end
  end)
  if not ok then
    log.error("%s", error_text(err))
  elseif opt.WAIT and not opt.BUILD_ONLY then
    wait_for_signal(r)
  end
  if not opt.BUILD_ONLY and not r.lock and #r.journal.entries > 0 then
    local lok = pcall(lock, r) -- stop changes the host too; proceed without it rather than not at all
    if not lok then log.warn("stop: proceeding without the host-wide lock") end
  end
  local stopped = opt.BUILD_ONLY and true or (ok and not opt.WAIT) or stop(r)
  unlock(r)
  r.signals:close()
  if not stopped then return 1 end
  if not ok and getmetatable(err) ~= Cancel then return 1 end
  return 0
end

--- Print what a run would do, changing nothing.
function M.plan(recipe, opt, out)
  out = out or io.stdout
  local r = new_run(recipe, opt)
  r.unload_also = recipe.unload_also and recipe.unload_also(r) or {}
  local function say(fmt, ...) out:write(fmt:format(...), "\n") end
  say("plan: %s %s for kernel %s (nothing is changed)", recipe.name, recipe.version, r.kver)
  say("options:")
  for _, line in ipairs(options.describe(option_specs(recipe), opt)) do say("%s", line) end
  for _, key in ipairs(graph.sorted(recipe.sources or {})) do
    say("fetch: %s %s (sha256 %s)", key, r:expand(recipe.sources[key].url), r:expand(recipe.sources[key].sha256))
  end
  say("build: %s into %s/%s (cached builds are reused)", recipe.name, r.cache, r.kver)
  say("install: %s", r:path(("/lib/modules/%s/updates/%s/"):format(r.kver, recipe.name)))
  if opt.BUILD_ONLY then return 0 end
  local ctx = kmod.new()
  local ok, live = pcall(stack.snapshot, ctx)
  if not ok then
    say("unload: unknown (cannot read the loaded modules: %s)", tostring(live))
    live = {}
  end
  local p = stack.plan(recipe.stack, live, { also = r.unload_also })
  for i, names in ipairs(p.unload) do say("unload %d: %s", i, table.concat(names, " ")) end
  if #p.unload == 0 then say("unload: nothing of the stack is loaded") end
  for i, names in ipairs(p.load) do say("load %d: %s", i, table.concat(names, " ")) end
  for _, b in ipairs(p.blockers) do say("blocked: %s", b) end
  if recipe.expose then say("mount: rbind / %s", r:expand(recipe.expose)) end
  say("ready: %s", table.concat(opt.READY_FILES, " "))
  return 0
end

--- Entry point used by drvrun for a script that returns a recipe table.
-- @tparam table recipe the table the script returned
-- @tparam string script its path
-- @tparam table arg the global arg (KEY=VALUE options at 1..n)
-- @treturn integer exit code
function M.main(recipe, script, arg)
  M.check(recipe, 2)
  local kv, positional = options.parse_args(arg)
  if #positional > 0 then
    log.error("%s: unexpected argument '%s' (options are KEY=VALUE)", script, positional[1])
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
