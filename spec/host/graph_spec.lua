local graph = require "drv.graph"

describe("drv.graph.levels", function()
  it("puts every module after its dependencies, independent ones together", function()
    local levels = assert(graph.levels {
      mlx_compat = {}, ib_core = { "mlx_compat" }, ib_umad = { "ib_core" }, ib_uverbs = { "ib_core" },
      mlx5_core = { "mlx_compat" }, mlx5_ib = { "mlx5_core", "ib_core", "ib_uverbs" },
    })
    assert.same({ { "mlx_compat" }, { "ib_core", "mlx5_core" }, { "ib_umad", "ib_uverbs" }, { "mlx5_ib" } }, levels)
  end)

  it("ignores edges to names outside the graph", function()
    assert.same({ { "a", "b" } }, graph.levels { a = { "kernel_thing" }, b = {} })
  end)

  it("names a cycle", function()
    local levels, err = graph.levels { a = { "b" }, b = { "c" }, c = { "a" } }
    assert.is_nil(levels)
    assert.equal("dependency cycle: a -> b -> c -> a", err)
  end)

  it("flattens levels in order", function()
    assert.same({ "a", "b", "c" }, graph.flatten { { "a" }, { "b", "c" } })
  end)
end)

describe("drv.graph.closure", function()
  it("follows holders transitively", function()
    local holders = { ib_core = { "rdma_cm", "mlx5_ib" }, rdma_cm = { "rdma_ucm" }, rdma_ucm = {}, mlx5_ib = {} }
    local set = graph.closure({ "ib_core" }, function(n) return holders[n] end)
    assert.same({ "ib_core", "mlx5_ib", "rdma_cm", "rdma_ucm" }, graph.sorted(set))
  end)
end)

describe("drv.graph.chains", function()
  it("weighs the heaviest chain each node heads", function()
    -- ib_core <- rdma_cm <- rdma_ucm, ib_core <- ib_umad; mlx_compat under both
    local edges = { mlx_compat = {}, ib_core = { "mlx_compat" }, rdma_cm = { "ib_core" }, rdma_ucm = { "rdma_cm" },
                    ib_umad = { "ib_core" } }
    local w = { mlx_compat = 1, ib_core = 5, rdma_cm = 2, rdma_ucm = 1, ib_umad = 7 }
    assert.same({ mlx_compat = 13, ib_core = 12, rdma_cm = 3, rdma_ucm = 1, ib_umad = 7 },
                graph.chains(edges, function(n) return w[n] end))
  end)
end)
