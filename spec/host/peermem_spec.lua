-- drv.symvers and drv.peermem against the built fixtures (the OFED and NVIDIA
-- driver containers' roots) and a made-up sysfs saying what is loaded. Loading
-- for real is in spec/guest/peermem_spec.lua.
local symvers = require "drv.symvers"
local peermem = require "drv.peermem"
local kmod = require "drv.kmod"
local fs = require "drv.fs"

local built = fs.realpath("build/fixtures/built")
local kver = require("spec.support.kernel").release
local ofed_root, nvidia_root = built .. "/ofed-root", built .. "/nvidia-root"
local ib_core_ko = ("%s/lib/modules/%s/updates/dkms/ib_core.ko"):format(ofed_root, kver)
local nvidia_ko = ("%s/lib/modules/%s/kernel/drivers/video/nvidia.ko"):format(nvidia_root, kver)
local peer_ko = built .. "/nv_peer_mem/nv_peer_mem.ko"

local function srcversion(path) return assert(kmod.modinfo(path)).srcversion end

-- A sysfs root where `loaded` ({ name = srcversion }) are live modules.
local function fake_sysfs(loaded)
  local root = fs.tmpdir("sysfs")
  for name, sv in pairs(loaded) do
    local m = root .. "/module/" .. name
    assert(fs.mkdir(m .. "/holders"))
    assert(fs.write(m .. "/initstate", "live\n"))
    assert(fs.write(m .. "/refcnt", "0\n"))
    assert(fs.write(m .. "/srcversion", sv .. "\n"))
  end
  return assert(kmod.new { dirname = "/lib/modules/" .. kver, sysfs = root })
end

describe("drv.symvers", function()
  it("reads a Module.symvers", function()
    local syms = assert(symvers.read(ofed_root .. "/usr/src/ofa_kernel/default/Module.symvers"))
    local exported = assert(kmod.symbols(ib_core_ko))
    assert.equal(exported.ib_register_peer_memory_client, syms.ib_register_peer_memory_client.crc)
    assert.matches("ib_core$", syms.ib_register_peer_memory_client.module)
    assert.same({ nil, "/nonexistent: No such file or directory", "ENOENT" }, { symvers.read("/nonexistent") })
  end)

  it("writes a Module.symvers from a module's exports that kbuild and read agree on", function()
    local path = fs.tmpdir("symvers") .. "/nvidia.symvers"
    local exports = assert(kmod.symbols(nvidia_ko))
    assert(symvers.write(path, nvidia_ko, exports))
    local back = assert(symvers.read(path))
    for sym, crc in pairs(exports) do assert.equal(crc, back[sym].crc, sym) end
    local text = fs.read(path)
    assert.matches("^0x%x%x%x%x%x%x%x%x\tnvidia_p2p_dma_map_pages\t", text, nil, false, "sorted by symbol")
    assert.matches("\n0x%x%x%x%x%x%x%x%x\tnvidia_p2p_free_page_table\t" .. nvidia_ko:gsub("%.ko$", ""):gsub("%p", "%%%0")
                   .. "\tEXPORT_SYMBOL\t\n", text, nil, false, "the module column as kbuild writes it: no .ko")
  end)

  it("passes a module built against the CRCs its providers export", function()
    local ok = symvers.check(peer_ko, { ib_core = assert(kmod.symbols(ib_core_ko)),
                                        nvidia = assert(kmod.symbols(nvidia_ko)) })
    assert.is_true(ok)
  end)

  it("names every symbol whose CRC disagrees, with both CRCs", function()
    local exports = assert(kmod.symbols(ib_core_ko))
    local real = exports.ib_register_peer_memory_client
    exports.ib_register_peer_memory_client = real ~ 0x5a5a
    local ok, bad, errno = symvers.check(peer_ko, { ib_core = exports })
    assert.is_nil(ok)
    assert.same({ ("ib_register_peer_memory_client (built against 0x%08x, the loaded ib_core exports 0x%08x)")
                  :format(real, real ~ 0x5a5a) }, bad)
    assert.equal("EINVAL", errno)
  end)

  it("finds the file of a loaded module by its srcversion", function()
    local ctx = fake_sysfs { ib_core = srcversion(ib_core_ko) }
    local dirs = { ofed_root .. "/lib/modules/" .. kver }
    assert.equal(ib_core_ko, symvers.loaded_file(ctx, "ib_core", dirs))
    -- the inbox ib_core in ctx's directory is not the loaded one
    ctx = fake_sysfs { ib_core = "0123456789ABCDEF0123456" }
    local path, err = symvers.loaded_file(ctx, "ib_core", dirs)
    assert.is_nil(path)
    assert.equal(("the file of the loaded ib_core (srcversion 0123456789ABCDEF0123456) is not in /lib/modules/%s, %s")
                 :format(kver, dirs[1]), err)
    assert.same({ nil, "nvidia is not loaded", "ENOENT" }, { symvers.loaded_file(ctx, "nvidia", dirs) })
  end)

  it("finds module files whatever their - or _", function()
    local found = symvers.module_files("nvidia_peermem", { nvidia_root .. "/lib/modules/" .. kver, "/nonexistent" })
    assert.same({ ("%s/lib/modules/%s/kernel/drivers/video/nvidia-peermem.ko"):format(nvidia_root, kver) }, found)
  end)
end)

describe("drv.peermem", function()
  local ofed -- a copy of the OFED root with a ready file, as the OFED recipe leaves it
  before_each(function()
    ofed = fs.tmpdir("ofed-root")
    assert(fs.mkdir(ofed .. "/usr/src"))
    assert(require("drv.proc").run({ "cp", "-a", ofed_root .. "/usr/src/ofa_kernel", ofed .. "/usr/src/" }).status == 0)
    assert(fs.write(ofed .. "/.driver-ready", "recipe=ubuntu-ofed\nmodule=ib_core srcversion="
                    .. srcversion(ib_core_ko) .. "\n"))
  end)

  it("finds OFED's headers and Module.symvers in its root", function()
    local found = assert(peermem.ofed_headers(ofed, kver, "x86_64"))
    assert.equal(("%s/usr/src/ofa_kernel/x86_64/%s"):format(fs.realpath(ofed), kver), found.ofa_kernel)
    assert.equal(found.ofa_kernel .. "/Module.symvers", found.symvers)
    assert.equal(ofed, found.root)
  end)

  it("says where it looked for OFED's headers", function()
    fs.remove(ofed .. "/usr/src/ofa_kernel", { recursive = true })
    local _, err = peermem.ofed_headers(ofed, kver, "x86_64")
    assert.equal(("no Module.symvers in %s/usr/src/ofa_kernel/x86_64/%s, %s/usr/src/ofa_kernel/%s, "
                  .. "%s/usr/src/ofa_kernel/default (OFED_ROOT must be the OFED driver container's root)")
                 :format(ofed, kver, ofed, kver, ofed), err)
  end)

  it("reads what loaded modules export from their files in their roots, naming those it cannot find", function()
    local ctx = fake_sysfs { ib_core = srcversion(ib_core_ko), nvidia = srcversion(nvidia_ko) }
    local exports, missing = peermem.loaded_exports({ { name = "ib_core", root = ofed_root },
                                                      { name = "nvidia", root = nvidia_root },
                                                      { name = "mlx5_ib", root = ofed_root } }, kver, ctx)
    assert.same(assert(kmod.symbols(ib_core_ko)), exports.ib_core)
    assert.same(assert(kmod.symbols(nvidia_ko)), exports.nvidia)
    assert.same({ "mlx5_ib: mlx5_ib is not loaded" }, missing)
  end)

  it("finds NVIDIA in the first root that exists: headers and the loaded module's file", function()
    local ctx = fake_sysfs { nvidia = srcversion(nvidia_ko) }
    local found = assert(peermem.find_nvidia({ "/nonexistent", nvidia_root }, kver, ctx))
    assert.equal(nvidia_root, found.root)
    assert.equal("550.54.14", found.version)
    assert.equal(nvidia_root .. "/usr/src/nvidia-550.54.14", found.src)
    assert.equal(found.src .. "/nvidia", found.include)
    assert.equal(nvidia_ko, found.ko)
  end)

  it("says why NVIDIA is not there yet, naming the paths", function()
    local ctx = fake_sysfs { nvidia = srcversion(nvidia_ko) }
    assert.same({ nil, "none of /run/nvidia/nope, /run/nvidia/nope2 exists: mount the NVIDIA driver container's "
                       .. "root there" }, { peermem.find_nvidia({ "/run/nvidia/nope", "/run/nvidia/nope2" }, kver, ctx) })
    assert.same({ nil, "no " .. ofed .. "/usr/src/nvidia-*/nvidia/nv-p2p.h: the NVIDIA driver is not installed there (yet)" },
                { peermem.find_nvidia({ ofed }, kver, ctx) })
    assert.same({ nil, "the nvidia module is not loaded (the NVIDIA driver container loads it)" },
                { peermem.find_nvidia({ nvidia_root }, kver, fake_sysfs {}) })
  end)

end)
