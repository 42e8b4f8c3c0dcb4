-- guest-timeout: 1500 (COMMAND limit of this file's guest boot; it took 315 s and 420 s here at load 9-19, the build 260-330 s)
-- recipes/dkms.lua on a real DKMS source tree from Debian's archive: v4l2loopback-dkms
-- 0.12.7's /usr/src/v4l2loopback-0.12.7 (make unpacks the package into build/dkms, not
-- installed). The recipe builds it here, in the guest, for the guest's real kernel (under
-- emulation: the cost of a DKMS container's first start), loads it after the kernel's
-- videodev, says ready, and stops on SIGTERM; a restart finds its build in the cache.
-- It installs into a ROOT of its own: the install's depmod then reads that tree, not the
-- kernel's 4000 modules over 9p (222 s of the 489 s to ready here at load 9, with ROOT=/).
local fs = require "drv.fs"
local kmod = require "drv.kmod"
local mount = require "drv.mount"
local sys = require "drv.sys"
local guest = require "spec.support.guest"
local ofed = require "spec.support.ofed"

local KVER = sys.uname().release
local TREE = fs.realpath("build/dkms/usr/src/v4l2loopback-0.12.7")
local ROOT = fs.tmpdir("dkms-root")
local INSTALLED = ("%s/lib/modules/%s/updates/v4l2loopback/v4l2loopback.ko"):format(ROOT, KVER)
local READY, JOURNAL = "/run/dkms-spec/.driver-ready", "/run/drvrun/v4l2loopback.journal"
local PARAMS = "MODULE_PARAMS=v4l2loopback.devices=2 v4l2loopback.video_nr=7,8"
-- A build under emulation, then a depmod over every module of the kernel: minutes on a slow machine.
local READY_TIMEOUT = 1200

local function mount_points()
  local points = {}
  for _, m in ipairs(assert(mount.list())) do points[#points + 1] = m.target end
  table.sort(points)
  return points
end

local function is_char_device(path)
  local st = fs.stat(path)
  return st ~= nil and st.type == "char"
end

describe("the dkms recipe on Debian's v4l2loopback-dkms 0.12.7", function()
  local cache

  setup(function()
    assert(TREE, "build/dkms/usr/src/v4l2loopback-0.12.7 is missing: make build/dkms/usr/src/v4l2loopback-0.12.7/dkms.conf")
    cache = fs.tmpdir("dkms-cache")
  end)
  after_each(function()
    ofed.cleanup()
    fs.remove(READY, { missing_ok = true })
  end)

  local function start()
    assert.is_false(fs.exists(READY), "stale ready file")
    return ofed.start_recipe("recipes/dkms.lua", { "DKMS_SOURCE=" .. TREE, PARAMS, "CACHE_DIR=" .. cache,
                                                   "ROOT=" .. ROOT, "READY_FILES=" .. READY, "LOCK_TIMEOUT=30" })
  end

  local stop = ofed.stop_recipe

  it("builds the tree here, loads it after the kernel's videodev, says ready, and leaves nothing on SIGTERM", function()
    for _, n in ipairs { "v4l2loopback", "videodev", "mc" } do assert.is_nil(guest.proc_line(n), n .. " loaded before") end
    local mounts = mount_points()
    local t0 = sys.monotonic()
    local p, log = start()
    assert.is_true(ofed.wait_for(READY, p, READY_TIMEOUT), fs.read(log))
    local text = fs.read(log)
    print(("    ready %.0f s after the start; %s; %s"):format(sys.monotonic() - t0,
      text:match("build v4l2loopback%-0%.12%.7: 1 modules in [%d.]+ s") or "?", text:match("depmod done in [%d.]+ s") or "?"))

    -- built here, for this kernel, from the tree dkms.conf describes, with kbuild
    assert.matches("dkms: v4l2loopback 0.12.7, read from " .. TREE .. "/dkms.conf for kernel " .. KVER, text, nil, true)
    assert.matches("dkms: not run: MAKE[0]=", text, nil, true)
    assert.matches("build v4l2loopback-0.12.7 for " .. KVER .. ": make -j", text, nil, true)
    local file = assert(kmod.modinfo(INSTALLED))
    assert.equal(KVER, file.vermagic:match("^%S+"))
    assert.same({ "videodev" }, file.depends)
    assert.matches("^updates/v4l2loopback/v4l2loopback%.ko:", fs.read(ROOT .. "/lib/modules/" .. KVER .. "/modules.dep"))
    -- loaded: the kernel's videodev (and its mc) first, then the built module, with its parameters
    assert.matches("load: first the kernel's mc videodev (the stack needs them)", text, nil, true)
    local st = assert(assert(kmod.new()):state("v4l2loopback"))
    assert.is_string(file.srcversion)
    assert.equal(file.srcversion, st.srcversion)
    assert.matches("O", st.taint)
    assert.matches("^v4l2loopback %d+ 0 ", guest.proc_line("v4l2loopback"))
    assert.same({ "v4l2loopback" }, guest.proc_modules().videodev.holders)
    for _, dev in ipairs { "/dev/video7", "/dev/video8" } do assert.is_true(is_char_device(dev), dev) end
    assert.is_false(fs.exists("/dev/video9"))
    -- ready, naming the package and the loaded srcversion
    local ready = assert(fs.read(READY))
    assert.matches("^recipe=v4l2loopback\nversion=0%.12%.7\nkernel=" .. KVER:gsub("%p", "%%%0") .. "\n", ready)
    assert.matches("module=v4l2loopback srcversion=" .. file.srcversion, ready, nil, true)

    text = stop(p, log)
    assert.is_nil(guest.proc_line("v4l2loopback"), "v4l2loopback unloaded")
    assert.is_nil(guest.proc_line("videodev"), "the kernel's videodev, loaded for it, unloaded")
    assert.is_nil(guest.proc_line("mc"), "and mc")
    assert.matches("INFO restore: nothing to load back (none of the stack was loaded before, and the kernel has no module of "
                   .. "it)", text, nil, true)
    assert.matches("restore: unloaded the kernel's videodev", text, nil, true)
    assert.is_false(fs.exists("/dev/video7"))
    assert.is_false(fs.exists(READY), "the ready file is gone")
    assert.is_false(fs.exists(JOURNAL), "no journal")
    assert.is_false(fs.exists("/run/drvrun/v4l2loopback.lock"), "no instance lock")
    assert.same(mounts, mount_points(), "no mount")
  end)

  it("restarts from its build cache: no compiler, no depmod, loaded and unloaded again", function()
    local p, log = start()
    assert.is_true(ofed.wait_for(READY, p, 300), fs.read(log))
    local text = fs.read(log)
    assert.matches("build: cache hit for kernel " .. KVER, text, nil, true)
    assert.matches("install: " .. ROOT .. "/lib/modules/" .. KVER .. "/updates/v4l2loopback already installed", text, nil,
                   true)
    assert.is_nil(text:find("make -j", 1, true), "no compiler run")
    assert.equal(assert(kmod.modinfo(INSTALLED)).srcversion, assert(kmod.new():state("v4l2loopback")).srcversion)
    stop(p, log)
    for _, n in ipairs { "v4l2loopback", "videodev", "mc" } do assert.is_nil(guest.proc_line(n), n .. " unloaded") end
  end)
end)
