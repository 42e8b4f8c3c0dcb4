--- drv.compile: build out-of-tree kernel modules with kbuild, and run depmod.
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

local EIO, ENOENT, ETIMEDOUT, ENOEXEC = 5, 2, 110, 8
local PROGRESS_EVERY = 10 -- seconds between "still building" lines

--- The kernel build directory for a release, under an optional root.
function M.kernel_build_dir(kver, root)
  return ("%s/lib/modules/%s/build"):format(root or "", kver)
end

local function last_lines(text, n)
  local lines = {}
  for line in text:gmatch("[^\n]+") do
    lines[#lines + 1] = line
    if #lines > n then table.remove(lines, 1) end
  end
  return table.concat(lines, "\n")
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

local function check_vermagic(mod, kver)
  local release = mod.vermagic and mod.vermagic:match("^(%S+)")
  if release ~= kver then
    return nil, ("%s: built for kernel %s, not %s"):format(mod.path, tostring(release), kver), ENOEXEC
  end
  return true
end

--- Describe a built module file, as `kbuild` does for each it built; with
-- `kver`, fail unless it was built for that kernel.
-- @treturn[1] table `{ name, path, srcversion, vermagic, version, depends }`
-- @treturn[2] nil, message, errno
function M.describe(path, kver)
  local info, err, errno = kmod.modinfo(path)
  if not info then return nil, err, errno end
  local mod = { name = info.name, path = path, srcversion = info.srcversion,
                vermagic = info.vermagic, version = info.version, depends = info.depends }
  if kver then
    local ok, verr, verrno = check_vermagic(mod, kver)
    if not ok then return nil, verr, verrno end
  end
  return mod
end

local function build_argv(o)
  local argv = { "make", "-C", o.kdir, "M=" .. o.src, "-j" .. o.jobs }
  if o.extra_symbols and #o.extra_symbols > 0 then
    argv[#argv + 1] = "KBUILD_EXTRA_SYMBOLS=" .. table.concat(o.extra_symbols, " ")
  end
  for _, a in ipairs(o.make_args or {}) do argv[#argv + 1] = a end
  argv[#argv + 1] = o.target or "modules"
  return argv
end

-- A line every PROGRESS_EVERY seconds while make runs, for long builds.
local function progress_reporter(label)
  local started, last, objects = sys.monotonic(), sys.monotonic(), 0
  return function(_, line)
    if line:match("^%s*CC %[M%]") then objects = objects + 1 end
    local now = sys.monotonic()
    if now - last >= PROGRESS_EVERY then
      last = now
      log.info("build %s: %d objects compiled, %.0f s", label, objects, now - started)
    end
  end
end

local function check_opts(o)
  if type(o) ~= "table" then error("bad argument #1 to 'kbuild' (table expected, got " .. type(o) .. ")", 3) end
  if type(o.src) ~= "string" then error("bad argument #1 to 'kbuild' (field 'src': string expected)", 3) end
  if o.extra_symbols ~= nil and type(o.extra_symbols) ~= "table" then
    error("bad argument #1 to 'kbuild' (field 'extra_symbols': table expected)", 3)
  end
end

--- Build the modules in `o.src` with kbuild.
-- @tparam table o `{ src = dir, kver = release (default: running), kdir = build dir (default: from kver),
--   jobs = n (default: CPUs), extra_symbols = { Module.symvers... }, make_args = { "K=V"... },
--   log = path (default: src/.drvrun-build.log), timeout = seconds, target = "modules" }`
-- @treturn[1] table `{ modules = { {name, path, srcversion, vermagic, version, depends}... }, seconds, log }`
-- @treturn[2] nil, message (with the last lines of the log), errno
function M.kbuild(o)
  check_opts(o)
  o = setmetatable({}, { __index = o })
  o.kver = o.kver or sys.uname().release
  o.kdir = o.kdir or M.kernel_build_dir(o.kver)
  o.jobs = o.jobs or sys.nproc()
  o.log = o.log or (o.src .. "/.drvrun-build.log")
  if not fs.exists(o.kdir .. "/Makefile") then
    return nil, ("kernel build directory %s not found: install the headers (linux-headers-%s)")
      :format(o.kdir, o.kver), ENOENT
  end
  local label = o.src:match("[^/]+$")
  log.info("build %s for %s: make -j%d", label, o.kver, o.jobs)
  local res, err, errno = proc.run(build_argv(o), { log = o.log, timeout = o.timeout, stderr = "stdout",
                                                    max_capture = 64 * 1024, on_line = progress_reporter(label) })
  if not res then return nil, ("build %s: %s"):format(label, err), errno end
  if res.timed_out then
    return nil, ("build %s: timed out after %d s (log: %s)"):format(label, o.timeout, o.log), ETIMEDOUT
  end
  if res.status ~= 0 then
    return nil, ("build %s failed (make exited %s); last lines of %s:\n%s")
      :format(label, tostring(res.status or res.signal), o.log, last_lines(res.stdout, 20)), EIO
  end
  local modules = {}
  for _, path in ipairs(M.find_modules(o.src)) do
    local mod, merr, merrno = M.describe(path, o.kver)
    if not mod then return nil, merr, merrno end
    modules[#modules + 1] = mod
  end
  if #modules == 0 then
    return nil, ("build %s: make succeeded but produced no .ko files (log: %s)"):format(label, o.log), ENOENT
  end
  log.info("build %s: %d modules in %.1f s", label, #modules, res.seconds)
  return { modules = modules, seconds = res.seconds, log = o.log }
end

--- Run depmod for kernel `kver` over the tree rooted at `basedir` ("/" by default).
-- @treturn[1] true
-- @treturn[2] nil, message, errno
function M.depmod(kver, basedir)
  if type(kver) ~= "string" then error("bad argument #1 to 'depmod' (string expected, got " .. type(kver) .. ")", 2) end
  local res, err, errno = proc.run({ "depmod", "-b", basedir or "/", kver }, { stderr = "stdout" })
  if not res then return nil, "depmod: " .. err, errno end
  if res.status ~= 0 then
    return nil, ("depmod %s failed: %s"):format(kver, last_lines(res.stdout, 5)), EIO
  end
  return true
end

return M
