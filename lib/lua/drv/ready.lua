--- drv.ready: the ready file, the one place that writes, reads and checks it.
--
-- A recipe's run writes it once every module of its stack is verified loaded,
-- and removes it first on stop. It says what is ready, one `key=value` a line:
--
--   recipe=ubuntu-ofed
--   version=25.10-1.7.1.1
--   kernel=6.1.0-57-amd64
--   boot_id=0b8f...
--   time=2026-12-07T10:00:00Z
--   module=mlx_compat srcversion=A1B2C3...
--   module=mlx5_core srcversion=none        (a module without one)
--
-- Readers: a health check (`drvrun PREFIX/share/drvrun/probe.lua FILE`, for a
-- Kubernetes exec probe or a Docker HEALTHCHECK), and a recipe that requires
-- another (the library waits until the other's ready file is live).
local M = {}

local fs = require "drv.fs"
local sys = require "drv.sys"

--- The name of the ready file in a driver container's root (`ROOT/.driver-ready`).
M.NAME = ".driver-ready"

--- The text of a ready file.
-- @tparam table t `{ recipe, version, kernel, time, modules = { { name, srcversion (nil: none) }... } }`
-- (the boot id is this boot's)
-- @treturn string
function M.format(t)
  local lines = {
    "recipe=" .. t.recipe, "version=" .. t.version, "kernel=" .. t.kernel,
    "boot_id=" .. (sys.boot_id() or "unknown"), "time=" .. t.time,
  }
  for _, m in ipairs(t.modules) do
    lines[#lines + 1] = ("module=%s srcversion=%s"):format(m.name, m.srcversion or "none")
  end
  return table.concat(lines, "\n") .. "\n"
end

--- Parse the text of a ready file.
-- @tparam string text
-- @treturn table `{ fields = { recipe = "ubuntu-ofed", boot_id = "…", … }, modules = { { name =, srcversion = }… } }`
-- (`srcversion` is the string `none` for a module without one)
function M.parse(text)
  local parsed = { fields = {}, modules = {} }
  for line in text:gmatch("[^\n]+") do
    local name, srcversion = line:match("^module=(%S+) srcversion=(%S+)$")
    if name then
      parsed.modules[#parsed.modules + 1] = { name = name, srcversion = srcversion }
    else
      local k, v = line:match("^([%w_]+)=(.*)$")
      if k then parsed.fields[k] = v end
    end
  end
  return parsed
end

--- Write `text` to each of `paths` atomically, their directories made first.
-- @treturn[1] true
-- @treturn[2] nil, message, errno
function M.write(paths, text)
  for _, path in ipairs(paths) do
    local dir = path:match("^(.+)/[^/]*$")
    local ok, err, errno = true, nil, nil
    if dir then ok, err, errno = fs.mkdir(dir) end
    if ok then ok, err, errno = fs.write(path, text) end
    if not ok then return nil, ("ready %s: %s"):format(path, err), errno end
  end
  return true
end

--- Remove the ready files `paths`; nil and the messages of those that could not be.
function M.remove(paths)
  local failed = {}
  for _, path in ipairs(paths) do
    local ok, err = fs.remove(path, { missing_ok = true })
    if not ok then failed[#failed + 1] = ("cannot remove ready file %s: %s"):format(path, err) end
  end
  if #failed > 0 then return nil, table.concat(failed, "; ") end
  return true
end

local function trim(s)
  return s and (s:gsub("%s+$", ""))
end

-- nil, or why the module is not as the ready file says.
local function module_problem(m, sysfs, file)
  local dir = ("%s/module/%s"):format(sysfs, m.name)
  if not fs.exists(dir) then
    return ("module %s is not loaded (%s lists it)"):format(m.name, file)
  end
  if m.srcversion == "none" then return nil end
  local live = trim(fs.read(dir .. "/srcversion"))
  if live ~= m.srcversion then
    return ("module %s is loaded with srcversion %s, not %s as %s says: another build replaced it")
      :format(m.name, live or "none", m.srcversion, file)
  end
end

--- Check that the driver a ready file describes is still loaded: every module
-- it lists loaded (`/sys/module/NAME`) with the same srcversion, in the same boot.
-- @tparam string file the ready file (e.g. `/run/mellanox/drivers/.driver-ready`)
-- @tparam[opt] table o `{ sysfs = "/sys", boot_id = the running boot's id }`
-- @treturn[1] true, table the parsed ready file
-- @treturn[2] nil, string message naming the file, boot or module at fault
function M.live(file, o)
  if type(file) ~= "string" then error("bad argument #1 to 'live' (string expected, got " .. type(file) .. ")", 2) end
  o = o or {}
  local text, err = fs.read(file)
  if not text then return nil, ("not ready: %s"):format(err) end
  local parsed = M.parse(text)
  if #parsed.modules == 0 then return nil, ("%s lists no modules: not a ready file"):format(file) end
  local boot = o.boot_id or sys.boot_id()
  if parsed.fields.boot_id and boot and parsed.fields.boot_id ~= boot then
    return nil, ("%s was written in another boot (%s; this boot is %s): stale"):format(file, parsed.fields.boot_id, boot)
  end
  for _, m in ipairs(parsed.modules) do
    local problem = module_problem(m, o.sysfs or "/sys", file)
    if problem then return nil, problem end
  end
  return true, parsed
end

local USAGE = "usage: drvrun probe.lua [--sysfs DIR] READY_FILE"

--- The health check's command line, `[--sysfs DIR] READY_FILE`: exits 0 and
-- prints one line when the driver is live; 1 with one line naming the module,
-- file or boot at fault; 2 on a usage error.
-- @tparam table args the arguments
-- @tparam[opt] file out where the verdict goes (default: stdout when live, stderr when not)
-- @treturn integer the exit status
function M.probe(args, out)
  local o, files = {}, {}
  local i = 1
  while args[i] do
    if args[i] == "--sysfs" and args[i + 1] then
      o.sysfs, i = args[i + 1], i + 2
    else
      files[#files + 1], i = args[i], i + 1
    end
  end
  if #files ~= 1 or files[1]:sub(1, 1) == "-" then
    io.stderr:write(USAGE, "\n")
    return 2
  end
  local ok, res = M.live(files[1], o)
  if not ok then
    local err = out or io.stderr
    err:write("probe: ", res, "\n")
    return 1
  end
  local say = out or io.stdout
  say:write(("probe: %s %s live: %d modules as %s says\n")
    :format(res.fields.recipe or "driver", res.fields.version or "", #res.modules, files[1]))
  return 0
end

return M
