--- drv.compile: build out-of-tree kernel modules (kbuild, or a vendor tree's
-- own configure and make), and run depmod.
--
-- Every step logs to a file, reports progress while it runs (a line every
-- 10 s, even while the step prints nothing), honours a timeout and an
-- interrupt descriptor (a signal set's fd: the step's process group is killed
-- and the call returns "EINTR"), and fails with the lines of its log that matter.
-- Modules are built with `CONFIG_MODULE_SRCVERSION_ALL=y`, so that every module
-- built has a srcversion that tells it apart from the kernel's own.
--
-- @usage
-- local compile = require "drv.compile"
-- local built = assert(compile.kbuild{ src = "/usr/src/ofed", kver = "6.1.0-56-amd64",
--                                      extra_symbols = { "/usr/src/nvidia/Module.symvers" } })
-- for _, m in ipairs(built.modules) do print(m.name, m.srcversion) end
local M = {}

local proc = require "drv.proc"
local kmod = require "drv.kmod"
local fs = require "drv.fs"
local sys = require "drv.sys"
local log = require "drv.log"

local PROGRESS_EVERY = 10 -- seconds between "still building" lines
local SRCVERSION_ALL = "CONFIG_MODULE_SRCVERSION_ALL=y"
-- Where a distribution's ccache package puts its compiler links (gcc, cc... that go through the
-- cache): Debian and Ubuntu, Fedora and RHEL (64-bit).
local CCACHE_DIRS = { "/usr/lib/ccache", "/usr/lib64/ccache" }

--- The kernel build directory for a release, under an optional root.
function M.kernel_build_dir(kver, root)
  return ("%s/lib/modules/%s/build"):format(root or "", kver)
end

--- The kernel's header trees for `kver`: `{ build = arch/object tree, source = source tree }`.
-- Debian splits them (`build` -> linux-headers-K, `source` -> linux-headers-…-common);
-- elsewhere both are one tree.
function M.kernel_dirs(kver, root)
  local base = ("%s/lib/modules/%s"):format(root or "", kver)
  local build = fs.realpath(base .. "/build") or base .. "/build"
  local source = fs.realpath(base .. "/source")
  return { build = build, source = source and fs.exists(source .. "/Makefile") and source or build }
end

local function last_lines(text, n)
  local lines = {}
  for line in text:gmatch("[^\n]+") do
    lines[#lines + 1] = line
    if #lines > n then table.remove(lines, 1) end
  end
  return table.concat(lines, "\n")
end

-- The first lines that say what went wrong, when the end of the log does not show them.
local ERROR_PATTERNS = { "error:", "Error %d", "%*%*%* ", "configure: error", "^%-E%-", "undefined!",
                         "No rule to make target", "FATAL", "[Ff]ailed" }
local function first_errors(text, tail, n)
  local found = {}
  for line in text:gmatch("[^\n]+") do
    for _, pat in ipairs(ERROR_PATTERNS) do
      if line:find(pat) then
        if not tail:find(line, 1, true) then found[#found + 1] = line end
        break
      end
    end
    if #found >= n then break end
  end
  return found
end

--- The first line of `text` (a build's log, or a failure's message with its lines) that
-- says what went wrong: a compiler's error, make's, configure's; nil when none does.
function M.first_error(text)
  local found = first_errors(text, "", 1)
  return found[1]
end

local function failure_text(label, what, res, logfile)
  local text = res.stdout
  local tail = last_lines(text, 20)
  local msg = ("%s failed (%s exited %s); last lines of %s:\n%s"):format(label, what,
    tostring(res.status or res.signal), logfile, tail)
  local errors = first_errors(text, tail, 10)
  if #errors > 0 then msg = msg .. "\nfirst errors in the log:\n" .. table.concat(errors, "\n") end
  return msg
end

--- Every regular file below dir whose name matches `pattern` (default: all), sorted.
function M.find_files(dir, pattern)
  local found = {}
  local function walk(d)
    for _, name in ipairs(assert(fs.dir(d))) do
      local path = d .. "/" .. name
      local st = fs.lstat(path)
      if st and st.type == "directory" then
        walk(path)
      elseif st and st.type == "file" and (not pattern or name:match(pattern)) then
        found[#found + 1] = path
      end
    end
  end
  walk(dir)
  table.sort(found)
  return found
end

--- Every `*.ko` below dir, sorted.
function M.find_modules(dir)
  return M.find_files(dir, "%.ko$")
end

--- The module files a build in `dir` produced: the ones its modules.order lists
-- (kbuild writes it; test modules a configure built elsewhere in the tree are
-- not in it), or every `*.ko` below dir when there is none.
function M.built_files(dir)
  local f = io.open(dir .. "/modules.order")
  if not f then return M.find_modules(dir) end
  local files = {}
  for line in f:lines() do
    if line:match("%.k?o$") then
      local path = line:sub(1, 1) == "/" and line or dir .. "/" .. line
      files[#files + 1] = (path:gsub("%.o$", ".ko"))
    end
  end
  f:close()
  table.sort(files)
  return files
end

local function check_vermagic(mod, kver)
  local release = mod.vermagic and mod.vermagic:match("^(%S+)")
  if release ~= kver then
    return nil, ("%s: built for kernel %s, not %s"):format(mod.path, tostring(release), kver), "ENOEXEC"
  end
  return true
end

--- Describe a built module file, as `kbuild` does for each it built; with
-- `kver`, fail unless it was built for that kernel.
-- @treturn[1] table `{ name, path, srcversion, vermagic, version, depends, description }`
-- @treturn[2] nil, message, errno
function M.describe(path, kver)
  local info, err, errno = kmod.modinfo(path)
  if not info then return nil, err, errno end
  local mod = { name = info.name, path = path, srcversion = info.srcversion, vermagic = info.vermagic,
                version = info.version, depends = info.depends, description = info.description }
  if kver then
    local ok, verr, verrno = check_vermagic(mod, kver)
    if not ok then return nil, verr, verrno end
  end
  return mod
end

--- The environment that sends a build's compilers through ccache with its
-- cache in `dir`, or nil when ccache is not installed. Paths under `base`
-- (the build area) are hashed relative to it, so a rebuild in a fresh tree hits.
-- Depend mode: a miss runs the compiler once, not the preprocessor first
-- then the compiler (preprocessing the kernel headers is a large share of a
-- kernel object's compile); the include files are read from the dependency
-- file kbuild has every compile write (-MMD).
function M.ccache_env(dir, base)
  local bin
  for _, d in ipairs(CCACHE_DIRS) do
    if fs.exists(d .. "/gcc") then bin = d break end
  end
  if not bin then return nil end
  return { PATH = bin .. ":" .. (os.getenv("PATH") or "/usr/bin:/bin"), CCACHE_DIR = dir,
           CCACHE_BASEDIR = base, CCACHE_NOHASHDIR = "1", CCACHE_MAXSIZE = "4G", CCACHE_DEPEND = "1" }
end

-- Progress: a line every PROGRESS_EVERY seconds while the step runs, with the
-- objects compiled so far and what `o.progress()` adds (e.g. "412 of 961 checks").
local function progress(o)
  local objects = 0
  local function on_line(_, line)
    if line:match("^%s*CC ") and not line:match("%.mod%.o$") then objects = objects + 1 end
  end
  local function on_tick(seconds)
    local extra = o.progress and o.progress() or nil
    local parts = { ("%.0f s"):format(seconds) }
    if objects > 0 then parts[#parts + 1] = ("%d objects compiled"):format(objects) end
    if extra then parts[#parts + 1] = extra end
    log.info("%s: running, %s", o.label, table.concat(parts, ", "))
  end
  return on_line, on_tick, function() return objects end
end

-- A build step does not inherit the flags of a make that runs drvrun (make -s
-- would silence its log, a jobserver would not be its own).
local NO_OUTER_MAKE = { MAKEFLAGS = false, MFLAGS = false, MAKELEVEL = false, MAKEOVERRIDES = false }

local function step_env(env)
  local e = {}
  for k, v in pairs(NO_OUTER_MAKE) do e[k] = v end
  for k, v in pairs(env or {}) do e[k] = v end
  return e
end

-- Run one build step: `{ label, argv, cwd, env, log, timeout, interrupt_fd, progress }`.
-- Returns proc.run's result, or nil, message (with the log lines that matter), errno.
local function run_step(o)
  local on_line, on_tick, objects = progress(o)
  local res, err, errno = proc.run(o.argv, { cwd = o.cwd, env = step_env(o.env), log = o.log, timeout = o.timeout,
                                             interrupt_fd = o.interrupt_fd, stderr = "stdout",
                                             max_capture = 256 * 1024, on_line = on_line,
                                             on_tick = on_tick, tick = PROGRESS_EVERY })
  if not res then return nil, ("%s: %s"):format(o.label, err), errno end
  if res.interrupted then return nil, ("%s: interrupted after %.0f s (log: %s)"):format(o.label, res.seconds, o.log), "EINTR" end
  if res.timed_out then
    return nil, ("%s: timed out after %d s (log: %s)"):format(o.label, o.timeout, o.log), "ETIMEDOUT"
  end
  if res.status ~= 0 then return nil, failure_text(o.label, o.argv[1]:match("[^/]+$"), res, o.log), "EIO" end
  res.objects = objects()
  return res
end

local function check_opts(o, fname)
  if type(o) ~= "table" then
    error(("bad argument #1 to '%s' (table expected, got %s)"):format(fname, type(o)), 3)
  end
  if type(o.src) ~= "string" then error(("bad argument #1 to '%s' (field 'src': string expected)"):format(fname), 3) end
  for _, k in ipairs { "extra_symbols", "make_args", "args", "env" } do
    if o[k] ~= nil and type(o[k]) ~= "table" then
      error(("bad argument #1 to '%s' (field '%s': table expected)"):format(fname, k), 3)
    end
  end
end

local DEFAULT_LOG = ".drvrun-build.log"

--- The log a build step with options `o` writes: `o.log`, or `.drvrun-build.log` in its tree
-- (a configure's and the make after it append to the same one).
function M.log_path(o)
  return o.log or (type(o.src) == "string" and o.src .. "/" .. DEFAULT_LOG or nil)
end

local function defaults(o)
  o = setmetatable({}, { __index = o })
  o.kver = o.kver or sys.uname().release
  o.jobs = o.jobs or sys.nproc()
  o.log = M.log_path(o)
  return o
end

-- The modules a build produced, each described and checked for the kernel.
local function collect(o, label, res)
  local modules = {}
  for _, path in ipairs(M.built_files(o.src)) do
    local mod, merr, merrno = M.describe(path, o.kver)
    if not mod then return nil, merr, merrno end
    modules[#modules + 1] = mod
  end
  if #modules == 0 then
    return nil, ("%s: make succeeded but produced no .ko files (log: %s)"):format(label, o.log), "ENOENT"
  end
  log.info("%s: %d modules in %.1f s", label, #modules, res.seconds)
  return { modules = modules, seconds = res.seconds, log = o.log, objects = res.objects }
end

local function make_argv(base, o)
  local argv = base
  argv[#argv + 1] = "-j" .. o.jobs
  argv[#argv + 1] = SRCVERSION_ALL
  if o.extra_symbols and #o.extra_symbols > 0 then
    argv[#argv + 1] = "KBUILD_EXTRA_SYMBOLS=" .. table.concat(o.extra_symbols, " ")
  end
  for _, a in ipairs(o.make_args or {}) do argv[#argv + 1] = a end
  return argv
end

--- Build the modules in `o.src` with kbuild (`make -C KDIR M=src`).
-- @tparam table o `{ src = dir, kver = release (default: running), kdir = build dir (default: from kver),
--   jobs = n (default: CPUs), extra_symbols = { Module.symvers... }, make_args = { "K=V"... },
--   log = path (default: src/.drvrun-build.log), timeout = seconds, target = "modules",
--   env = { K = "v" } (e.g. `ccache_env`), interrupt_fd = fd }`
-- @treturn[1] table `{ modules = { {name, path, srcversion, vermagic, version, depends}... }, seconds, log }`
-- @treturn[2] nil, message (with the last lines of the log), errno ("EINTR" when interrupted)
function M.kbuild(o)
  check_opts(o, "kbuild")
  o = defaults(o)
  o.kdir = o.kdir or M.kernel_build_dir(o.kver)
  if not fs.exists(o.kdir .. "/Makefile") then
    return nil, ("kernel build directory %s not found: install the headers (linux-headers-%s)")
      :format(o.kdir, o.kver), "ENOENT"
  end
  local label = "build " .. o.src:match("[^/]+$")
  log.info("%s for %s: make -j%d", label, o.kver, o.jobs)
  local argv = make_argv({ "make", "-C", o.kdir, "M=" .. o.src }, o)
  argv[#argv + 1] = o.target or "modules"
  local res, err, errno = run_step { label = label, argv = argv, env = o.env, log = o.log, timeout = o.timeout,
                                     interrupt_fd = o.interrupt_fd }
  if not res then return nil, err, errno end
  return collect(o, label, res)
end

--- Run a vendor tree's `./configure ARGS` in `o.src`.
-- @tparam table o `{ src = dir, args = { "--flag"... }, log = path (default: src/.drvrun-build.log, the
--   log make appends to next: the build cache keeps both in one build.log),
--   timeout = seconds, env = {...}, interrupt_fd = fd, progress = function() -> text or nil }`
-- @treturn[1] table `{ seconds, log }`
-- @treturn[2] nil, message (with the lines of the log that matter), errno
function M.configure(o)
  check_opts(o, "configure")
  o = defaults(o)
  if not fs.exists(o.src .. "/configure") then
    return nil, ("configure %s: there is no %s/configure (is this the source tree?)"):format(o.src, o.src), "ENOENT"
  end
  local label = "configure " .. o.src:match("[^/]+$")
  local argv = { "./configure" }
  for _, a in ipairs(o.args or {}) do argv[#argv + 1] = a end
  log.info("%s: %s", label, table.concat(argv, " "))
  local res, err, errno = run_step { label = label, argv = argv, cwd = o.src, env = o.env, log = o.log,
                                     timeout = o.timeout, interrupt_fd = o.interrupt_fd, progress = o.progress }
  if not res then return nil, err, errno end
  log.info("%s: done in %.1f s", label, res.seconds)
  return { seconds = res.seconds, log = o.log }
end

--- Run a vendor tree's own `make` in `o.src` (after its configure), then
-- collect the modules it built (its modules.order).
-- @tparam table o `{ src = dir, kver = release, jobs = n, make_args = {...}, log = path
--   (default: src/.drvrun-build.log), timeout = seconds, env = {...}, interrupt_fd = fd }`
-- @treturn[1] table as kbuild's
-- @treturn[2] nil, message, errno
function M.make(o)
  check_opts(o, "make")
  o = defaults(o)
  local label = "build " .. o.src:match("[^/]+$")
  log.info("%s for %s: make -j%d", label, o.kver, o.jobs)
  local res, err, errno = run_step { label = label, argv = make_argv({ "make", "-C", o.src }, o), env = o.env,
                                     log = o.log, timeout = o.timeout, interrupt_fd = o.interrupt_fd }
  if not res then return nil, err, errno end
  return collect(o, label, res)
end

-- What depmod writes into a kernel's module directory (the rest there is its input).
local DEPMOD_OUTPUTS = { "modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin", "modules.softdep",
                         "modules.symbols", "modules.symbols.bin", "modules.builtin.bin", "modules.builtin.alias.bin",
                         "modules.devname", "modules.weakdep" }

-- Everything depmod's result depends on, as text: the kernel package's modules
-- (kernel/, thousands of files) by the index its installation made (modules.dep
-- and the module lists, by sha256: a package that changes a module runs depmod,
-- which rewrites them), every other file of the module tree but depmod's outputs
-- (updates/, extra/...) by path, size and modification time (or the sha256
-- `known` gives: a file just copied has a new time, not new content), the
-- configuration directories, and depmod itself. Walking kernel/ instead cost a
-- restart in the emulated guest most of a minute (a stat each over 9p).
local function depmod_inputs(kver, root, known)
  local moddir = root .. "/lib/modules/" .. kver
  local outputs = {}
  for _, name in ipairs(DEPMOD_OUTPUTS) do outputs[moddir .. "/" .. name] = true end
  local lines = {}
  for _, name in ipairs { "modules.dep", "modules.order", "modules.builtin", "modules.builtin.modinfo" } do
    lines[#lines + 1] = name .. " " .. (fs.sha256(moddir .. "/" .. name) or "-")
  end
  local function walk(d)
    for _, name in ipairs(fs.dir(d) or {}) do
      local path = d .. "/" .. name
      local st = fs.lstat(path)
      if st and st.type == "directory" and path ~= moddir .. "/kernel" then
        walk(path)
      elseif st and st.type == "file" and not outputs[path] and not path:match("^" .. moddir:gsub("%p", "%%%0")
                                                                            .. "/modules%.[^/]*$") then
        lines[#lines + 1] = path:sub(#root + 1) .. " " .. (known[path] or st.size .. " " .. st.mtime_ns)
      end
    end
  end
  for _, dir in ipairs { moddir, root .. "/etc/depmod.d", root .. "/lib/depmod.d" } do walk(dir) end
  table.sort(lines)
  local depmod = fs.stat(proc.which("depmod") or "/sbin/depmod")
  lines[#lines + 1] = "depmod " .. (depmod and depmod.size .. " " .. depmod.mtime_ns or "?")
  return table.concat(lines, "\n") .. "\n"
end

-- The outputs of an earlier depmod over the same inputs, kept in `memo`: copied into the tree.
local function depmod_recall(memo, inputs, moddir)
  if fs.read(memo .. "/inputs") ~= inputs then return false end
  for _, name in ipairs(DEPMOD_OUTPUTS) do
    local kept = memo .. "/" .. name
    if fs.exists(kept) and not fs.copy(kept, moddir .. "/" .. name, { sync = false }) then return false end
  end
  return true
end

-- Keep this depmod's outputs in `memo` (replacing what it held), for the next run over the same inputs.
local function depmod_remember(memo, inputs, moddir)
  local tmp = memo .. ".new"
  fs.remove(tmp, { recursive = true, missing_ok = true })
  if not fs.mkdir(tmp) then return end
  for _, name in ipairs(DEPMOD_OUTPUTS) do
    if fs.exists(moddir .. "/" .. name) and not fs.copy(moddir .. "/" .. name, tmp .. "/" .. name) then return end
  end
  if not fs.write(tmp .. "/inputs", inputs) then return end
  fs.remove(memo, { recursive = true, missing_ok = true })
  fs.rename(tmp, memo)
end

--- Run depmod for kernel `kver` over the tree rooted at `basedir` ("/" by default).
-- depmod reads every module of the kernel (most of a minute under emulation).
-- With `o.memo`, a directory, its outputs are kept there with what they were
-- made from (the kernel package's index by sha256, each other file's path, size
-- and time; `o.known` gives the sha256 of files just copied); the next call over the same inputs copies them instead
-- of running depmod: a driver container starting again on a fresh layer over
-- the host's module tree installs the same files into the same tree.
-- @tparam string kver
-- @tparam[opt] string basedir
-- @tparam[opt] table o `{ timeout = seconds, interrupt_fd = fd, memo = dir, known = { [path] = sha256 } }`
-- @treturn[1] true, or "remembered" when the memo's outputs were copied
-- @treturn[2] nil, message, errno
function M.depmod(kver, basedir, o)
  if type(kver) ~= "string" then error("bad argument #1 to 'depmod' (string expected, got " .. type(kver) .. ")", 2) end
  o = o or {}
  local root = (basedir or "/"):gsub("/+$", "")
  local moddir, inputs = root .. "/lib/modules/" .. kver, nil
  if o.memo then
    inputs = depmod_inputs(kver, root, o.known or {})
    if depmod_recall(o.memo, inputs, moddir) then return "remembered" end
  end
  local res, err, errno = proc.run({ "depmod", "-b", basedir or "/", kver }, { stderr = "stdout",
                                     timeout = o.timeout, interrupt_fd = o.interrupt_fd })
  if not res then return nil, "depmod: " .. err, errno end
  if res.interrupted then return nil, "depmod: interrupted", "EINTR" end
  if res.timed_out then return nil, ("depmod: timed out after %d s"):format(o.timeout), "ETIMEDOUT" end
  if res.status ~= 0 then
    return nil, ("depmod %s failed: %s"):format(kver, last_lines(res.stdout, 5)), "EIO"
  end
  if inputs then depmod_remember(o.memo, inputs, moddir) end
  return true
end

return M
