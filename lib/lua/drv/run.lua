--- drv.run: the run object a recipe's phase functions are handed (`r`).
--
-- What a phase needs from the lifecycle: the resolved options (`r.opt`), the
-- kernel (`r.kver`), the install root, the build cache, and helpers that fail
-- the phase with a message for the operator instead of a traceback (`r:fail`,
-- `r:must`), wait with progress (`r:wait_for`), build (`r:kbuild`), extract,
-- copy and install. See doc/recipes.md.
local M = {}

local digests = require "drv.digests"
local cache = require "drv.cache"
local journal = require "drv.journal"
local archive = require "drv.archive"
local kmod = require "drv.kmod"
local proc = require "drv.proc"
local fs = require "drv.fs"
local sys = require "drv.sys"
local lock = require "drv.lock"
local log = require "drv.log"
-- drv.compile at the first build: a restart that finds its build cached does not load it.
local function compiler() return require "drv.compile" end

M.Cancel = {} -- metatable of the error raised when a signal cancels a phase

local Run = {}
Run.__index = Run

--- A run of `recipe` with the resolved options `opt`.
function M.new(recipe, opt)
  local r = setmetatable({ recipe = recipe, opt = opt, sources = {}, inputs = {}, built = nil }, Run)
  r.kver = opt.KVER or sys.uname().release
  r.root = opt.ROOT
  r.cache = ("%s/%s"):format(opt.CACHE_DIR, recipe.name)
  r.digests = digests.open(r.cache .. "/digests")
  r.journal = journal.new(("%s/%s.journal"):format(opt.STATE_DIR, recipe.name))
  return r
end

function Run:path(p)
  if self.root == "/" then return p end
  return self.root .. p
end

--- Cancel the current phase for signal `sig` ("TERM"): stop runs next.
function Run:cancel(sig)
  self.cancelled = sig
  error(setmetatable({ signal = sig }, M.Cancel), 0)
end

--- Raise a cancel when a signal has arrived.
function Run:check_cancel()
  local sig = self.signals and self.signals:poll()
  if sig then self:cancel(sig) end
end

--- Take `lock.acquire(path, o)` (its directory made first) for `what`, or fail the
-- phase saying who holds it; a signal while waiting cancels the phase.
function Run:take_lock(what, path, o)
  self:must(what, fs.mkdir(path:match("^(.*)/[^/]*$") or "/"))
  o.interrupt_fd = o.interrupt_fd or (self.signals and self.signals:fd())
  local l, err, errno = lock.acquire(path, o)
  if not l and errno == "EINTR" then self:check_cancel() end
  return self:must(what, l, err)
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
    if sig then self:cancel(sig) end
    value, reason = check_fresh()
  end
  if sys.monotonic() - t0 >= 1 then log.info("await: %s: there after %.0f s", what, sys.monotonic() - t0) end
  return value
end

-- Install a Debian/Ubuntu package with apt (refreshing stale package lists
-- once); returns true, or nil and apt's own words.
local function apt_install(r, pkg)
  local function apt(argv)
    local res, err = proc.run(argv, { stderr = "stdout", timeout = r.opt.BUILD_TIMEOUT,
                                      interrupt_fd = r.signals and r.signals:fd() })
    if res and res.interrupted then r:check_cancel() end
    return res, err
  end
  local install = { "apt-get", "install", "-y", "--no-install-recommends", pkg }
  local res, err = apt(install)
  if res and res.status ~= 0 and res.stdout:match("Unable to locate package") then
    apt({ "apt-get", "update", "-qq" })
    res, err = apt(install)
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

-- What every build step of this run gets: the kernel, the jobs, what is left
-- of BUILD_TIMEOUT, the signals' fd (a TERM stops the step within seconds),
-- and ccache when CCACHE is on and it is installed.
local function step_options(r, o)
  o.kver = o.kver or r.kver
  o.jobs = o.jobs or (r.opt.BUILD_JOBS > 0 and r.opt.BUILD_JOBS or nil)
  r.build_deadline = r.build_deadline or sys.monotonic() + r.opt.BUILD_TIMEOUT
  o.timeout = o.timeout or math.max(1, math.ceil(r.build_deadline - sys.monotonic()))
  o.interrupt_fd = o.interrupt_fd or (r.signals and r.signals:fd())
  if o.env == nil and r.opt.CCACHE then
    o.env = compiler().ccache_env(r.cache .. "/ccache", cache.work_dir(r))
  end
  return o
end

local function build_step(r, fn, o)
  local res, err, errno = fn(step_options(r, o))
  if errno == "EINTR" then log.info("%s", err) end
  r:check_cancel()
  if not res then r:fail("%s", err) end
  return res
end

--- Build with kbuild for this run's kernel; installs headers first when needed.
function Run:kbuild(o)
  o.kdir = o.kdir or compiler().kernel_build_dir(o.kver or self.kver)
  self:ensure_headers(o.kdir, o.kver or self.kver)
  return build_step(self, compiler().kbuild, o)
end

--- Run a vendor tree's `./configure` (drv.compile.configure) for this run's
-- kernel; installs headers first when needed.
function Run:configure(o)
  self:ensure_headers(compiler().kernel_build_dir(self.kver), self.kver)
  return build_step(self, compiler().configure, o)
end

--- Run a vendor tree's own `make` (drv.compile.make) after its configure.
function Run:make(o)
  return build_step(self, compiler().make, o)
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
  local res, err = archive.extract(path, dir, o)
  self:must("extract " .. path, res, err)
  return dir
end

--- Declare a file or directory the build depends on besides the sources (a
-- Module.symvers it links against): its content is part of the build cache key.
-- With `value` (e.g. drv.symvers.abi(path)), that is what keys the build instead
-- of the file's content.
function Run:build_input(path, value)
  self.inputs[#self.inputs + 1] = { path = path, value = value }
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

--- The srcversions the stack's modules were built with: `{ [name] = srcversion or false }`.
function Run:built_srcversions()
  local want, in_stack = {}, {}
  for _, n in ipairs(self.stack) do in_stack[n] = true end
  for _, m in ipairs(self.built) do
    local name = m.name:gsub("-", "_")
    if in_stack[name] then want[name] = m.srcversion ~= "" and m.srcversion or false end
  end
  return want
end

return M
