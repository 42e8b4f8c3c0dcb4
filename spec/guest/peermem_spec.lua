-- guest-timeout: 1200 (COMMAND limit of this file's guest boot; the boot took 234-349 s here at load 6-10)
-- recipes/peermem.lua on the guest's real kernel, next to a running OFED recipe
-- (each in its own mount namespace) and a simulated NVIDIA driver container
-- (its root at /run/nvidia/driver, its nvidia module loaded from there).
local fs = require "drv.fs"
local kmod = require "drv.kmod"
local mount = require "drv.mount"
local proc = require "drv.proc"
local sys = require "drv.sys"
local symvers = require "drv.symvers"
local guest = require "spec.support.guest"
local ofed = require "spec.support.ofed"

local NVIDIA_ROOT = "/run/nvidia/driver"
local READY = "/run/peermem/.driver-ready"
local KVER = sys.uname().release

local function start_nvidia()
  assert(fs.mkdir(NVIDIA_ROOT))
  if not mount.is_mountpoint(NVIDIA_ROOT) then assert(mount.bind(guest.built .. "/nvidia-root", NVIDIA_ROOT)) end
  local ko = ("%s/lib/modules/%s/kernel/drivers/video/nvidia.ko"):format(NVIDIA_ROOT, KVER)
  if not guest.proc_line("nvidia") then assert(kmod.insert_many { { name = "nvidia", path = ko } }) end
end

-- The holders /proc/modules lists for a module.
local function holders(name)
  return (guest.proc_modules()[name] or { holders = {} }).holders
end

local function contains(list, x)
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

describe("peermem recipe", function()
  local env, ofed_p, ofed_log, cache, root, source

  local function start_ofed()
    local p, log = ofed.start(env, { "RESTORE_DRIVER_ON_POD_TERMINATION=false" })
    assert.is_true(ofed.wait_for(ofed.READY[2], p), fs.read(log))
    return p, log
  end

  local function stop(p, log)
    assert.is_true(sys.kill(p:pid(), "TERM"))
    local r = assert(p:wait(120))
    return r.status, fs.read(log)
  end

  local function start_peermem(args)
    local argv = { "PEERMEM_SOURCE=" .. env.server:url(source), "PEERMEM_SHA256=" .. ofed.sha_of(source),
                   "ROOT=" .. root, "CACHE_DIR=" .. cache, "READY_FILES=" .. READY, "LOCK_TIMEOUT=30",
                   "WATCH_INTERVAL=1", "AWAIT_TIMEOUT=60" }
    for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
    return ofed.start_recipe("recipes/peermem.lua", argv)
  end

  setup(function()
    env = ofed.setup()
    env.cache = ofed.fresh_cache()
    cache, root = fs.tmpdir("peermem-cache"), fs.tmpdir("peermem-root")
    -- the client was built on the host against the same OFED and NVIDIA files
    -- (tools/fill-cache): nothing compiles here
    assert(proc.run({ "cp", "-a", fs.realpath("build/cache") .. "/peermem", cache }).status == 0)
    source = assert(fs.glob(guest.fixtures .. "/nv_peer_memory-*.tgz"))[1]:match("[^/]+$")
    ofed.load_inbox()
    ofed_p, ofed_log = start_ofed()
    start_nvidia()
  end)
  after_each(function()
    for _, p in ipairs(ofed.running) do
      if p ~= ofed_p and p:running() then p:kill("TERM"); p:wait(60) end
    end
    fs.remove(READY, { missing_ok = true })
  end)
  teardown(function()
    ofed.cleanup()
    env.server:stop()
    ofed.reset_modules()
    mount.umount(NVIDIA_ROOT, { lazy = true })
  end)

  it("waits for the NVIDIA driver, then fails at the timeout naming the path, changing nothing", function()
    local t0 = sys.monotonic()
    local p, log = start_peermem { "NVIDIA_ROOT=/run/nvidia/missing", "AWAIT_TIMEOUT=13" }
    local r = assert(p:wait(120))
    local text = fs.read(log)
    assert.equal(1, r.status, text)
    assert.is_true(sys.monotonic() - t0 >= 13, "it waited")
    assert.matches("await: NVIDIA driver in /run/nvidia/missing: waiting %(1%d s of 13 s%): none of "
                   .. "/run/nvidia/missing exists", text)
    assert.matches("NVIDIA driver in /run/nvidia/missing: still not there after 13 s: none of /run/nvidia/missing "
                   .. "exists: mount the NVIDIA driver container's root there", text, nil, true)
    assert.is_false(fs.exists(READY))
    assert.is_nil(guest.proc_line("nv_peer_mem"))
    assert.is_false(fs.exists("/run/drvrun/peermem.journal"))
    assert.is_false(text:find("phase build", 1, true) ~= nil, "nothing is built before what it needs is there")
  end)

  it("takes its build against OFED and NVIDIA from the cache, loads, says ready, and unloads on SIGTERM", function()
    local p, log = start_peermem()
    assert.is_true(ofed.wait_for(READY, p), fs.read(log))
    local text = fs.read(log)
    assert.matches("await: OFED headers /run/mellanox/drivers/usr/src/ofa_kernel/x86_64/" .. KVER:gsub("%p", "%%%0"),
                   text)
    assert.matches("build: cache hit for kernel " .. KVER:gsub("%p", "%%%0"), text)
    assert.is_nil(text:find("make -j", 1, true), "no compiler here")
    -- loaded, using the OFED ib_core (not the inbox one) and the nvidia module
    assert.truthy(guest.proc_line("nv_peer_mem"))
    assert.is_true(contains(holders("ib_core"), "nv_peer_mem"), guest.proc_line("ib_core"))
    assert.is_true(contains(holders("nvidia"), "nv_peer_mem"), guest.proc_line("nvidia"))
    assert.matches("O", fs.read("/sys/module/ib_core/taint"))
    local built = assert(kmod.modinfo(("%s/lib/modules/%s/updates/peermem/nv_peer_mem.ko"):format(root, KVER)))
    assert.matches("module=nv_peer_mem srcversion=" .. built.srcversion, fs.read(READY), nil, true)

    local status, after = stop(p, log)
    assert.equal(0, status, after)
    assert.is_false(fs.exists(READY))
    assert.is_nil(guest.proc_line("nv_peer_mem"), "unloaded on stop")
    assert.matches("O", fs.read("/sys/module/ib_core/taint") or "", nil, true, "OFED's ib_core stays")
  end)

  it("refuses a client built against another OFED's Module.symvers (the real nv_peer_mem 1.3, built against the "
     .. "real OFED 25.10), naming the symbol, before any insert", function()
    -- an OFED root that says ready for the loaded (simulated) stack, with the real OFED's headers and symbols
    local other = fs.tmpdir("other-ofed")
    local ofa = ("/usr/src/ofa_kernel/x86_64/%s"):format(KVER)
    assert(fs.mkdir(other .. "/usr/src/ofa_kernel/x86_64"))
    assert(fs.symlink(assert(fs.realpath("build/root-real" .. ofa)), other .. ofa))
    assert(fs.copy(ofed.EXPOSE .. "/.driver-ready", other .. "/.driver-ready"))
    local real_cache = fs.tmpdir("real-peermem-cache")
    assert(proc.run({ "cp", "-a", fs.realpath("build/cache-real") .. "/peermem", real_cache }).status == 0)
    local built_against = assert(symvers.read(other .. ofa .. "/Module.symvers")).ib_register_peer_memory_client.crc
    local loaded = assert(symvers.read(ofed.EXPOSE .. ofa .. "/Module.symvers")).ib_register_peer_memory_client.crc
    assert.are_not.equal(built_against, loaded)
    assert.equal(0, assert(proc.run({ "dmesg", "-C" })).status, "the kernel log is cleared, to read only what follows")

    local p, log = start_peermem { "OFED_ROOT=" .. other, "CACHE_DIR=" .. real_cache,
                                   "PEERMEM_SOURCE=" .. require("spec.support.vendor").need("nv_peer_memory-1.3-0.tar.gz") }
    local r = assert(p:wait(300))
    local out = fs.read(log)
    assert.equal(1, r.status, out)
    assert.matches("build: cache hit", out, nil, true)
    assert.matches(("nv_peer_mem does not match the loaded modules: [^\n]*ib_register_peer_memory_client %%(built against "
                    .. "0x%08x, the loaded ib_core exports 0x%08x%%)"):format(built_against, loaded), out)
    assert.matches("rebuild", out)
    assert.is_nil(out:find("load: load", 1, true), "no insert was tried")
    assert.is_nil(guest.proc_line("nv_peer_mem"))
    local dmesg = assert(proc.run({ "dmesg" })).stdout
    assert.is_nil(dmesg:find("disagrees about version", 1, true), dmesg)
    assert.is_false(fs.exists(READY))
  end)

  it("loads the nvidia_peermem module the NVIDIA driver ships, without building", function()
    local p, log = start_peermem { "PEERMEM_MODULE=nvidia_peermem" }
    assert.is_true(ofed.wait_for(READY, p), fs.read(log))
    local text = fs.read(log)
    assert.is_nil(text:find("build nv_peer", 1, true))
    assert.is_true(contains(holders("ib_core"), "nvidia_peermem"), guest.proc_line("ib_core"))
    assert.is_true(contains(holders("nvidia"), "nvidia_peermem"), guest.proc_line("nvidia"))
    local status, after = stop(p, log)
    assert.equal(0, status, after)
    assert.is_nil(guest.proc_line("nvidia_peermem"))
  end)

  it("an OFED reload unloads the peer-memory module first and says why; peermem then stops and loads it back",
     function()
    local p, log = start_peermem()
    assert.is_true(ofed.wait_for(READY, p), fs.read(log))
    -- peermem requires ubuntu-ofed: while its stack is loaded, the host says so for OFED's reloads
    local dependent = "/run/drvrun/ubuntu-ofed.dependents/peermem"
    assert.equal("nv_peer_mem\n", fs.read(dependent))
    -- the OFED container restarts to a stack that is no longer whole: it must reload
    local status, text = stop(ofed_p, ofed_log)
    assert.equal(0, status, text)
    assert(kmod.remove_many { "mlx5_ib" })
    ofed_p, ofed_log = start_ofed()
    local otext = fs.read(ofed_log)
    assert.matches("load: unloading nv_peer_mem first: a module of peermem, which requires ubuntu%-ofed "
                   .. "%(its run loads it back%)", otext)
    local order = otext:match("load: unload ([^\n]*)")
    assert.truthy(order:find("nv_peer_mem", 1, true) < order:find("ib_core", 1, true), order)

    -- the peermem run sees its module gone: no longer ready, it ends so that it is restarted
    local r = assert(p:wait(60))
    local ptext = fs.read(log)
    assert.equal(1, r.status, ptext)
    assert.matches("watch: the driver is not loaded as built any more %(nv_peer_mem: not loaded%)", ptext)
    assert.is_false(fs.exists(READY))
    assert.is_false(fs.exists(dependent), "its stop undid the note")
    -- restarted, it loads the cached build against the new stack
    local p2, log3 = start_peermem()
    assert.is_true(ofed.wait_for(READY, p2), fs.read(log3))
    assert.matches("build: cache hit", fs.read(log3))
    assert.is_true(contains(holders("ib_core"), "nv_peer_mem"))
    assert.equal(0, (stop(p2, log3)))
  end)
end)
