-- Running recipes/ubuntu-ofed.lua in the guest as a driver container would:
-- in its own mount namespace, with /run/mellanox/drivers shared with the host.
local proc = require "drv.proc"
local fs = require "drv.fs"
local sys = require "drv.sys"
local httpd = require "spec.support.httpd"
local guest = require "spec.support.guest"

local M = {}

M.EXPOSE = "/run/mellanox/drivers"
M.READY = { "/.driver-ready", M.EXPOSE .. "/.driver-ready" }
M.BLACKLIST = "/run/modprobe.d/drvrun-ubuntu-ofed.conf"
M.JOURNAL = "/run/drvrun/ubuntu-ofed.journal"
M.NETWORK = "/run/drvrun/ubuntu-ofed.network" -- the saved network configuration, during a reload
-- OFED's net naming udev files, in the guest's own udev directories while a run is up
M.UDEV_RULES_DIR, M.UDEV_HELPER_DIR = "/lib/udev/rules.d", "/etc/infiniband"
M.UDEV_FILES = { M.UDEV_RULES_DIR .. "/82-net-setup-link.rules", M.UDEV_HELPER_DIR .. "/vf-net-link-name.sh" }
M.STACK = { "mlx_compat", "ib_core", "ib_uverbs", "ib_umad", "ib_cm", "iw_cm", "rdma_cm", "rdma_ucm", "ib_ipoib",
            "mlxdevm", "mlx5_core", "mlx5_ib" }

function M.sha_of(name)
  for line in io.lines(guest.fixtures .. "/SHA256SUMS") do
    local sha, file = line:match("^(%x+)%s+(%S+)$")
    if file == name then return sha end
  end
  error("no checksum for " .. name)
end

--- The bundles, served over HTTP on 127.0.0.1, and a private copy of the build cache.
function M.setup()
  local env = { server = httpd.start(guest.fixtures) }
  assert(fs.mkdir("/run/modprobe.d"))
  M.install_once()
  env.bundle = assert(fs.glob(guest.fixtures .. "/sim-ofed-[0-9]*.tgz"))[1]:match("[^/]+$")
  env.broken = assert(fs.glob(guest.fixtures .. "/sim-ofed-broken-*.tgz"))[1]:match("[^/]+$")
  env.sha, env.broken_sha = M.sha_of(env.bundle), M.sha_of(env.broken)
  M.share_expose()
  return env
end

--- The "host" side of the exposed path, as with mountPropagation: Bidirectional: a
-- container's rbind there is seen here.
function M.share_expose()
  assert(fs.mkdir(M.EXPOSE))
  local mount = require "drv.mount"
  if not mount.is_mountpoint(M.EXPOSE) then
    assert(mount.bind(M.EXPOSE, M.EXPOSE))
    assert(mount.propagation(M.EXPOSE, "shared"))
  end
end

--- A fresh copy of a build cache (`from`, default build/cache) without the
-- downloaded sources, so the bundle is fetched again.
function M.fresh_cache(from)
  local cache = fs.tmpdir("cache")
  assert(proc.run({ "cp", "-a", fs.realpath(from or "build/cache") .. "/ubuntu-ofed", cache }).status == 0)
  fs.remove(cache .. "/ubuntu-ofed/sources", { recursive = true, missing_ok = true })
  return cache
end

M.running = {}

--- Start `recipe` as a driver container would be: in its own mount namespace
-- (mounts propagate from this one), with environment variables `vars` added;
-- returns the process and its log path.
function M.start_recipe(recipe, args, vars)
  local log = os.tmpname()
  local argv = { "sh", "-c", 'exec "$@" > "$0" 2>&1', log,
                 "unshare", "-m", "--propagation", "unchanged", os.getenv("DRVRUN"), recipe }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local p = assert(proc.spawn(argv, { env = vars }))
  M.running[#M.running + 1] = p
  return p, log
end

-- Stop a run started by start_recipe with SIGTERM; it must exit 0. Returns its log.
function M.stop_recipe(p, log)
  local luassert = require "luassert" -- busted's assert, which a spec's global is
  luassert.is_true(sys.kill(p:pid(), "TERM"))
  local r = assert(p:wait(300))
  local text = fs.read(log)
  luassert.equal(0, r.status, text)
  return text
end

--- Start the OFED recipe; returns the process and its log path. Ready files
-- must not exist, unless `after_crash` (a killed run left them).
function M.start(env, args, after_crash, vars)
  for _, f in ipairs(after_crash and {} or M.READY) do assert(not fs.exists(f), "stale ready file " .. f) end
  local argv = { "OFED_URL=" .. env.server:url(env.bundle), "OFED_SHA256=" .. env.sha,
                 "BLACKLIST_FILE=" .. M.BLACKLIST, "CACHE_DIR=" .. (env.cache or M.fresh_cache()),
                 "LOCK_TIMEOUT=30", "UDEV_RULES_DIR=" .. M.UDEV_RULES_DIR, "UDEV_HELPER_DIR=" .. M.UDEV_HELPER_DIR }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  return M.start_recipe("recipes/ubuntu-ofed.lua", argv, vars)
end

--- Stop whatever a failed spec left running (TERM, so it cleans up, then KILL).
function M.cleanup()
  for _, p in ipairs(M.running) do
    if p:running() then
      p:kill("TERM")
      if not p:wait(60) then p:kill("KILL") p:wait() end
    end
  end
  M.running = {}
  for _, f in ipairs(M.READY) do fs.remove(f, { missing_ok = true }) end
end

--- Run the recipe to completion (for runs that fail or do not wait); with
-- `others_ready`, ready files of another run may exist.
function M.run(env, args, others_ready)
  local p, log = M.start(env, args, others_ready)
  local r = assert(p:wait(600))
  return r.status, fs.read(log) or ""
end

--- Wait until the log at `log` has `text` or the process ends.
function M.wait_for_log(log, text, p, timeout)
  return guest.wait_until(function() return (fs.read(log) or ""):find(text, 1, true) ~= nil end, timeout or 300, p)
end

--- Wait until path exists or the process ends.
function M.wait_for(path, p, timeout)
  return guest.wait_until(function() return fs.exists(path) end, timeout or 300, p)
end

--- State that must be unchanged after a failed run.
function M.assert_host_as_it_was(before)
  local mods = guest.proc_modules()
  for _, n in ipairs(before) do
    assert(mods[n], n .. " must still be loaded")
    assert(fs.read("/sys/module/" .. n .. "/taint") == "\n", n .. " must be the inbox module")
  end
  for _, f in ipairs(M.READY) do assert(not fs.exists(f), f .. " must not exist") end
  assert(not fs.exists(M.BLACKLIST), "no blacklist may be left behind")
  for _, f in ipairs(M.UDEV_FILES) do assert(not fs.exists(f), "no udev file may be left behind: " .. f) end
  assert(not fs.exists(M.NETWORK), "no saved network configuration may be left behind")
  assert(not fs.exists(M.EXPOSE .. "/etc"), "nothing may be mounted at " .. M.EXPOSE)
end

local KVER = sys.uname().release
local MODULES = "/lib/modules/" .. KVER
local INSTALLED = MODULES .. "/updates/ubuntu-ofed"

-- The files of the simulated stack's build in the build cache (tools/fill-cache).
local function cached_build()
  local builds = fs.realpath("build/cache") .. "/ubuntu-ofed/" .. KVER .. "/builds"
  local id = assert(fs.read(builds .. "/recent"), "no build in build/cache: run make build/cache/.stamp"):match("%x+")
  return assert(fs.glob(builds .. "/" .. id .. "/*.ko"))
end

--- Install the simulated stack's build from the cache under updates/ as a run
-- of the recipe installs it, and make the module index once: depmod reads every
-- module of the kernel, most of a minute under emulation. The runs then find
-- their files installed and run no depmod; reset_modules puts this state back.
function M.install_once()
  if M.index_backup then return end
  assert(fs.mkdir(INSTALLED))
  for _, ko in ipairs(cached_build()) do assert(fs.copy(ko, INSTALLED .. "/" .. ko:match("[^/]+$"))) end
  assert(proc.run({ "depmod", KVER }).status == 0)
  M.index_backup = fs.tmpdir("modindex")
  assert(proc.run({ "sh", "-c", 'cp -a "$1"/modules.* "$0"/', M.index_backup, MODULES }).status == 0)
end

--- Unload every RDMA module and put the installed stack and the module index
-- back as install_once left them (a spec may install other files).
function M.reset_modules()
  guest.unload_all()
  assert(fs.remove(MODULES .. "/updates", { recursive = true, missing_ok = true }))
  assert(fs.mkdir(INSTALLED))
  for _, ko in ipairs(cached_build()) do assert(fs.copy(ko, INSTALLED .. "/" .. ko:match("[^/]+$"))) end
  assert(proc.run({ "sh", "-c", 'cp -a "$0"/modules.* "$1"/', M.index_backup, MODULES }).status == 0)
end

--- The inbox modules `names` and what they need, loaded from the kernel's own
-- files (by path: the module index names OFED's files for these names).
function M.load_kernel_modules(names)
  local kmod, stack = require "drv.kmod", require "drv.stack"
  local inbox = stack.inbox(assert(kmod.new()), names)
  assert(stack.load(inbox.levels, inbox.paths))
  for _, n in ipairs(names) do assert(guest.proc_line(n), n .. " loaded") end
end

--- The inbox stack loaded from the kernel's own files and in use (rdma_ucm holds rdma_cm,
-- mlx5_ib holds mlx5_core...), on whatever is loaded now: its modules.
function M.use_inbox()
  M.load_kernel_modules { "mlx5_ib", "rdma_ucm", "ib_umad" }
  return { "mlx5_ib", "mlx5_core", "rdma_ucm", "rdma_cm", "ib_uverbs", "ib_core", "ib_umad" }
end

--- Load the inbox stack, in use, after a reset of the modules (reset_modules): its modules.
function M.load_inbox()
  M.reset_modules()
  return M.use_inbox()
end

return M
