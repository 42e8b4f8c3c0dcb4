-- Helpers for specs that run in the real-kernel guest (spec/vm/run).
local kmod = require "drv.kmod"
local fs = require "drv.fs"
local graph = require "drv.graph"
local stack = require "drv.stack"
local sys = require "drv.sys"

local M = {}

M.fixtures = (fs.realpath("build/fixtures") or "build/fixtures")
M.built = M.fixtures .. "/built"

--- The modules loaded now, from /proc/modules: `{ [name] = { refcount, holders } }`.
function M.proc_modules()
  local mods = {}
  for line in io.lines("/proc/modules") do
    local name, refcount, holders = line:match("^(%S+) %d+ (%d+) (%S+)")
    local hs = {}
    for h in holders:gmatch("[^,%-]+") do hs[#hs + 1] = h end
    table.sort(hs)
    mods[name] = { refcount = tonumber(refcount), holders = hs }
  end
  return mods
end

--- The /proc/modules line of a module, or nil.
function M.proc_line(name)
  for line in io.lines("/proc/modules") do
    if line:match("^" .. name:gsub("%p", "%%%0") .. " ") then return line end
  end
end

M.RDMA = { "irdma", "mlxdevm", "mlx_compat", "ib_core", "ib_uverbs", "ib_umad", "ib_cm", "iw_cm", "rdma_cm", "rdma_ucm",
           "ib_ipoib", "mlx5_core", "mlx5_ib", "nv_peer_mem", "nvidia_peermem", "nvidia", "rpcrdma", "ib_isert",
           "mlxfw", "psample", "pci_hyperv_intf" }

--- Unload every RDMA-related module (inbox or fixture), holders first.
function M.unload_all()
  assert(stack.unload_all(assert(kmod.new()), M.RDMA))
  for _, n in ipairs(M.RDMA) do
    assert(not M.proc_line(n), n .. " is still loaded")
  end
end

--- The built fixture .ko files: `{ [name] = path }`.
function M.fixture_paths(tree)
  local paths = {}
  for _, p in ipairs(fs.glob(M.built .. "/" .. (tree or "sim-ofed") .. "/src/*/*.ko")) do
    paths[p:match("([^/]+)%.ko$")] = p
  end
  return paths
end

--- Poll `check()` every 50 ms until it is true (true), the deadline passes
-- or process `p` (optional) has ended (false).
function M.wait_until(check, timeout, p)
  local deadline = sys.monotonic() + timeout
  while sys.monotonic() < deadline do
    if check() then return true end
    if p and not p:running() then return false end
    sys.sleep(0.05)
  end
  return false
end

--- Wait until a process has a device under `devdir` open (a holder just
-- spawned, under emulation, may take a while to get there); with `comm`, a
-- process of that name: `sh -c "exec sleep 60 < DEV"` holds DEV as sh until
-- it has become sleep.
function M.wait_for_device_user(devdir, timeout, comm)
  local function held()
    for _, user in ipairs(stack.device_users(devdir)) do
      if not comm or user:find(" (" .. comm .. ") ", 1, true) then return true end
    end
    return false
  end
  assert(M.wait_until(held, timeout or 10),
    ("no process%s opened a device under %s"):format(comm and " named " .. comm or "", devdir))
end

--- Load the fixture OFED stack (`paths`: default the fixture_paths()) by
-- dependency levels; returns the levels.
function M.load_fixture_stack(paths)
  local deps = {}
  paths = paths or M.fixture_paths()
  for name, path in pairs(paths) do deps[name] = assert(kmod.modinfo(path)).depends end
  local levels = assert(graph.levels(deps))
  assert(stack.load(levels, paths))
  return levels
end

return M
