-- drv.ready and its command line (lib/probe.lua), against a sysfs tree made
-- in a temporary directory: the liveness check of the driver containers.
local probe = require "drv.ready"
local fs = require "drv.fs"
local proc = require "drv.proc"

local BOOT = "6f1c2a9e-0b7d-4c1e-9f1a-2d3e4f5a6b7c"

local function ready_text(modules, boot)
  local lines = { "recipe=ubuntu-ofed", "version=5.9-0.5.6.0", "kernel=6.1.0-56-amd64",
                  "boot_id=" .. (boot or BOOT), "time=2026-11-25T05:00:00Z" }
  for _, m in ipairs(modules) do lines[#lines + 1] = ("module=%s srcversion=%s"):format(m[1], m[2]) end
  return table.concat(lines, "\n") .. "\n"
end

describe("drv.ready", function()
  local dir, sysfs, file
  before_each(function()
    dir = assert(fs.tmpdir("probe"))
    sysfs = dir .. "/sys"
    file = dir .. "/.driver-ready"
    for name, srcversion in pairs { mlx_compat = "A1B2C3", ib_core = "D4E5F6", mlx5_core = false } do
      assert(fs.mkdir(sysfs .. "/module/" .. name))
      if srcversion then assert(fs.write(sysfs .. "/module/" .. name .. "/srcversion", srcversion .. "\n")) end
    end
    assert(fs.write(file, ready_text { { "mlx_compat", "A1B2C3" }, { "ib_core", "D4E5F6" }, { "mlx5_core", "none" } }))
  end)
  after_each(function() fs.remove(dir, { recursive = true }) end)

  it("parses the fields and the module lines of a ready file", function()
    local p = probe.parse(ready_text { { "ib_core", "D4E5F6" }, { "mlx5_ib", "none" } })
    assert.equal("ubuntu-ofed", p.fields.recipe)
    assert.equal(BOOT, p.fields.boot_id)
    assert.same({ { name = "ib_core", srcversion = "D4E5F6" }, { name = "mlx5_ib", srcversion = "none" } }, p.modules)
  end)

  it("is live when every module is loaded with its srcversion, in the same boot", function()
    local ok, p = probe.live(file, { sysfs = sysfs, boot_id = BOOT })
    assert.is_true(ok)
    assert.equal(3, #p.modules)
  end)

  it("names a module that is no longer loaded", function()
    assert(fs.remove(sysfs .. "/module/ib_core", { recursive = true }))
    local ok, err = probe.live(file, { sysfs = sysfs, boot_id = BOOT })
    assert.is_nil(ok)
    assert.equal("module ib_core is not loaded (" .. file .. " lists it)", err)
  end)

  it("names a module replaced by another build (a different srcversion)", function()
    assert(fs.write(sysfs .. "/module/mlx_compat/srcversion", "FFFFFF\n"))
    local ok, err = probe.live(file, { sysfs = sysfs, boot_id = BOOT })
    assert.is_nil(ok)
    assert.equal("module mlx_compat is loaded with srcversion FFFFFF, not A1B2C3 as " .. file
      .. " says: another build replaced it", err)
  end)

  it("names a module that lost its srcversion (the inbox module is back)", function()
    assert(fs.remove(sysfs .. "/module/mlx_compat/srcversion"))
    local _, err = probe.live(file, { sysfs = sysfs, boot_id = BOOT })
    assert.matches("^module mlx_compat is loaded with srcversion none, not A1B2C3", err)
  end)

  it("refuses a ready file written in another boot", function()
    local ok, err = probe.live(file, { sysfs = sysfs, boot_id = "another-boot" })
    assert.is_nil(ok)
    assert.equal(file .. " was written in another boot (" .. BOOT .. "; this boot is another-boot): stale", err)
  end)

  it("is not live without a ready file, or with a file that lists no modules", function()
    local ok, err = probe.live(dir .. "/missing", { sysfs = sysfs, boot_id = BOOT })
    assert.is_nil(ok)
    assert.equal("not ready: " .. dir .. "/missing: No such file or directory", err)
    assert(fs.write(file, "recipe=x\n"))
    ok, err = probe.live(file, { sysfs = sysfs, boot_id = BOOT })
    assert.is_nil(ok)
    assert.equal(file .. " lists no modules: not a ready file", err)
  end)

  it("raises on a bad argument", function()
    assert.has_error(function() probe.live(nil) end, "bad argument #1 to 'live' (string expected, got nil)")
  end)

  it("checks this boot's id by default", function()
    assert(fs.write(file, ready_text({ { "ib_core", "D4E5F6" } }, "not-this-boot")))
    local _, err = probe.live(file, { sysfs = sysfs })
    assert.matches("was written in another boot %(not%-this%-boot; this boot is %x+%-", err)
  end)

  describe("command line (lib/probe.lua, installed as share/drvrun/probe.lua)", function()
    local function run(...)
      return assert(proc.run({ os.getenv("DRVRUN"), "lib/probe.lua", ... }))
    end

    it("exits 0 with one line when the driver is live", function()
      assert(fs.write(file, ready_text({ { "ib_core", "D4E5F6" } }, require("drv.sys").boot_id())))
      local r = run("--sysfs", sysfs, file)
      assert.equal(0, r.status, r.stderr)
      assert.equal("probe: ubuntu-ofed 5.9-0.5.6.0 live: 1 modules as " .. file .. " says\n", r.stdout)
    end)

    it("exits 1 with the reason when it is not", function()
      assert(fs.write(file, ready_text({ { "mlx5_ib", "0A0B0C" } }, require("drv.sys").boot_id())))
      local r = run("--sysfs", sysfs, file)
      assert.equal(1, r.status)
      assert.equal("probe: module mlx5_ib is not loaded (" .. file .. " lists it)\n", r.stderr)
    end)

    it("exits 2 on a usage error", function()
      for _, args in ipairs { {}, { "a", "b" }, { "--sysfs" } } do
        local r = run(table.unpack(args))
        assert.equal(2, r.status)
        assert.equal("usage: drvrun probe.lua [--sysfs DIR] READY_FILE\n", r.stderr)
      end
    end)
  end)
end)
