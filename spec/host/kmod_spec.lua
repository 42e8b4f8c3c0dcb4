-- drv.kmod lookups against the installed Debian kernel's /lib/modules (this
-- machine cannot load modules: loading is specified in spec/guest/kmod_spec.lua).
local kmod = require "drv.kmod"
local fs = require "drv.fs"
local proc = require "drv.proc"

local release = require("spec.support.kernel").release
local dirname = "/lib/modules/" .. release

local function modinfo_field(name, field)
  local r = assert(proc.run({ "modinfo", "-k", release, "-F", field, name }))
  return (r.stdout:gsub("\n$", ""))
end

describe("drv.kmod lookups", function()
  local ctx
  before_each(function() ctx = assert(kmod.new { dirname = dirname }) end)

  it("opens a context on a modules directory", function()
    assert.equal(dirname, ctx:dirname())
    assert.equal("drv.kmod.ctx (" .. dirname .. ")", tostring(ctx))
  end)

  it("fails on a missing modules directory with the fix in the message", function()
    local c, err, errno = kmod.new { dirname = "/nonexistent/modules" }
    assert.is_nil(c)
    assert.equal("/nonexistent/modules: No such file or directory (no modules for this kernel; install them or pass "
                 .. "dirname)", err)
    assert.equal("ENOENT", errno)
  end)

  it("describes mlx5_ib as modinfo does", function()
    local i = assert(ctx:info("mlx5_ib"))
    assert.equal("mlx5_ib", i.name)
    assert.equal(modinfo_field("mlx5_ib", "filename"), i.path)
    assert.matches("^" .. release:gsub("%p", "%%%0") .. " ", i.vermagic)
    local deps = {}
    for d in modinfo_field("mlx5_ib", "depends"):gmatch("[^,]+") do deps[#deps + 1] = (d:gsub("-", "_")) end
    assert.same(deps, i.depends)
    assert.is_nil(i.srcversion, "Debian's inbox modules have no srcversion")
    assert.is_false(i.builtin)
    assert.equal(modinfo_field("mlx5_ib", "license"), i.license)
  end)

  it("lists parameters with type and description", function()
    local params = {}
    for _, p in ipairs(assert(ctx:info("mlx5_core")).parameters) do params[p.name] = p end
    assert.equal("uint", params.debug_mask.type)
    assert.matches("debug mask", params.debug_mask.description)
    assert.equal(modinfo_field("mlx5_core", "parmtype"):match("prof_sel:(%w+)"), params.prof_sel.type)
  end)

  it("normalises dependency names", function()
    assert.truthy(table.concat(assert(ctx:info("mlx5_core")).depends, ","):find("pci_hyperv_intf", 1, true))
  end)

  it("resolves an alias to the module", function()
    local alias = modinfo_field("mlx5_core", "alias"):match("^([^\n]+)")
    assert.same({ "mlx5_core" }, ctx:lookup(alias))
    assert.same({}, ctx:lookup("no-such-alias-xyz"))
  end)

  it("reads soft dependencies", function()
    local i = assert(ctx:info("ext4")) -- modules.softdep: "softdep ext4 pre: crypto-crc32c", an alias
    table.sort(i.softdeps.pre)
    assert.same({ "crc32c_generic", "crc32c_intel" }, i.softdeps.pre)
    assert.same({}, i.softdeps.post)
    assert.same({ pre = {}, post = {} }, assert(ctx:info("mlx5_ib")).softdeps)
  end)

  it("describes a .ko by path, and its symbol versions", function()
    local path = assert(ctx:info("ib_umad")).path
    local i = assert(kmod.modinfo(path))
    assert.equal("ib_umad", i.name)
    assert.same({ "ib_core" }, i.depends)
    local v = assert(kmod.versions(path))
    assert.is_number(v.ib_register_client)
    assert.same({ nil, "/nonexistent.ko: No such file or directory", "ENOENT" }, { kmod.modinfo("/nonexistent.ko") })
  end)

  it("reads the CRCs a .ko exports, which match what its users were built against", function()
    local exported = assert(kmod.symbols(assert(ctx:info("ib_core")).path))
    local wanted = assert(kmod.versions(assert(ctx:info("ib_umad")).path))
    assert.is_true(exported.ib_register_client ~= 0, "the Debian kernel has CONFIG_MODVERSIONS")
    assert.equal(exported.ib_register_client, wanted.ib_register_client)
    assert.is_nil(exported.printk, "only its own exports")
    assert.same({}, assert(kmod.symbols(assert(ctx:info("ib_umad")).path)), "a module that exports nothing")
    assert.same({ nil, "/nonexistent.ko: No such file or directory", "ENOENT" }, { kmod.symbols("/nonexistent.ko") })
    assert.has_error(function() kmod.symbols() end, "bad argument #1 to 'symbols' (string expected, got no value)")
  end)

  it("names an unknown module, the directory and the fix", function()
    assert.same({ nil, "no_such_module: module not found in " .. dirname .. " (run depmod, or check the name)",
                  "ENOENT" }, { ctx:info("no_such_module") })
    assert.same({ nil, "no_such_module: module not found in " .. dirname .. " (run depmod, or check the name)",
                  "ENOENT" }, { ctx:insert("no_such_module") })
  end)

  it("reads live state from a sysfs root", function()
    local root = fs.tmpdir("sysfs")
    local m = root .. "/module/ib_core"
    assert(fs.mkdir(m .. "/holders"))
    for _, h in ipairs { "rdma_cm", "ib_uverbs" } do assert(fs.mkdir(m .. "/holders/" .. h)) end
    assert(fs.write(m .. "/initstate", "live\n"))
    assert(fs.write(m .. "/refcnt", "2\n"))
    assert(fs.write(m .. "/srcversion", "ABC123\n"))
    assert(fs.write(m .. "/taint", "OE\n"))
    local c = assert(kmod.new { dirname = dirname, sysfs = root })
    assert.same({ name = "ib_core", initstate = "live", refcount = 2, holders = { "ib_uverbs", "rdma_cm" },
                  srcversion = "ABC123", taint = "OE" }, c:state("ib-core"))
    assert.same({ nil, "mlx5_ib: not loaded", "ENOENT" }, { c:state("mlx5_ib") })
    assert.same({ name = "ib_core", initstate = "live", srcversion = "ABC123" }, c:state("ib_core", { "srcversion" }))
    assert.same({ name = "ib_core", initstate = "live", refcount = 2, holders = { "ib_uverbs", "rdma_cm" } },
                c:state("ib_core", { "holders", "refcount" }))
    assert.same({ nil, "mlx5_ib: not loaded", "ENOENT" }, { c:state("mlx5_ib", { "srcversion" }) })
    assert.has_error(function() c:state("ib_core", { "srcversoin" }) end,
                     "bad argument #2 to 'state' (unknown field 'srcversoin')")
    fs.remove(root, { recursive = true })
  end)

  it("parses a proc modules table", function()
    local root = fs.tmpdir("proc")
    assert(fs.write(root .. "/modules", "rdma_ucm 40960 0 - Live 0x0\nib_core 450560 2 rdma_ucm,ib_uverbs, Live 0x0 (OE)\n"))
    local c = assert(kmod.new { dirname = dirname, proc = root })
    assert.same({ { name = "rdma_ucm", size = 40960, refcount = 0, holders = {}, state = "Live" },
                  { name = "ib_core", size = 450560, refcount = 2, holders = { "rdma_ucm", "ib_uverbs" }, state = "Live" } },
                c:loaded())
    fs.remove(root, { recursive = true })
  end)

  it("fails to load here with the module and the cause named", function()
    local ok, err, errno = ctx:insert("ib_umad", { dependencies = false })
    assert.is_nil(ok)
    assert.matches("^ib_umad: ", err)
    assert.is_true(errno == "EPERM" or errno == "ENOSYS")
    ok, err = ctx:remove("ib_umad")
    assert.is_nil(ok)
    assert.matches("^ib_umad: ", err)
  end)

  it("inserts and removes each after what it comes after, leaving untried what needs one that failed", function()
    local ok, err, errno, failures = kmod.insert_many {
      { name = "a", path = "/nonexistent/a.ko" }, { name = "b", path = "/nonexistent/b.ko", after = { "a" } },
      { name = "c", path = "/nonexistent/c.ko", after = { "b" } } }
    assert.is_nil(ok)
    assert.equal("ENOENT", errno, "the first real failure, not the untried ones'")
    assert.same({ a = "a: /nonexistent/a.ko: no such file", b = "b: not loaded: it needs a, which did not load",
                  c = "c: not loaded: it needs b, which did not load" }, failures)
    assert.equal("a: /nonexistent/a.ko: no such file; b: not loaded: it needs a, which did not load; "
                 .. "c: not loaded: it needs b, which did not load", err)
    -- delete_module fails here (no module, or no CAP_SYS_MODULE): the module it held is left as it is
    ok, err, errno, failures = kmod.remove_many { "drvrun_holder", { name = "drvrun_held", after = { "drvrun_holder" } } }
    assert.is_nil(ok)
    assert.matches("; drvrun_held: not unloaded", err, nil, true)
    assert.is_true(errno == "ENOENT" or errno == "EPERM" or errno == "ENOSYS", tostring(errno))
    assert.equal("drvrun_held: not unloaded: drvrun_holder, which holds it, was not", failures.drvrun_held)
  end)

  it("changes modules in one graph: a load waits for the unload it names by key, and says which failed", function()
    local ok, err, errno, failures = kmod.change_many {
      { key = "-drvrun_nope", name = "drvrun_nope" },
      { name = "drvrun_nope", path = "/nonexistent/drvrun_nope.ko", after = { "-drvrun_nope" } },
      { name = "drvrun_other", path = "/nonexistent/drvrun_other.ko" } }
    assert.is_nil(ok)
    assert.is_true(errno == "ENOENT" or errno == "EPERM" or errno == "ENOSYS", tostring(errno))
    assert.equal("drvrun_nope: not loaded: drvrun_nope, which it waits for, was not unloaded", failures.drvrun_nope)
    assert.equal("drvrun_other: /nonexistent/drvrun_other.ko: no such file", failures.drvrun_other)
    assert.truthy(failures["-drvrun_nope"])
    assert.matches("drvrun_nope: not loaded: drvrun_nope, which it waits for", err, nil, true)
    local raised, msg = pcall(kmod.change_many, { { name = "a" }, { name = "a", path = "/x" } })
    assert.is_false(raised)
    assert.equal("bad argument #1 to 'drv.kmod.change_many' (item 2: a is named twice)", msg)
  end)

  it("raises on an order that names what is not an item, names one twice, or goes round", function()
    local function raises(message, f, items)
      local ok, err = pcall(f, items)
      assert.is_false(ok)
      assert.equal("bad argument #1 to '" .. (f == kmod.insert_many and "drv.kmod.insert_many" or "drv.kmod.remove_many")
                   .. "' (" .. message .. ")", err)
    end
    raises("item 2: field 'after': z is not an item", kmod.insert_many,
           { { name = "a", path = "/x" }, { name = "b", path = "/y", after = { "z" } } })
    raises("item 2: a is named twice", kmod.remove_many, { "a", "a" })
    raises("item 1: field 'after': a is in a cycle", kmod.remove_many,
           { { name = "a", after = { "b" } }, { name = "b", after = { "a" } }, "c" })
    raises("item 1: field 'after': a is in a cycle", kmod.remove_many, { { name = "a", after = { "a" } } })
    raises("item 1: field 'after': table expected", kmod.remove_many, { { name = "a", after = "b" } })
    raises("item 2: string or table expected, got number", kmod.remove_many, { "a", 7 })
    local ok, err = pcall(kmod.insert_many, { { name = "a", path = "/x" } }, { parallel = -1 })
    assert.is_false(ok)
    assert.equal("bad argument #2 to 'drv.kmod.insert_many' (field 'parallel': 0 (no limit) to 4096 expected)", err)
  end)

  it("closes idempotently", function()
    ctx:close()
    ctx:close()
    assert.matches("closed", tostring(ctx))
    assert.has_error(function() ctx:info("x") end, "calling 'info' on bad self (context is closed)")
  end)
end)
