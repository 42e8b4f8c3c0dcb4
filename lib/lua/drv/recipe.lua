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
local journal = require "drv.journal"
local stack = require "drv.stack"
local graph = require "drv.graph"
local compile = require "drv.compile"
local digests = require "drv.digests"
local cache = require "drv.cache"
local fetch = require "drv.fetch"
local archive = require "drv.archive"
local kmod = require "drv.kmod"
local mount = require "drv.mount"
local proc = require "drv.proc"
local fs = require "drv.fs"
local sys = require "drv.sys"
local log = require "drv.log"

local PHASES = { "prepare", "await", "build", "install", "load", "expose", "ready" }
local BUILD_PHASES = { "prepare", "await", "build", "install" }

-- Fields a recipe may have: the types each may be, and whether it is required.
-- `stack` and `sources` may be functions of the run, for choices made by options.
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
  CACHE_DIR = { default = "/var/cache/drvrun", doc = "downloads and build results, per kernel" },
  CACHE_KEEP = { type = "integer", default = 2, min = 1,
                 doc = "builds kept per kernel, most recently used first (2: this one and one to roll back to)" },
  STATE_DIR = { default = "/run/drvrun", doc = "journal of host changes, for stop and crash recovery" },
  LOCK_FILE = { default = "/run/drvrun/host.lock", doc = "host-wide lock: one driver reload at a time" },
  LOCK_TIMEOUT = { type = "integer", default = 600, min = 0, doc = "seconds to wait for the host-wide lock" },
  READY_FILES = { type = "list", default = "/.driver-ready", doc = "files written when the driver is ready" },
  AWAIT_TIMEOUT = { type = "integer", default = 2400, min = 0,
                    doc = "seconds to wait for what the recipe needs (other driver containers)" },
  WATCH_INTERVAL = { type = "integer", default = 10, min = 0,
                     doc = "while ready, seconds between checks that the modules are still loaded (0: never)" },
  STOP_TIMEOUT = { type = "integer", default = 120, min = 0, doc = "seconds stop may take before it gives up" },
  BUILD_TIMEOUT = { type = "integer", default = 3600, min = 1, doc = "seconds a build may take" },
  BUILD_JOBS = { type = "integer", default = 0, min = 0, doc = "parallel build jobs (0: one per CPU)" },
  WAIT = { type = "boolean", default = true, doc = "after ready, wait for a signal, then stop" },
}

local Cancel = {} -- metatable of the error raised when a signal cancels a phase

local function check_stack(modules, level)
  if type(modules) ~= "table" then error("recipe field 'stack': table expected, got " .. type(modules), level) end
  for name, deps in pairs(modules) do
    if type(name) ~= "string" or type(deps) ~= "table" then
      error("recipe field 'stack': { module = { dependencies... } } expected", level)
    end
  end
  local _, err = graph.levels(modules)
  if err then error("recipe field 'stack': " .. err, level) end
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

-- The run object handed to phase functions: options, kernel, paths, helpers.
local Run = {}
Run.__index = Run

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
  local r = setmetatable({ recipe = recipe, opt = opt, sources = {}, inputs = {}, built = nil }, Run)
  r.kver = opt.KVER or sys.uname().release
  r.root = opt.ROOT
  r.cache = ("%s/%s"):format(opt.CACHE_DIR, recipe.name)
  r.digests = digests.open(r.cache .. "/digests")
  r.journal = journal.new(("%s/%s.journal"):format(opt.STATE_DIR, recipe.name))
  r.stack = resolve_field(r, "stack", check_stack)
  r.source_specs = resolve_field(r, "sources", check_sources) or {}
  local also, why = (recipe.unload_also or function() end)(r)
  r.unload_also, r.unload_why = also or {}, why or {}
  return r
end

--- Path under the install root.
function Run:path(p)
  if self.root == "/" then return p end
  return self.root .. p
end

local function cancel(r, sig)
  r.cancelled = sig
  error(setmetatable({ signal = sig }, Cancel), 0)
end

--- Raise a cancel when a signal has arrived.
function Run:check_cancel()
  local sig = self.signals and self.signals:poll()
  if sig then cancel(self, sig) end
end

--- Fail the current phase with a message for the operator.
function Run.fail(_, fmt, ...)
  error(select("#", ...) > 0 and fmt:format(...) or fmt, 0)
end

--- Fail the current phase with "what: err" unless `ok`; returns `ok`.
-- For the `nil, message, errno` of the drv.* calls: `r:must("install", fs.mkdir(dir))`.
function Run:must(what, ok, err)
  if not ok then self:fail("%s: %s", what, err) end
  return ok
end

local AWAIT_PROGRESS_EVERY = 10 -- seconds between "still waiting" lines

--- Wait until `check()` returns a true value (which is returned), polling every
-- second, with a progress line every 10 s; fails at `timeout` (default
-- AWAIT_TIMEOUT) with `what` and the last reason `check` gave (`nil, reason`).
function Run:wait_for(what, check, timeout)
  timeout = timeout or self.opt.AWAIT_TIMEOUT
  local t0 = sys.monotonic()
  local last_said = t0
  local function check_fresh() -- what is awaited may run depmod: no module index kept across checks
    self.kmod_ctx = nil
    return check()
  end
  local value, reason = check_fresh()
  while not value do
    local waited = sys.monotonic() - t0
    if waited >= timeout then self:fail("%s: still not there after %d s: %s", what, timeout, reason or "?") end
    if sys.monotonic() - last_said >= AWAIT_PROGRESS_EVERY then
      last_said = sys.monotonic()
      log.info("await: %s: waiting (%.0f s of %d s): %s", what, waited, timeout, reason or "?")
    end
    local sig = self.signals and self.signals:wait(math.min(1, timeout - waited))
    if sig then cancel(self, sig) end
    value, reason = check_fresh()
  end
  if sys.monotonic() - t0 >= 1 then log.info("await: %s: there after %.0f s", what, sys.monotonic() - t0) end
  return value
end

-- Install a Debian/Ubuntu package with apt (refreshing stale package lists
-- once); returns true, or nil and apt's own words.
local function apt_install(r, pkg)
  local function install()
    return proc.run({ "apt-get", "install", "-y", "--no-install-recommends", pkg },
                    { stderr = "stdout", timeout = r.opt.BUILD_TIMEOUT })
  end
  local res, err = install()
  if res and res.status ~= 0 and res.stdout:match("Unable to locate package") then
    proc.run({ "apt-get", "update", "-qq" }, { stderr = "stdout", timeout = r.opt.BUILD_TIMEOUT })
    res, err = install()
  end
  if res and res.status == 0 then return true end
  return nil, res and res.stdout:match("E: ([^\n]*)") or err or "apt-get failed"
end

--- A libkmod context on the running kernel's modules. When they are missing
-- (a container without the host's /lib/modules), install linux-modules-RELEASE
-- as the original driver containers did, or fail saying what to mount. The
-- context is kept for the run, until depmod changes its indexes.
function Run:kmod()
  if self.kmod_ctx then return self.kmod_ctx end
  local ctx, err = kmod.new()
  if ctx then
    self.kmod_ctx = ctx
    return ctx
  end
  local pkg = "linux-modules-" .. sys.uname().release
  log.info("the running kernel's modules are missing (%s): installing %s", err, pkg)
  local ok, apt_err = apt_install(self, pkg)
  ctx = ok and kmod.new()
  if not ctx then
    self:fail("cannot read the running kernel's modules: %s, and installing %s failed: %s. Mount the host's "
              .. "/lib/modules into the container", err, pkg, apt_err or "no modules after the install")
  end
  self.kmod_ctx = ctx
  return ctx
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
  local ok, err = apt_install(self, pkg)
  if not ok then self:fail("kernel headers for %s not found at %s, and installing %s failed: %s", kver, kdir, pkg, err) end
end

--- Extract an archive (or copy a source directory; `o` is then ignored) into a
-- fresh directory under the build area; returns the directory.
function Run:extract(path, o)
  local name = path:gsub("/+$", ""):match("[^/]+$"):gsub("%.tar%.[gx]z$", ""):gsub("%.t[agx]z$", "")
  local dir = cache.work_dir(self) .. "/" .. name
  fs.remove(dir, { recursive = true, missing_ok = true })
  local st = fs.stat(path)
  if st and st.type == "directory" then
    self:must("extract", fs.mkdir(dir:match("^(.*)/")))
    self:copy_tree(path, dir)
    return dir
  end
  self:must("extract", fs.mkdir(dir))
  local res, err = archive.extract(path, dir, o)
  self:must("extract " .. path, res, err)
  return dir
end

local function fetch_source(r, key, src, dir)
  local url, sha = r:expand(src.url), r:expand(src.sha256)
  local dest = dir .. "/" .. url:match("([^/?#]+)[^/]*$")
  if sha ~= "" and r:sha256(dest) == sha then
    log.info("source %s: %s already in the cache", key, dest)
  else
    local res, err = fetch.get(url, dest, { sha256 = sha ~= "" and sha or nil, resume = true })
    r:must("fetch " .. key, res, err)
  end
  return dest
end

-- Sources: fetched into the cache, skipped when present with the right
-- checksum; a `path` source (a local file or directory) is used where it is.
local function fetch_sources(r)
  local dir = r.cache .. "/sources"
  r:must("cache " .. dir, fs.mkdir(dir))
  for key, src in pairs(r.source_specs) do
    if src.path then
      local path = r:expand(src.path)
      if not fs.exists(path) then r:fail("source %s: %s does not exist", key, path) end
      r.sources[key] = path
    else
      r.sources[key] = fetch_source(r, key, src, dir)
    end
    r:check_cancel()
  end
end

--- Declare a file or directory the build depends on besides the sources (a
-- Module.symvers it links against): its content is part of the build cache key.
function Run:build_input(path)
  self.inputs[#self.inputs + 1] = path
end

--- Expand `${OPTION}` references in s.
function Run:expand(s)
  return (s:gsub("%${([%w_]+)}", function(k)
    local v = self.opt[k]
    if v == nil then self:fail("recipe refers to ${%s}, which is not set", k) end
    return tostring(v)
  end))
end

--- sha256 of a file, computed again only when the file changed since a run
-- last hashed it (drv.digests); nil, message, errno when it cannot be read.
function Run:sha256(path)
  return self.digests:sha256(path)
end

local function copy_entry(r, from, to)
  local st = fs.lstat(from)
  if not st then r:fail("copy %s: it vanished during the copy", from) end
  if st.type == "directory" then
    r:must("copy to " .. to, fs.mkdir(to, { mode = st.mode }))
    for _, name in ipairs(assert(fs.dir(from))) do copy_entry(r, from .. "/" .. name, to .. "/" .. name) end
  elseif st.type == "link" then
    r:must("copy to " .. to, fs.symlink(assert(fs.readlink(from)), to, { replace = true }))
  elseif st.type == "file" then
    r:must("copy to " .. to, fs.copy(from, to, { sync = false }))
  else
    r:fail("copy %s: a %s is not copied (files, directories and links are)", from, st.type)
  end
end

--- Copy a directory tree (files with their modes, directories, links as they
-- are) or fail the phase. Nothing is synced: a lost copy is made again.
function Run:copy_tree(from, to)
  copy_entry(self, from, to)
end

local INSTALLED_STAMP = ".drvrun-build" -- in an installed directory: the build it holds

--- Fill directory `dir` with `fill(dir)` (an install step: headers, tools),
-- unless it already holds this build's files: a restart copies nothing.
-- `dir` is emptied first; a stamp naming the build is written last, so an
-- install cut short is redone.
function Run:install_dir(dir, fill)
  local stamp = dir .. "/" .. INSTALLED_STAMP
  if fs.read(stamp) == self.build_id .. "\n" then
    log.info("install: %s already installed", dir)
    return
  end
  fs.remove(dir, { recursive = true, missing_ok = true })
  self:must("install " .. dir, fs.mkdir(dir))
  fill(dir)
  self:must("install " .. dir, fs.write(stamp, self.build_id .. "\n"))
end

local function check_built(r, built)
  local have = {}
  for _, m in ipairs(built) do have[m.name] = m end
  for name in pairs(r.stack) do
    if not have[name] then r:fail("build produced no module %s (the recipe's stack names it)", name) end
    local declared = {}
    for _, d in ipairs(r.stack[name]) do declared[d] = true end
    for _, d in ipairs(have[name].depends or {}) do
      if r.stack[d] and not declared[d] then
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
  local live = stack.snapshot(r:kmod())
  local plan = stack.plan(r.stack, live, { also = r.unload_also })
  if #plan.blockers > 0 then r:fail("cannot reload the driver stack: %s", table.concat(plan.blockers, "; ")) end
end

function phase.await(r)
  if r.recipe.await then r.recipe.await(r) end
end

function phase.prepare(r)
  check_blacklist_dir(r)
  if r.recipe.prepare then r.recipe.prepare(r) end
  check_blockers(r)
end

function phase.build(r)
  fetch_sources(r)
  local entry = cache.entry(r)
  local cached, kept = cache.load(r, entry)
  if cached then
    log.info("build: cache hit for kernel %s (%s)", r.kver, entry.dir)
    r.built, r.kept, r.cache_hit, r.build_id = cached, kept, true, entry.id
    cache.used(r, entry)
    return
  end
  if not r.recipe.build then r:fail("nothing in the build cache at %s and the recipe has no build", entry.dir) end
  local res = r.recipe.build(r)
  check_built(r, res.modules)
  cache.store(r, entry, res)
  r.built, r.kept = cache.load(r, entry)
  r.build_id = entry.id
  cache.used(r, entry)
  cache.prune(r, entry)
end

-- Default install: the built modules under ROOT/lib/modules/KVER/updates/<recipe>/, then depmod.
-- depmod runs only when a file changed: it reads every module of the kernel.
local function install_modules(r)
  local dir = r:path(("/lib/modules/%s/updates/%s"):format(r.kver, r.recipe.name))
  local changed = false
  r:must("install", fs.mkdir(dir))
  for _, m in ipairs(r.built) do
    local dest = dir .. "/" .. m.name .. ".ko"
    if r:sha256(dest) ~= m.sha256 then
      r:must("install " .. dest, fs.copy(m.path, dest))
      changed = true
    end
    m.installed = dest
  end
  if changed then
    local t0 = sys.monotonic()
    log.info("install: %s changed; depmod %s (it reads every module of the kernel)", dir, r.kver)
    r:must("depmod", compile.depmod(r.kver, r.root))
    log.info("install: depmod done in %.1f s", sys.monotonic() - t0)
    r.kmod_ctx = nil -- its indexes are the old ones
  else
    log.info("install: %s already installed", dir)
  end
end

local function built_srcversions(r)
  local want = {}
  for _, m in ipairs(r.built) do want[m.name] = m.srcversion ~= "" and m.srcversion or false end
  return want
end

-- What was loaded before is remembered for stop's restore; when the built
-- stack is loaded already no reload follows, and nothing is to be remembered.
function phase.install(r)
  r.stack_loaded = not r.opt.BUILD_ONLY and stack.verify(r:kmod(), built_srcversions(r))
  if not r.opt.BUILD_ONLY and not r.stack_loaded then
    local ctx = r:kmod()
    local names = {}
    for _, n in ipairs(graph.sorted(r.stack)) do
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

local function write_blacklist(r, names, file)
  if not file or file == "" or #names == 0 then return nil end
  local lines = { "# Written by drvrun " .. r.recipe.name .. " while it reloads the driver stack; removed after." }
  for _, n in ipairs(names) do lines[#lines + 1] = "blacklist " .. n end
  local entry = r.journal:record({ kind = "file", path = file })
  r:must("blacklist " .. file, fs.write(file, table.concat(lines, "\n") .. "\n"))
  log.info("blacklist: %s written (%d modules) for the reload", file, #names)
  return entry
end

local function remove_blacklist(r, entry)
  if not entry then return end
  fs.remove(entry.path, { missing_ok = true })
  r.journal:forget(entry)
  log.info("blacklist: %s removed", entry.path)
end

-- Modules outside the stack unloaded with it, each with the recipe's reason.
local function say_why_also(r, plan)
  local stack_set = r.stack
  for _, name in ipairs(graph.flatten(plan.unload)) do
    if not stack_set[name] then
      log.info("load: unloading %s first: %s", name, r.unload_why[name] or "it uses the stack")
    end
  end
end

function phase.load(r)
  if r.recipe.before_load then r.recipe.before_load(r) end
  if r.stack_loaded then
    log.info("load: the built stack is already loaded (srcversions match); no reload")
    r.reloaded = false
    return
  end
  local ctx, want = r:kmod(), built_srcversions(r)
  local plan = stack.plan(r.stack, stack.snapshot(ctx), { also = r.unload_also })
  if #plan.blockers > 0 then r:fail("cannot reload the driver stack: %s", table.concat(plan.blockers, "; ")) end
  local unload = graph.flatten(plan.unload)
  log.info("load: unload %s", #unload > 0 and table.concat(unload, " ") or "nothing (none of the stack is loaded)")
  say_why_also(r, plan)
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
  local good, bad = stack.verify(r:kmod(), want)
  if not good then r:fail("verify: %s", table.concat(bad, "; ")) end
  r.reloaded = true
  if r.recipe.after_load then r.recipe.after_load(r) end
end

function phase.expose(r)
  local target = r.recipe.expose and r:expand(r.recipe.expose)
  if not target then return end
  if mount.is_mountpoint(target) and (mount.info(target).root or "/") == "/" and mount.find(target).id ~= mount.find("/").id then
    log.info("expose: replacing a stale mount at %s", target)
    r:must("umount " .. target, mount.umount(target, { recursive = true, lazy = true }))
  end
  r:must("expose", fs.mkdir(target))
  -- /sys must not be rbound into the target: it would pin sysfs submounts.
  r:must("expose /sys", mount.propagation("/sys", "unbindable", { recursive = true }))
  r:must("expose /sys", mount.propagation("/sys", "private"))
  r.journal:record({ kind = "mount", target = target })
  r:must("expose " .. target, mount.rbind("/", target))
  log.info("expose: container root visible at %s", target)
end

local function ready_content(r)
  local lines = {
    "recipe=" .. r.recipe.name, "version=" .. r.recipe.version, "kernel=" .. r.kver,
    "boot_id=" .. (sys.boot_id() or "unknown"), "time=" .. os.date("!%Y-%m-%dT%H:%M:%SZ"),
  }
  local ctx = r:kmod()
  for _, name in ipairs(graph.flatten(assert(graph.levels(r.stack)))) do
    local st = ctx:state(name)
    lines[#lines + 1] = ("module=%s srcversion=%s"):format(name, st and st.srcversion or "none")
  end
  return table.concat(lines, "\n") .. "\n"
end

function phase.ready(r)
  local content = ready_content(r)
  for _, path in ipairs(r.ready_files) do
    local dir = path:match("^(.+)/[^/]*$")
    if dir then r:must("ready " .. path, fs.mkdir(dir)) end
    r:must("ready " .. path, fs.write(path, content))
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
  if o.lost then log.warn("stop: the modules changed behind this run's back: leaving them as they are"); return true end
  if o.hurry then log.warn("stop: second signal: not restoring the inbox modules"); return true end
  local back = e.previous and graph.flatten(e.previous.levels) or {}
  log.info("stop: unloading %s (holders first), then loading back %s", table.concat(e.names, " "),
           #back > 0 and table.concat(back, " ") or "nothing (none was loaded before)")
  return stack.restore(e.names, e.previous)
end)

local function run_phase(r, name)
  r:check_cancel()
  local t0 = sys.monotonic()
  log.event("info", "phase " .. name .. " started", { phase = name })
  phase[name](r)
  local saved, err = r.digests:save()
  if not saved then log.warn("cache: cannot keep the file digests: %s", err) end
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
  local o = { hurry = false, lost = r.lost }
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

local function lock(r)
  r:must("lock", fs.mkdir(r.opt.LOCK_FILE:match("^(.*)/[^/]*$") or "/"))
  local l, err = sys.lock(r.opt.LOCK_FILE, {
    timeout = r.opt.LOCK_TIMEOUT,
    owner = ("%s %s"):format(r.recipe.name, r.recipe.version),
    on_wait = function(holder) log.info("lock: waiting for %s (held by %s)", r.opt.LOCK_FILE, holder) end,
  })
  if not l then r:fail("lock: %s", err) end
  r.lock = l
end

-- The lock covers changes, not waiting or building: other driver containers
-- on the host must be able to reload meanwhile.
local function unlock(r)
  if r.lock then r.lock:unlock() end
  r.lock = nil
end

local function recover(r)
  local old = journal.recover(r.journal.path)
  if not old or #old.entries == 0 then return end
  lock(r) -- another container may be mid-reload
  log.warn("recovery: undoing %d changes left by an earlier run that did not stop cleanly", #old.entries)
  local ok, failures = old:undo_all({ hurry = false })
  if not ok then r:fail("recovery: %s", table.concat(failures, "; ")) end
  unlock(r)
end

-- While ready: wait for a signal, checking every WATCH_INTERVAL seconds that
-- the modules are still the built ones. False when they are not.
local function wait_for_signal(r)
  log.info("waiting for a signal (TERM, INT or HUP) to stop")
  local interval = r.opt.WATCH_INTERVAL > 0 and r.opt.WATCH_INTERVAL or nil
  local want = built_srcversions(r)
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

local function error_text(e)
  if getmetatable(e) == Cancel then return "interrupted by SIG" .. e.signal end
  return tostring(e)
end

--- Run the lifecycle; returns the exit code.
function M.run(recipe, opt)
  local r = new_run(recipe, opt)
  r.started = sys.monotonic()
  r.ready_files = opt.READY_FILES
  r.blacklist_file = opt.BLACKLIST_FILE
  r.restore_on_stop = opt.RESTORE_DRIVER_ON_POD_TERMINATION ~= false
  r.signals = sys.signals({ "TERM", "INT", "HUP" })
  log.info("%s %s for kernel %s", recipe.name, recipe.version, r.kver)
  local changes_host = not opt.BUILD_ONLY
  local ok, err = pcall(function()
    if changes_host then
      remove_ready(r)
      recover(r)
    end
    for _, name in ipairs(changes_host and PHASES or BUILD_PHASES) do
      if name == "install" and changes_host then lock(r) end
      run_phase(r, name)
    end
  end)
  if not ok then log.error("%s", error_text(err)) end
  if ok and opt.WAIT and changes_host then
    unlock(r)
    wait_for_signal(r)
  end
  if changes_host and not r.lock and #r.journal.entries > 0 then
    local lok = pcall(lock, r) -- stop changes the host too; proceed without it rather than not at all
    if not lok then log.warn("stop: proceeding without the host-wide lock") end
  end
  local stopped = not changes_host or (ok and not opt.WAIT) or stop(r)
  unlock(r)
  r.signals:close()
  if not stopped or r.lost then return 1 end
  if not ok and getmetatable(err) ~= Cancel then return 1 end
  return 0
end

-- The loaded modules, for a plan: nil and why when they cannot be read.
local function live_modules()
  local ctx, err = kmod.new()
  if not ctx then return nil, err end
  local ok, live = pcall(stack.snapshot, ctx)
  if not ok then return nil, tostring(live) end
  return live
end

--- Print what a run would do, changing nothing.
function M.plan(recipe, opt, out)
  out = out or io.stdout
  local r = new_run(recipe, opt)
  local function say(fmt, ...) out:write(fmt:format(...), "\n") end
  say("plan: %s %s for kernel %s (nothing is changed)", recipe.name, recipe.version, r.kver)
  say("options:")
  for _, line in ipairs(options.describe(option_specs(recipe), opt)) do say("%s", line) end
  for _, key in ipairs(graph.sorted(r.source_specs)) do
    local src = r.source_specs[key]
    if src.path then
      say("source: %s %s", key, r:expand(src.path))
    else
      local sha = r:expand(src.sha256)
      say("fetch: %s %s (%s)", key, r:expand(src.url), sha ~= "" and "sha256 " .. sha or "no sha256 set: a run refuses it")
    end
  end
  say("build: %s into %s/%s (cached builds are reused)", recipe.name, r.cache, r.kver)
  say("install: %s", r:path(("/lib/modules/%s/updates/%s/"):format(r.kver, recipe.name)))
  if opt.BUILD_ONLY then return 0 end
  local live, why = live_modules()
  if not live then say("unload: unknown (cannot read the loaded modules: %s)", why) end
  local p = stack.plan(r.stack, live or {}, { also = r.unload_also })
  for i, names in ipairs(p.unload) do say("unload %d: %s", i, table.concat(names, " ")) end
  if live and #p.unload == 0 then say("unload: nothing of the stack is loaded") end
  for i, names in ipairs(p.load) do say("load %d: %s", i, table.concat(names, " ")) end
  for _, b in ipairs(p.blockers) do say("blocked: %s", b) end
  if recipe.expose then say("mount: rbind / %s", r:expand(recipe.expose)) end
  say("ready: %s", table.concat(opt.READY_FILES, " "))
  return 0
end

--- Print how to run a recipe and its options with their values here, given
-- the KEY=VALUE arguments `kv` (`drvrun RECIPE --help`).
function M.help(recipe, script, kv, out)
  out = out or io.stdout
  local specs = option_specs(recipe)
  out:write(("usage: drvrun [--plan] %s [KEY=VALUE...]\n\n%s %s%s\n\n"):format(script, recipe.name,
    recipe.version, recipe.description and ": " .. recipe.description or ""))
  out:write("options (a KEY=VALUE argument overrides the environment variable KEY, which overrides the default):\n")
  local values, err = options.resolve(specs, kv)
  for _, line in ipairs(options.describe(specs, values)) do out:write(line, "\n") end
  if err then out:write("\n", err, "\n") end
  out:write("\nSee what a run would do here, changing nothing: drvrun --plan ", script, " [KEY=VALUE...]\n")
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
