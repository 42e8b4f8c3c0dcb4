-- A kernel upgrade in the guest, with this machine's two kernels (Makefile's DEB_TEST
-- installs a second one): the guest boots one, a node's host gets the other installed
-- (its modules, then or later its headers), and driver containers see that host as a
-- DaemonSet mounts it (HOST_ROOT: its lib/modules and its usr).
--
-- The guest's root is this machine's, with every installed kernel's modules and
-- headers; a driver container has the running kernel's only (its image, and the host's
-- /lib/modules for the running kernel). So the other kernel is hidden here (`hide`)
-- and shows only on the host's side (`host`, `install`).
local fs = require "drv.fs"
local mount = require "drv.mount"
local sys = require "drv.sys"
local kernels = require "drv.kernels"
local kernel = require "spec.support.kernel"
local ofed = require "spec.support.ofed"
local guest = require "spec.support.guest"

local M = {}

M.running = sys.uname().release

--- The other kernel installed on this machine (the newest that is not running).
function M.other()
  for i = #kernel.installed, 1, -1 do
    if kernel.installed[i] ~= M.running then return kernel.installed[i] end
  end
  error("only one kernel is installed here (" .. M.running .. "): the upgrade needs a second one; make deps "
        .. "installs it (Makefile's UPGRADE_KVER)")
end

--- The kernel image of release `kver` (for a reboot into it: spec/vm/run's DRVRUN_VM_REBOOT).
function M.image(kver)
  return "/boot/vmlinuz-" .. kver
end

-- The directories that hold kernel `kver` here (as host paths under `root`, default /):
-- its header trees (what /lib/modules/K/build and source name), then its modules directory.
local function kernel_dirs(kver, root)
  local dirs, seen = {}, {}
  for _, link in ipairs { "build", "source" } do
    local under, host = kernels.resolve(root or "/", ("/lib/modules/%s/%s"):format(kver, link))
    if fs.exists(under) and not seen[host] then
      seen[host] = true
      dirs[#dirs + 1] = host
    end
  end
  return dirs
end

local function cover(dir)
  if not mount.is_mountpoint(dir) then assert(mount.mount("hidden", dir, "tmpfs", { options = "mode=0755" })) end
end

--- Hide kernel `kver` from this system: its header trees and modules directory under
-- empty file systems, as in a container that has the running kernel's only.
function M.hide(kver)
  for _, dir in ipairs(kernel_dirs(kver)) do cover(dir) end
  cover(assert(fs.realpath("/lib/modules")) .. "/" .. kver)
end

--- A host's root as a DaemonSet mounts it under HOST_ROOT: lib/modules, empty until
-- `install`, and usr, this machine's /usr as it is on disk (what `hide` covered shows).
-- It is a shared mount: what `install` mounts under it later is seen in the mount namespace
-- of a container started before (ofed.start_recipe's), as a host's new files are through
-- the DaemonSet's hostPath mounts.
function M.host()
  local root = assert(fs.tmpdir("host"))
  assert(mount.bind(root, root))
  assert(mount.propagation(root, "shared"))
  assert(fs.mkdir(root .. "/lib/modules"))
  assert(fs.mkdir(root .. "/usr"))
  assert(mount.bind("/usr", root .. "/usr"))
  return root
end

--- The node as booted on the running kernel: kernel `other` hidden in this container, a
-- host root (`host`) with the running kernel installed. Returns that root.
function M.node(other)
  M.hide(other)
  local root = M.host()
  M.install(root, M.running)
  return root
end

--- Install kernel `kver` on the host at `root`: its modules, and its headers unless
-- `headers` is false (they come later, with `install_headers`).
function M.install(root, kver, headers)
  local dir = root .. "/lib/modules/" .. kver
  assert(fs.mkdir(dir))
  assert(mount.bind(root .. "/usr/lib/modules/" .. kver, dir))
  if headers == false then
    for _, tree in ipairs(kernel_dirs(kver, root)) do cover(root .. tree) end
  end
end

--- The headers of kernel `kver` installed on the host at `root` (after `install(..., false)`):
-- every tree `install` covered (Debian's arch tree and the common one its Makefile includes).
function M.install_headers(root, kver)
  for _, tree in ipairs(kernel_dirs(kver, root)) do
    if mount.is_mountpoint(root .. tree) then assert(mount.umount(root .. tree)) end
  end
end

--- The arguments of a driver container of the OFED recipe seeing host `host`, with its
-- build cache at `cache` and its root's files (ROOT) in a fresh directory.
function M.args(o)
  local args = { "OFED_URL=file://" .. o.bundle, "OFED_SHA256=" .. o.sha, "CACHE_DIR=" .. o.cache,
                 "ROOT=" .. assert(fs.tmpdir("root")), "HOST_ROOT=" .. o.host, "BLACKLIST_FILE=" .. ofed.BLACKLIST,
                 "UDEV_RULES_DIR=" .. ofed.UDEV_RULES_DIR, "UDEV_HELPER_DIR=" .. ofed.UDEV_HELPER_DIR,
                 "LOCK_TIMEOUT=60", "WATCH_INTERVAL=1" }
  for _, a in ipairs(o.extra or {}) do args[#args + 1] = a end
  return args
end

--- The inbox stack, loaded and in use, from the kernel's own files: its modules.
function M.load_inbox()
  guest.unload_all()
  return ofed.use_inbox()
end

return M
