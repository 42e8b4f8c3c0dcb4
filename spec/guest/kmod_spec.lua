-- guest-timeout: 180 (COMMAND limit of this file's guest boot; the boot took 14-27 s here at load 6-10)
-- drv.kmod against the real kernel of the guest, and loading what drv.compile built on the host.
local kmod = require "drv.kmod"
local compile = require "drv.compile"
local fs = require "drv.fs"
local sys = require "drv.sys"
local guest = require "spec.support.guest"


describe("drv.kmod in a real kernel", function()
  local ctx
  before_each(function()
    guest.unload_all()
    ctx = assert(kmod.new())
  end)
  teardown(function() guest.unload_all() end)

  it("runs the kernel whose modules are installed", function()
    assert.equal("/lib/modules/" .. sys.uname().release, ctx:dirname())
  end)

  it("loads the inbox mlx5_ib with its dependencies", function()
    assert.is_nil(guest.proc_line("mlx5_ib"))
    assert.is_true(ctx:insert("mlx5_ib"))
    local mods = guest.proc_modules()
    for _, n in ipairs { "mlx5_ib", "mlx5_core", "ib_uverbs", "ib_core" } do
      assert.is_table(mods[n], n .. " should be loaded")
    end
    assert.same({ "ib_uverbs", "mlx5_ib" }, mods.ib_core.holders)
    assert.is_true(ctx:insert("mlx5_ib"), "already loaded is success")
  end)

  it("reads live state: holders, refcount, taint and no srcversion for inbox modules", function()
    assert(ctx:insert("mlx5_ib"))
    assert(ctx:insert("rdma_ucm"))
    local st = assert(ctx:state("ib_core"))
    assert.equal("live", st.initstate)
    assert.same(guest.proc_modules().ib_core.holders, st.holders)
    assert.equal(guest.proc_modules().ib_core.refcount, st.refcount)
    assert.is_true(st.refcount >= 4)
    assert.equal("", st.taint)
    assert.is_nil(st.srcversion)
    local loaded = {}
    for _, m in ipairs(ctx:loaded()) do loaded[m.name] = m end
    assert.same(st.holders, (function() local h = loaded.ib_core.holders table.sort(h) return h end)())
    local none, err, errno = ctx:state("ib_isert")
    assert.is_nil(none)
    assert.equal("ib_isert: not loaded", err)
    assert.equal("ENOENT", errno)
  end)

  it("refuses to remove a module in use and names its holders", function()
    assert(ctx:insert("mlx5_ib"))
    local ok, err, errno = ctx:remove("ib_core")
    assert.is_nil(ok)
    assert.equal("ib_core: in use by ib_uverbs, mlx5_ib", err)
    assert.equal("EBUSY", errno)
    assert.truthy(guest.proc_line("ib_core"))
  end)

  it("names the process when only an open device holds a module", function()
    assert(ctx:insert("rdma_ucm"))
    local holder = assert(require("drv.proc").spawn({ "sh", "-c", "exec sleep 60 < /dev/infiniband/rdma_cm" }))
    finally(function() holder:kill("KILL") holder:wait() end)
    guest.wait_for_device_user("/dev/infiniband", 10, "sleep")
    local ok, err, errno = ctx:remove("rdma_ucm")
    assert.is_nil(ok)
    assert.matches("^rdma_ucm: in use %(refcount 1%)", err)
    assert.equal("EBUSY", errno)
    local users = require("drv.stack").device_users("/dev/infiniband")
    assert.equal(1, #users)
    assert.matches("%(sleep%) has /dev/infiniband/rdma_cm open", users[1])
    holder:kill("KILL")
    holder:wait()
    assert.is_true(ctx:remove("rdma_ucm"))
  end)

  it("unloads in holder order", function()
    assert(ctx:insert("mlx5_ib"))
    assert(ctx:insert("rdma_ucm"))
    for _, n in ipairs { "rdma_ucm", "mlx5_ib", "rdma_cm", "mlx5_core", "ib_uverbs", "iw_cm", "ib_cm", "ib_core" } do
      assert.is_true(ctx:remove(n))
      assert.is_nil(guest.proc_line(n), n)
    end
  end)

  it("loads with parameters and rejects a bad one with a clear error", function()
    assert.is_true(ctx:insert("mlx5_core", { options = "debug_mask=1" }))
    assert.equal("1\n", fs.read("/sys/module/mlx5_core/parameters/debug_mask"))
    assert(ctx:remove("mlx5_core"))
    local ok, err, errno = ctx:insert("mlx5_core", { options = "prof_sel=notanumber" })
    assert.is_nil(ok)
    assert.matches("^mlx5_core: invalid parameters", err)
    assert.matches("prof_sel", err, nil, true)
    assert.equal("EINVAL", errno)
    assert.is_nil(guest.proc_line("mlx5_core"))
  end)

  it("refuses a module that is not for this kernel's format", function()
    local bogus = fs.tmpdir("bogus") .. "/bogus.ko"
    assert(fs.write(bogus, ("\0"):rep(4096)))
    local ok, err, errno = kmod.insert_many({ { name = "bogus", path = bogus } })
    assert.is_nil(ok)
    assert.matches("^bogus: invalid module format", err)
    assert.equal("ENOEXEC", errno)
  end)

  it("loads the fixture stack by levels: dependencies, srcversion, out-of-tree taint", function()
    local levels = guest.load_fixture_stack()
    assert.same({ "mlx_compat" }, levels[1])
    local mods = guest.proc_modules()
    assert.same({ "ib_cm", "ib_ipoib", "ib_umad", "ib_uverbs", "iw_cm", "mlx5_ib", "rdma_cm", "rdma_ucm" },
      mods.ib_core.holders)
    for name, path in pairs(guest.fixture_paths()) do
      local st = assert(ctx:state(name))
      assert.equal(assert(kmod.modinfo(path)).srcversion, st.srcversion, name)
      assert.equal("5.9-0.5.6.0", st.version)
      assert.matches("O", st.taint)
    end
    -- and drv.stack plans unloading them by levels, holders first, which the kernel accepts
    local stk, names = {}, {}
    for name, path in pairs(guest.fixture_paths()) do
      stk[name], names[#names + 1] = assert(kmod.modinfo(path)).depends, name
    end
    local p = require("drv.stack").plan(names, require("drv.stack").snapshot(ctx), { deps = stk })
    assert.same({}, p.blockers)
    assert.same({ "mlx_compat" }, p.unload[#p.unload], "the module everything depends on goes last")
    for _, level in ipairs(p.unload) do assert.is_true(kmod.remove_many(level)) end
    for name in pairs(stk) do assert.is_nil(guest.proc_line(name), name) end
  end)

  it("loads and unloads a stack in one call each, every module as soon as what it waits for is done", function()
    local paths, items, names = guest.fixture_paths(), {}, {}
    for name, path in pairs(paths) do
      items[#items + 1] = { name = name, path = path, after = assert(kmod.modinfo(path)).depends }
      names[#names + 1] = name
    end
    table.sort(items, function(a, b) return a.name > b.name end) -- given in no useful order
    assert.is_true(kmod.insert_many(items))
    for name in pairs(paths) do assert.truthy(guest.proc_line(name), name) end
    local live = require("drv.stack").snapshot(assert(kmod.new()))
    local unload = {}
    for _, name in ipairs(names) do unload[#unload + 1] = { name = name, after = live[name].holders } end
    assert.is_true(kmod.remove_many(unload))
    for name in pairs(paths) do assert.is_nil(guest.proc_line(name), name) end
  end)

  it("swaps the inbox stack for the fixture stack in one graph: loads begin while unloads go on", function()
    assert(ctx:insert("mlx5_ib"))
    local live = require("drv.stack").snapshot(assert(kmod.new()))
    local paths, items = guest.fixture_paths(), {}
    for _, name in ipairs({ "mlx5_ib", "mlx5_core", "ib_uverbs", "ib_core" }) do
      local after = {}
      for _, h in ipairs(live[name].holders) do after[#after + 1] = "-" .. h end
      items[#items + 1] = { key = "-" .. name, name = name, after = after }
    end
    for name, path in pairs(paths) do
      local after = assert(kmod.modinfo(path)).depends
      if live[name] then after[#after + 1] = "-" .. name end
      items[#items + 1] = { name = name, path = path, after = after }
    end
    assert.is_true(kmod.change_many(items, { parallel = 2 }))
    for name, path in pairs(paths) do
      assert.equal(assert(kmod.modinfo(path)).srcversion, assert(ctx:state(name)).srcversion, name)
    end
  end)

  it("leaves a load untried when the unload it waits for fails, and names both", function()
    local paths = guest.fixture_paths()
    local ok, err, errno, failures = kmod.change_many({ { key = "-mlx_compat", name = "mlx_compat" },
      { name = "mlx_compat", path = paths.mlx_compat, after = { "-mlx_compat" } } })
    assert.is_nil(ok, err)
    assert.equal("mlx_compat: not loaded", failures["-mlx_compat"])
    assert.equal("mlx_compat: not loaded: mlx_compat, which it waits for, was not unloaded", failures.mlx_compat)
    assert.equal("ENOENT", errno)
    assert.is_nil(guest.proc_line("mlx_compat"))
  end)

  it("leaves untried what needs a module that did not load", function()
    local paths = guest.fixture_paths()
    local ok, err, errno, failures = kmod.insert_many({ { name = "ib_core", path = paths.ib_core },
                                                        { name = "ib_umad", path = paths.ib_umad, after = { "ib_core" } } })
    assert.is_nil(ok)
    assert.matches("^ib_core: unknown symbol", failures.ib_core, "mlx_compat is not loaded")
    assert.equal("ib_umad: not loaded: it needs ib_core, which did not load", failures.ib_umad)
    assert.equal("ENOENT", errno)
    assert.matches("; ib_umad: not loaded", err, nil, true)
    assert.is_nil(guest.proc_line("ib_umad"))
  end)

  it("reports every failure of a concurrent level", function()
    local paths = guest.fixture_paths()
    local ok, err, errno, failures = kmod.insert_many({ { name = "ib_core", path = paths.ib_core },
                                                        { name = "ib_umad", path = paths.ib_umad } })
    assert.is_nil(ok)
    assert.matches("ib_core: unknown symbol", failures.ib_core)
    assert.matches("ib_umad: unknown symbol", failures.ib_umad)
    assert.equal("ENOENT", errno)
    assert.matches("; ", err)
  end)
end)

-- Compiling is tested on the host (spec/host/compile_spec.lua: kbuild is ~15x slower
-- under TCG); here, loading what `make fixtures` compiled there.
describe("a module built on the host", function()
  before_each(function() guest.unload_all() end)
  teardown(function() guest.unload_all() end)

  it("is for the running kernel and loads with the srcversion it was built with", function()
    local path = ("%s/nvidia-root/lib/modules/%s/kernel/drivers/video/nvidia.ko"):format(guest.built, sys.uname().release)
    local m = assert(compile.describe(path, sys.uname().release))
    assert.equal("nvidia", m.name)
    assert.matches("^%x+$", m.srcversion)
    assert.is_true(kmod.insert_many({ { name = m.name, path = m.path } }))
    local st = assert(kmod.new():state("nvidia"))
    assert.equal(m.srcversion, st.srcversion)
    assert.matches("O", st.taint)
  end)
end)
