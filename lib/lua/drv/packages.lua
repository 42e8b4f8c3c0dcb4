--- drv.packages: the distribution's packages a driver container installs when
-- the node lacks them (the running kernel's headers, its modules), by their
-- names on this distribution, with its package tool: apt-get on Debian and
-- Ubuntu, dnf on RHEL and Fedora and their rebuilds.
local M = {}

local distro = require "drv.distro"
local proc = require "drv.proc"

-- Per family (os-release ID, else a word of ID_LIKE): the tool, and the
-- packages of a kernel release's headers and modules.
local FAMILIES = {
  debian = { tool = "apt", headers = "linux-headers-%s", modules = "linux-image-%s" },
  ubuntu = { tool = "apt", headers = "linux-headers-%s", modules = "linux-modules-%s" },
  rhel = { tool = "dnf", headers = "kernel-devel-%s", modules = "kernel-modules-%s" },
  fedora = { tool = "dnf", headers = "kernel-devel-%s", modules = "kernel-modules-%s" },
}

--- The family of the distribution drvrun runs on: its os-release ID when known, else the first
-- word of ID_LIKE that is, else "debian".
-- @tparam[opt] table release os-release (drv.distro.os_release())
function M.family(release)
  release = release or distro.os_release() or {}
  if FAMILIES[release.ID or ""] then return release.ID end
  for like in (release.ID_LIKE or ""):gmatch("%S+") do
    if FAMILIES[like] then return like end
  end
  return "debian"
end

local function family()
  return FAMILIES[M.family()]
end

--- The package of kernel release `kver`'s headers here (linux-headers-K, kernel-devel-K).
function M.kernel_headers(kver)
  return family().headers:format(kver)
end

--- The package of kernel release `kver`'s modules here (linux-image-K on Debian,
-- linux-modules-K on Ubuntu, kernel-modules-K on RHEL).
function M.kernel_modules(kver)
  return family().modules:format(kver)
end

local function run(argv, o)
  local res, err, errno = proc.run(argv, { stderr = "stdout", timeout = o.timeout, interrupt_fd = o.interrupt_fd })
  if res and res.interrupted then return nil, argv[1] .. ": interrupted", "EINTR" end
  return res, err, errno
end

-- The tool's own words for a failure: apt's `E:` line, dnf's `Error:` line, else its last line.
local function why(res, err)
  if not res then return err end
  if res.timed_out then return "timed out" end
  local text = res.stdout
  return text:match("E: ([^\n]*)") or text:match("Error: ([^\n]*)") or text:match("([^\n]+)\n*$")
    or ("exit %s"):format(tostring(res.status or res.signal))
end

local INSTALL = {
  -- apt: a package unknown to stale lists is tried again after one `apt-get update`.
  apt = function(names, o)
    local argv = { "apt-get", "install", "-y", "--no-install-recommends", table.unpack(names) }
    local res, err, errno = run(argv, o)
    if res and res.status ~= 0 and res.stdout:match("Unable to locate package") then
      local upd, uerr, uerrno = run({ "apt-get", "update", "-qq" }, o)
      if not upd then return nil, uerr, uerrno end
      res, err, errno = run(argv, o)
    end
    return res, err, errno
  end,
  dnf = function(names, o)
    return run({ "dnf", "install", "-y", table.unpack(names) }, o)
  end,
}

--- Install packages with this distribution's tool.
-- @tparam table names package names
-- @tparam[opt] table o `{ timeout = seconds, interrupt_fd = fd }` (a readable fd stops the tool: EINTR)
-- @treturn[1] true
-- @treturn[2] nil, the tool's own words, errno
function M.install(names, o)
  o = o or {}
  local res, err, errno = INSTALL[family().tool](names, o)
  if res and res.status == 0 then return true end
  if errno == "EINTR" then return nil, err, errno end
  return nil, why(res, err), errno or "EIO"
end

return M
