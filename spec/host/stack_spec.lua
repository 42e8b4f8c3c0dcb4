-- Reload planning over a snapshot of live module state. The snapshot is data in
-- the shape drv.kmod's loaded() returns; the real kernel is exercised by the guest specs.
local stack = require "drv.stack"

local STACK = {
  mlx_compat = {}, ib_core = { "mlx_compat" }, ib_uverbs = { "ib_core" }, ib_umad = { "ib_core" },
  ib_cm = { "ib_core" }, iw_cm = { "ib_core" }, rdma_cm = { "ib_cm", "iw_cm", "ib_core" },
  rdma_ucm = { "rdma_cm", "ib_uverbs" }, mlx5_core = { "mlx_compat" }, mlx5_ib = { "mlx5_core", "ib_core", "ib_uverbs" },
}

local NAMES = {}
for name in pairs(STACK) do NAMES[#NAMES + 1] = name end
table.sort(NAMES)

-- The inbox stack as /proc/modules shows it with mlx5_ib and rdma_ucm loaded.
local function inbox()
  return {
    ib_core = { refcount = 7, holders = { "rdma_ucm", "ib_uverbs", "ib_umad", "rdma_cm", "iw_cm", "ib_cm", "mlx5_ib" } },
    ib_uverbs = { refcount = 2, holders = { "rdma_ucm", "mlx5_ib" } },
    ib_umad = { refcount = 0, holders = {} },
    ib_cm = { refcount = 1, holders = { "rdma_cm" } },
    iw_cm = { refcount = 1, holders = { "rdma_cm" } },
    rdma_cm = { refcount = 1, holders = { "rdma_ucm" } },
    rdma_ucm = { refcount = 0, holders = {} },
    mlx5_core = { refcount = 1, holders = { "mlx5_ib" } },
    mlx5_ib = { refcount = 0, holders = {} },
    mlxfw = { refcount = 1, holders = { "mlx5_core" } },
  }
end

describe("drv.stack.plan", function()
  it("plans the unload from the names alone; the load levels need the dependencies (known once built)", function()
    local p = stack.plan(NAMES, inbox())
    assert.same({ { "ib_umad", "mlx5_ib", "rdma_ucm" }, { "ib_uverbs", "mlx5_core", "rdma_cm" }, { "ib_cm", "iw_cm" },
                  { "ib_core" } }, p.unload)
    assert.is_nil(p.load)
    assert.same({ "ib_cm", "ib_core", "ib_umad", "ib_uverbs", "iw_cm", "mlx5_core", "mlx5_ib", "rdma_cm", "rdma_ucm" },
                p.loaded)
  end)

  it("unloads holders first and loads dependencies first, by levels", function()
    local p = stack.plan(NAMES, inbox(), { deps = STACK })
    assert.same({}, p.blockers)
    assert.same({ { "ib_umad", "mlx5_ib", "rdma_ucm" }, { "ib_uverbs", "mlx5_core", "rdma_cm" }, { "ib_cm", "iw_cm" },
                  { "ib_core" } }, p.unload)
    assert.same({ { "mlx_compat" }, { "ib_core", "mlx5_core" }, { "ib_cm", "ib_umad", "ib_uverbs", "iw_cm" },
                  { "mlx5_ib", "rdma_cm" }, { "rdma_ucm" } }, p.load)
  end)

  it("blocks when a module outside the stack uses it, naming both", function()
    local live = inbox()
    live.rpcrdma = { refcount = 0, holders = {} }
    table.insert(live.rdma_cm.holders, "rpcrdma")
    live.rdma_cm.refcount = 2
    local p = stack.plan(NAMES, live, { deps = STACK })
    assert.same({ "rpcrdma uses rdma_cm and is not part of the stack" }, p.blockers)
  end)

  it("unloads modules the caller allows (auxiliary, peer memory) with the stack", function()
    local live = inbox()
    live.nv_peer_mem = { refcount = 0, holders = {} }
    table.insert(live.ib_core.holders, "nv_peer_mem")
    live.ib_core.refcount = 8
    local p = stack.plan(NAMES, live, { also = { "nv_peer_mem" }, deps = STACK })
    assert.same({}, p.blockers)
    assert.same({ "ib_umad", "mlx5_ib", "nv_peer_mem", "rdma_cm" }, { p.unload[1][1], p.unload[1][2], p.unload[1][3],
                 p.unload[2][3] })
  end)

  it("blocks when references other than modules hold a module", function()
    local live = inbox()
    live.ib_uverbs.refcount = 3 -- a process has /dev/infiniband/uverbs0 open
    local p = stack.plan(NAMES, live, { proc_root = "/nonexistent", deps = STACK })
    assert.same({ "ib_uverbs is in use (1 reference besides modules)" }, p.blockers)
  end)

  it("plans nothing to unload when none of the stack is loaded", function()
    local p = stack.plan(NAMES, {}, { deps = STACK })
    assert.same({}, p.unload)
    assert.same({ { "mlx_compat" }, { "ib_core", "mlx5_core" }, { "ib_cm", "ib_umad", "ib_uverbs", "iw_cm" },
                  { "mlx5_ib", "rdma_cm" }, { "rdma_ucm" } }, p.load)
    assert.same({}, p.blockers)
  end)
end)
