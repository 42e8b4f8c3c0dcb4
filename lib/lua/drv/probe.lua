--- drv.probe: is the driver still what its ready file says? For health checks of driver containers.
--
-- A recipe's ready file lists every module of its stack with the srcversion
-- it verified at load time (`module=NAME srcversion=X`, `none` for a module
-- without one) and the boot it was written in (`boot_id=`). `live` compares
-- that with the running kernel: each module must still be loaded (`/sys/module/NAME`)
-- with the same srcversion, in the same boot. It fails when someone unloaded
-- or replaced a module behind the container's back, or when the file is stale.
--
-- The command-line form, for a Kubernetes exec probe or a Docker HEALTHCHECK
-- (installed as `PREFIX/share/drvrun/probe.lua`):
--
--   drvrun /usr/local/share/drvrun/probe.lua /run/mellanox/drivers/.driver-ready
--
-- exits 0 and prints one line when the driver is live; exits 1 with one line
-- naming the module, file or boot at fault; 2 on a usage error.
local M = {}

local fs = require "drv.fs"
local sys = require "drv.sys"

--- Parse the text of a ready file.
-- @tparam string text
-- @treturn table `{ fields = { recipe = "ubuntu-ofed", boot_id = "…", … }, modules = { { name =, srcversion = }… } }`
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

--- Check that the driver a ready file describes is still loaded.
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

--- The command line: `[--sysfs DIR] READY_FILE`; returns the exit status.
-- @tparam table args the arguments
-- @tparam[opt] file out where the verdict goes (default: stdout when live, stderr when not)
-- @treturn integer 0 live, 1 not live, 2 usage error
function M.main(args, out)
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
