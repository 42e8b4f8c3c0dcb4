-- drv.compile.kbuild against the installed Debian kernel's headers: compiling
-- needs no running kernel of that release, so it runs here (in the TCG guest
-- kbuild is ~15 times slower); spec/guest/kmod_spec.lua loads what this
-- machine built.
local compile = require "drv.compile"
local fs = require "drv.fs"
local kmod = require "drv.kmod"
local sys = require "drv.sys"

local kver = require("spec.support.kernel").release
local NVIDIA_SRC = "spec/fixtures/nvidia/nvidia"

describe("drv.compile.kbuild", function()
  it("builds a module against the installed headers and describes it", function()
    local src = assert(fs.tmpdir("nvbuild"))
    finally(function() fs.remove(src, { recursive = true }) end)
    for _, f in ipairs { "nvidia.c", "nv-p2p.h", "Kbuild" } do
      assert(fs.write(src .. "/" .. f, assert(fs.read(NVIDIA_SRC .. "/" .. f))))
    end
    local built = assert(compile.kbuild { src = src, kver = kver, log = src .. "/build.log" })
    assert.equal(1, #built.modules)
    local m = built.modules[1]
    assert.equal("nvidia", m.name)
    assert.equal(src .. "/nvidia.ko", m.path)
    assert.matches("^" .. kver:gsub("%p", "%%%0") .. " ", m.vermagic)
    assert.matches("^%x+$", m.srcversion)
    assert.equal(assert(kmod.modinfo(m.path)).srcversion, m.srcversion)
    assert.equal(src .. "/build.log", built.log)
    assert.matches("nvidia.ko", fs.read(built.log), nil, true)
    -- what the guest checks before it loads a module: built for its kernel
    assert.same(m, assert(compile.describe(m.path, kver)))
    local none, err, errno = compile.describe(m.path, "0.0.0-other")
    assert.is_nil(none)
    assert.equal(("%s: built for kernel %s, not 0.0.0-other"):format(m.path, kver), err)
    assert.equal("ENOEXEC", errno)
  end)

  it("fails with the end of the log when the source does not compile", function()
    local src = assert(fs.tmpdir("badbuild"))
    finally(function() fs.remove(src, { recursive = true }) end)
    assert(fs.write(src .. "/Kbuild", "obj-m := bad.o\n"))
    assert(fs.write(src .. "/bad.c", "this is not C;\n"))
    local res, err, errno = compile.kbuild { src = src, kver = kver, jobs = 1 }
    assert.is_nil(res)
    assert.matches("^build badbuild[^\n]* failed %(make exited 2%); last lines of", err)
    assert.matches("bad.c", err, nil, true)
    assert.equal("EIO", errno)
    assert.same({}, compile.find_modules(src))
  end)

  it("names the headers package when the kernel's build directory is missing", function()
    local src = assert(fs.tmpdir("nohdr"))
    finally(function() fs.remove(src, { recursive = true }) end)
    local res, err, errno = compile.kbuild { src = src, kver = "0.0.0-none" }
    assert.is_nil(res)
    assert.equal("kernel build directory /lib/modules/0.0.0-none/build not found: "
      .. "install the headers (linux-headers-0.0.0-none)", err)
    assert.equal("ENOENT", errno)
  end)
end)

describe("drv.compile.depmod with a memo", function()
  local mods = assert(fs.glob("build/fixtures/built/sim-ofed/src/*/*.ko"))

  it("keeps its outputs with what they were made from; the same tree again gets them copied, another tree depmod's",
     function()
    local root = assert(fs.tmpdir("depmod"))
    finally(function() fs.remove(root, { recursive = true }) end)
    local moddir, memo = root .. "/lib/modules/" .. kver, root .. "/memo"
    local a = moddir .. "/updates/x/" .. mods[1]:match("[^/]+$")
    local function install() -- as a fresh container layer gets it: copied, a new time, the same bytes
      assert(fs.mkdir(moddir .. "/updates/x"))
      assert(fs.copy(mods[1], a))
      return { [a] = assert(fs.sha256(mods[1])) }
    end
    assert.is_true(compile.depmod(kver, root, { memo = memo, known = install() }))
    local dep = assert(fs.read(moddir .. "/modules.dep"))
    assert.matches("updates/x/", dep, nil, true)
    for _, f in ipairs(assert(fs.glob(moddir .. "/modules.*"))) do assert(fs.remove(f)) end
    sys.sleep(0.01)
    assert.equal("remembered", compile.depmod(kver, root, { memo = memo, known = install() }))
    assert.equal(dep, fs.read(moddir .. "/modules.dep"))
    assert.is_true(fs.exists(moddir .. "/modules.alias.bin"))
    -- another module in the tree: depmod runs, and its outputs are what the memo keeps now
    assert(fs.mkdir(moddir .. "/extra"))
    assert(fs.copy(mods[2], moddir .. "/extra/" .. mods[2]:match("[^/]+$")))
    assert.is_true(compile.depmod(kver, root, { memo = memo, known = install() }))
    assert.matches("extra/", fs.read(moddir .. "/modules.dep"), nil, true)
    assert.equal(fs.read(moddir .. "/modules.dep"), fs.read(memo .. "/modules.dep"))
    -- a file of the tree changed in place (same path, other size or time) is another input too
    assert(fs.write(moddir .. "/modules.order", "changed\n"))
    assert.is_true(compile.depmod(kver, root, { memo = memo, known = install() }))
  end)
end)
