--- drv.run: a run of a recipe: its private state, and `r`, the recipe's view of it.
--
-- The lifecycle (drv.lifecycle) keeps everything about a run in one private
-- state object; a recipe's functions are handed `r`, a narrow view of it:
--
-- * fields, read-only: `r.opt` (the resolved options), `r.kver`, `r.root`,
--   `r.stack`, `r.sources` (local paths, by key), `r.built` (the modules, once
--   built), `r.kept` (files kept with the build), `r.requires` (what each
--   required recipe provides). A recipe may keep values of its own in other
--   fields of `r`; the library never reads them.
-- * methods: the `Run:` functions below, each a step a recipe takes (build,
--   extract, install, wait, fail) with the lifecycle's guarantees: cancelled by
--   a signal within seconds, bounded in time, failing the phase with a message
--   for the operator instead of a traceback.
local M = {}

local digests = require "drv.digests"
local cache = require "drv.cache"
local kernels = require "drv.kernels"
local journal = require "drv.journal"
local archive = require "drv.archive"
local kmod = require "drv.kmod"
local fs = require "drv.fs"
local sys = require "drv.sys"
local lock = require "drv.lock"
local log = require "drv.log"
-- drv.compile and drv.packages at their first use: a restart that finds its build cached loads neither.
local function compiler() return require "drv.compile" end
local function packages() return require "drv.packages" end

M.Cancel = {} -- metatable of the error raised when a signal cancels a phase

--- The private state of a run (for drv.lifecycle and the library; recipes see `facade(state)`),
-- unnamed until `State:named`.
-- Written by the lifecycle as the run goes: `built`, `kept`, `build_id`, `stack_deps`, `kernel_deps`,
-- `verified`, `previous`, `requires`, `lock`, `instance`, `lost`.
-- @tparam table recipe the checked recipe
-- @tparam table opt its resolved options
-- @treturn table the state
function M.new(recipe, opt)
  local s = setmetatable({ recipe = recipe, opt = opt, sources = {}, inputs = {}, requires = {} },
                         { __index = M.State })
  s.kver = opt.KVER or sys.uname().release
  s.root = opt.ROOT
  return s
end

-- ---- cancellation and failure: every step goes through these -----------------------

local State = {}
M.State = State

--- Name the run: its recipe's name and version (the fields, or what their functions returned),
-- which name its cache (CACHE_DIR/<name>) and its journal (STATE_DIR/<name>.journal).
function State:named(name, version)
  self.name, self.version = name, version
  self.cache = ("%s/%s"):format(self.opt.CACHE_DIR, name)
  self.digests = digests.open(self.cache .. "/digests")
  self.journal = journal.new(("%s/%s.journal"):format(self.opt.STATE_DIR, name))
end

--- Cancel the current phase for signal `sig` ("TERM"): stop runs next.
function State:cancel(sig)
  self.cancelled = sig
  error(setmetatable({ signal = sig }, M.Cancel), 0)
end

--- Raise a cancel when a signal has arrived.
function State:check_cancel()
  local sig = self.signals and self.signals:poll()
  if sig then self:cancel(sig) end
end

--- The descriptor a long step watches to stop within seconds of a signal.
function State:interrupt_fd()
  return self.signals and self.signals:fd()
end

--- The one way a step's result is taken: a step stopped by a signal (errno EINTR, or a
-- process result marked `interrupted`) cancels the phase; a failure fails it with
-- "what: message" (the message alone without `what`); else the result is returned.
function State:checked(what, res, err, errno)
  if errno == "EINTR" or (type(res) == "table" and res.interrupted) then
    if err then log.info("%s", err) end
    local sig = self.signals and self.signals:poll()
    self:cancel(sig or (err and err:match("by SIG(%u+)")) or "TERM")
  end
  if not res then self:fail(what and "%s: %s" or "%s", what or err, err) end
  return res
end

--- Fail the current phase with a message for the operator.
function State.fail(_, fmt, ...)
  error(select("#", ...) > 0 and fmt:format(...) or fmt, 0)
end

--- Fail the current phase with "what: err" unless `ok`; returns `ok`.
-- For the `nil, message, errno` of the drv.* calls: `r:must("install", fs.mkdir(dir))`.
function State:must(what, ok, err)
  if not ok then self:fail("%s: %s", what, err) end
  return ok
end

--- Take `lock.acquire(path, o)` (its directory made first) for `what`, or fail the
-- phase saying who holds it; a signal while waiting cancels the phase.
function State:take_lock(what, path, o)
  self:must(what, fs.mkdir(path:match("^(.*)/[^/]*$") or "/"))
  o.interrupt_fd = o.interrupt_fd or self:interrupt_fd()
  return self:checked(what, lock.acquire(path, o))
end

-- ---- what a recipe asks of the run ---------------------------------------------------

--- `p`, an absolute path, under the install root (ROOT): `r:path("/usr/src")`.
function State:path(p)
  if self.root == "/" then return p end
  return self.root .. p
end

local AWAIT_PROGRESS_EVERY = 10 -- seconds between "still waiting" lines

--- Wait until `check()` returns a true value (which is returned), polling every
-- second, with a progress line every 10 s; fails at `timeout` (default
-- AWAIT_TIMEOUT) with `what` and the last reason `check` gave (`nil, reason`).
function State:wait_for(what, check, timeout)
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
    if sig then self:cancel(sig) end
    value, reason = check_fresh()
  end
  if sys.monotonic() - t0 >= 1 then log.info("await: %s: there after %.0f s", what, sys.monotonic() - t0) end
  return value
end

-- Install distribution packages, or fail the phase with the package tool's words.
local function install_packages(s, what, names)
  local ok, err, errno = packages().install(names, { timeout = s.opt.BUILD_TIMEOUT, interrupt_fd = s:interrupt_fd() })
  return s:checked(what, ok, err, errno)
end

--- A libkmod context on the running kernel's modules. When they are missing
-- (a container without the host's /lib/modules), install the distribution's
-- package of them as the original driver containers did, or fail saying what
-- to mount. The context is kept for the run, until depmod changes its indexes.
function State:kmod()
  if self.kmod_ctx then return self.kmod_ctx end
  local ctx, err = kmod.new()
  if not ctx then
    local release = sys.uname().release
    local pkg = packages().kernel_modules(release)
    log.info("the running kernel's modules are missing (%s): installing %s", err, pkg)
    local ok, perr = packages().install({ pkg }, { timeout = self.opt.BUILD_TIMEOUT, interrupt_fd = self:interrupt_fd() })
    ctx = ok and kmod.new()
    if not ctx then
      self:fail("cannot read the running kernel's modules: %s, and installing %s failed: %s. Mount the host's "
                .. "/lib/modules into the container", err, pkg, perr or "no modules after the install")
    end
  end
  self.kmod_ctx = ctx
  return ctx
end

--- Is module `name` loaded? Its state (`{ name, initstate, srcversion, refcount, holders }`), or nil.
-- A module built into the kernel is not "loaded".
function State:module_state(name)
  local st = self:kmod():state(name, { "srcversion" })
  if st and st.initstate ~= "builtin" then return st end
end

--- The modules of `names` that are loaded, in the order given.
function State:loaded(names)
  local found = {}
  for _, n in ipairs(names) do
    if self:module_state(n) then found[#found + 1] = n end
  end
  return found
end

-- What every build step of this run gets: the kernel, BUILD_JOBS, what is left
-- of BUILD_TIMEOUT, the signals' fd (a TERM stops the step within seconds),
-- and ccache when CCACHE is on and it is installed.
local function step_options(s, o)
  o.kver = o.kver or s.kver
  o.jobs = o.jobs or s.opt.BUILD_JOBS
  s.build_deadline = s.build_deadline or sys.monotonic() + s.opt.BUILD_TIMEOUT
  o.timeout = o.timeout or math.max(1, math.ceil(s.build_deadline - sys.monotonic()))
  o.interrupt_fd = o.interrupt_fd or s:interrupt_fd()
  if o.env == nil and s.opt.CCACHE then
    o.env = compiler().ccache_env(s.cache .. "/ccache", cache.work_dir(s))
  end
  return o
end

local function build_step(s, fn, o)
  o = step_options(s, o)
  s.build_log = compiler().log_path(o) -- the log a failure points to
  local res = s:checked(nil, fn(o))
  s:check_cancel() -- a signal that came as the step ended
  return res
end

--- Make sure the kernel headers for `kver` are there: a build-only run (one ahead of a
-- reboot, an image's) takes the host's (HOST_ROOT, drv.kernels), bound where the host has
-- them in a mount namespace of its own; else the distribution's package is installed.
function State:ensure_headers(kver)
  local kdir = compiler().kernel_build_dir(kver)
  if fs.exists(kdir .. "/Makefile") then return kdir end
  local host = self.opt.BUILD_ONLY and kernels.on_host(kver, self.opt.HOST_ROOT)
  if host then
    log.info("kernel headers for %s: the host's, %s (from %s), bound at the host's paths for this build", kver,
             host.build, self.opt.HOST_ROOT)
    self:must("the host's kernel headers for " .. kver, kernels.use_host_headers(kver, host))
    return kdir
  end
  local pkg = packages().kernel_headers(kver)
  log.info("kernel headers for %s missing (%s): installing %s", kver, kdir, pkg)
  install_packages(self, ("kernel headers for %s not found at %s, and installing %s failed"):format(kver, kdir, pkg),
                   { pkg })
  if not fs.exists(kdir .. "/Makefile") then
    self:fail("kernel headers for %s not found at %s, and %s is installed but did not put them there", kver, kdir, pkg)
  end
  return kdir
end

--- Build with kbuild for this run's kernel (drv.compile.kbuild); installs its headers first when needed.
function State:kbuild(o)
  o.kdir = o.kdir or self:ensure_headers(o.kver or self.kver)
  return build_step(self, compiler().kbuild, o)
end

--- Run a vendor tree's `./configure` (drv.compile.configure) for this run's
-- kernel; installs its headers first when needed.
function State:configure(o)
  self:ensure_headers(self.kver)
  return build_step(self, compiler().configure, o)
end

--- Run a vendor tree's own `make` (drv.compile.make) after its configure.
function State:make(o)
  return build_step(self, compiler().make, o)
end

--- Describe a module file the recipe did not build (one a driver ships):
-- `{ name, path, srcversion, vermagic, depends }`, checked to be for this run's kernel.
function State:module_file(path)
  local m, err = compiler().describe(path, self.kver)
  return self:must("module " .. path, m, err)
end

--- Extract an archive (or copy a source directory; `o` is then ignored) into a
-- fresh directory under the build area; returns the directory.
function State:extract(path, o)
  local name = path:gsub("/+$", ""):match("[^/]+$"):gsub("%.tar%.[gx]z$", ""):gsub("%.t[agx]z$", ""):gsub("%.orig$", "")
  local dir = cache.work_dir(self) .. "/" .. name
  fs.remove(dir, { recursive = true, missing_ok = true })
  local st = fs.stat(path)
  if st and st.type == "directory" then
    self:must("extract", fs.mkdir(dir:match("^(.*)/")))
    self:copy_tree(path, dir)
    return dir
  end
  self:must("extract", fs.mkdir(dir))
  return self:must("extract " .. path, archive.extract(path, dir, o)) and dir
end

--- Declare a file or directory the build depends on besides the sources (a
-- Module.symvers it links against): its content is part of the build cache key.
-- With `value` (e.g. drv.symvers.abi(path)), that is what keys the build instead
-- of the file's content.
function State:build_input(path, value)
  self.inputs[#self.inputs + 1] = { path = path, value = value }
end

--- Expand `${OPTION}` references in s.
function State:expand(s)
  return (s:gsub("%${([%w_]+)}", function(k)
    local v = self.opt[k]
    if v == nil then self:fail("recipe refers to ${%s}, which is not set", k) end
    return tostring(v)
  end))
end

--- sha256 of a file, computed again only when the file changed since a run
-- last hashed it (drv.digests); nil, message, errno when it cannot be read.
function State:sha256(path)
  return self.digests:sha256(path)
end

local function copy_entry(s, from, to)
  local st = fs.lstat(from)
  if not st then s:fail("copy %s: it vanished during the copy", from) end
  if st.type == "directory" then
    s:must("copy to " .. to, fs.mkdir(to, { mode = st.mode }))
    for _, name in ipairs(assert(fs.dir(from))) do copy_entry(s, from .. "/" .. name, to .. "/" .. name) end
  elseif st.type == "link" then
    s:must("copy to " .. to, fs.symlink(assert(fs.readlink(from)), to, { replace = true }))
  elseif st.type == "file" then
    s:must("copy to " .. to, fs.copy(from, to, { sync = false }))
  else
    s:fail("copy %s: a %s is not copied (files, directories and links are)", from, st.type)
  end
end

--- Copy a directory tree (files with their modes, directories, links as they
-- are) or fail the phase. Nothing is synced: a lost copy is made again.
function State:copy_tree(from, to)
  copy_entry(self, from, to)
end

local INSTALLED_STAMP = ".drvrun-build" -- in an installed directory: the build it holds

--- Fill directory `dir` with `fill(dir)` (an install step: headers, tools),
-- unless it already holds this build's files: a restart copies nothing.
-- `dir` is emptied first; a stamp naming the build is written last, so an
-- install cut short is redone.
function State:install_dir(dir, fill)
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

--- Note that the recipe is about to write `path` on the host: stop (or the
-- next run, after a crash) removes it.
function State:journal_file(path)
  self.journal:record({ kind = "file", path = path })
end

-- ---- r: the recipe's view ----------------------------------------------------------

-- Fields a recipe reads; the library alone sets them.
local FIELDS = { opt = true, kver = true, root = true, stack = true, sources = true, built = true, kept = true,
                 requires = true }
-- The methods a recipe calls (doc/recipes.md): `r:name(...)` is `State.name(state, ...)`.
M.METHODS = { "fail", "must", "wait_for", "path", "expand", "kbuild", "configure", "make", "ensure_headers",
              "module_file", "extract", "copy_tree", "install_dir", "build_input", "sha256", "journal_file",
              "module_state", "loaded" }

-- API 2 recipes used these; each works with a warning naming what replaces it.
local DEPRECATED = {
  journal = { "r.journal:record{ kind = \"file\", path = p }", "r:journal_file(p)",
              function(s) return s.journal end },
  kmod = { "r:kmod()", "r:module_state(name) or r:loaded(names)",
           function(s) return function() return s:kmod() end end },
}

local function deprecated(s, key)
  local d = DEPRECATED[key]
  s.warned = s.warned or {}
  if not s.warned[key] then
    s.warned[key] = true
    log.warn("recipe %s: %s is API 2's and will go; write %s (doc/recipes.md, the API's changelog)",
             s.recipe_file or s.name, d[1], d[2])
  end
  return d[3](s)
end

--- The recipe's view of state `s`: read-only fields, the `Run:` methods.
function M.facade(s)
  local methods = {}
  for _, name in ipairs(M.METHODS) do
    local method = State[name]
    methods[name] = function(_, ...) return method(s, ...) end
  end
  return setmetatable({}, {
    __index = function(_, key)
      if FIELDS[key] then return s[key] end
      if methods[key] then return methods[key] end
      if DEPRECATED[key] then return deprecated(s, key) end
    end,
    __newindex = function(r, key, value)
      if FIELDS[key] or methods[key] then
        error(("recipe %s: r.%s is the run's, not the recipe's to set"):format(s.name, key), 2)
      end
      rawset(r, key, value)
    end,
    __name = "drv.run",
  })
end

return M
