-- guest-timeout: 2400 (depmod over 4000 modules once, then five swaps of the real stack: ~6 min here, 3x, and margin)
-- recipes/ubuntu-ofed.lua with the real MLNX_OFED 25.10 source bundle
-- (VENDOR, ../shared/vendor), on the guest's real kernel: the inbox RDMA stack in use is
-- swapped for the real OFED stack and back. The bundle was built on the host
-- (make check builds it once, build-only, into build/cache-real), so the run
-- here finds it in the build cache; installing it runs depmod once.
local fs = require "drv.fs"
local kmod = require "drv.kmod"
local mount = require "drv.mount"
local proc = require "drv.proc"
local stack = require "drv.stack"
local sys = require "drv.sys"
local guest = require "spec.support.guest"
local ofed = require "spec.support.ofed"

local KVER = sys.uname().release
local vendor = require "spec.support.vendor"
local SHA256 = vendor.OFED_SHA256
local BUNDLE
local INSTALLED = ("/lib/modules/%s/updates/ubuntu-ofed"):format(KVER)
-- The modules that replace the inbox ones, and the inbox stack as it is in use.
local REAL = { "mlx_compat", "ib_core", "mlxdevm", "ib_cm", "iw_cm", "ib_uverbs", "ib_umad", "rdma_cm", "rdma_ucm",
               "mlx5_core", "mlx5_ib", "ib_ipoib" }
local INBOX = { "mlx5_ib", "mlx5_core", "rdma_ucm", "rdma_cm", "ib_uverbs", "ib_core", "ib_umad", "ib_ipoib" }

-- The inbox stack, from the kernel's own files (once OFED is installed, the
-- module index names OFED's files for these names).
local function load_inbox()
  guest.unload_all()
  ofed.load_kernel_modules(INBOX)
end

local function start(args, after_crash)
  local argv = { "OFED_URL=file://" .. BUNDLE, "OFED_SHA256=" .. SHA256, "BLACKLIST_FILE=" .. ofed.BLACKLIST,
                 "CACHE_DIR=" .. fs.realpath("build/cache-real"), "LOCK_TIMEOUT=30",
                 "UDEV_RULES_DIR=" .. ofed.UDEV_RULES_DIR, "UDEV_HELPER_DIR=" .. ofed.UDEV_HELPER_DIR }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  for _, f in ipairs(after_crash and {} or ofed.READY) do assert(not fs.exists(f), "stale ready file " .. f) end
  return ofed.start_recipe("recipes/ubuntu-ofed.lua", argv)
end

local stop = ofed.stop_recipe

-- The real stack is loaded from drvrun's install: each module's srcversion is
-- that of its installed file, out-of-tree and unsigned (taint OE), and the
-- ready file lists it. Prints each, for the log.
local function assert_real_loaded()
  local ctx = assert(kmod.new())
  local ready = assert(fs.read(ofed.READY[1]))
  for _, n in ipairs(REAL) do
    local file = assert(kmod.modinfo(INSTALLED .. "/" .. n .. ".ko"))
    local st = assert(ctx:state(n), n .. " is loaded")
    assert.is_string(file.srcversion, n .. " has a srcversion")
    assert.equal(file.srcversion, st.srcversion, n)
    assert.equal("OE", st.taint, n)
    assert.matches("module=" .. n .. " srcversion=" .. file.srcversion, ready, nil, true)
    print(("    %-10s %-14s srcversion %s, loaded from %s/%s.ko"):format(n, st.version or "", st.srcversion,
                                                                     INSTALLED, n))
  end
  assert.equal("25.10-1.7.1", ctx:state("mlx5_core").version)
end

local function assert_inbox_loaded()
  local ctx = assert(kmod.new())
  for _, n in ipairs(INBOX) do
    local st = assert(ctx:state(n), n .. " is loaded back")
    assert.equal("", st.taint, n .. " is the kernel's own")
    assert.is_nil(st.srcversion, n)
  end
  print("    the inbox stack is back: " .. table.concat(INBOX, " "))
end

describe("ubuntu-ofed recipe with the real MLNX_OFED 25.10 bundle", function()
  setup(function()
    BUNDLE = vendor.need(vendor.OFED_BUNDLE)
    assert(fs.mkdir("/run/modprobe.d"))
    assert(fs.mkdir(ofed.EXPOSE))
    if not mount.is_mountpoint(ofed.EXPOSE) then
      assert(mount.bind(ofed.EXPOSE, ofed.EXPOSE))
      assert(mount.propagation(ofed.EXPOSE, "shared"))
    end
  end)
  after_each(function() ofed.cleanup() end)
  teardown(function() guest.unload_all() end)

  it("plans, with the inbox stack loaded, what it unloads and what it loads, from the build in the cache", function()
    load_inbox()
    local r = assert(proc.run({ os.getenv("DRVRUN"), "--plan", "recipes/ubuntu-ofed.lua", "OFED_URL=file://" .. BUNDLE,
                                "OFED_SHA256=" .. SHA256, "CACHE_DIR=" .. fs.realpath("build/cache-real") }))
    assert.equal(0, r.status, r.stderr)
    io.write(r.stdout:match("\n(unload 1:.-)\nmount:"), "\n")
    assert.matches("\nunload 1: ib_ipoib ib_umad mlx5_ib rdma_ucm\n", r.stdout, nil, true)
    assert.matches("\nload 1: mlx_compat\nload 2: ib_core mlxdevm\nload 3: ib_cm ib_umad ib_uverbs iw_cm mlx5_core\n",
                   r.stdout, nil, true)
    assert.matches("\nload 4: ib_ipoib mlx5_ib rdma_cm\nload 5: rdma_ucm\n", r.stdout, nil, true)
  end)

  it("swaps the inbox stack for the real OFED stack, says ready, and puts the inbox stack back on SIGTERM", function()
    load_inbox()
    local p, log = start()
    assert.is_true(ofed.wait_for(ofed.READY[2], p, 900), fs.read(log))
    local text = fs.read(log)
    assert.matches("build: cache hit for kernel " .. KVER:gsub("%p", "%%%0"), text)
    assert.matches("load: the stack was down for", text)
    assert_real_loaded()
    for _, dummy in ipairs { "efa", "irdma", "mlx4_ib", "hfi1" } do
      assert.is_true(fs.exists(INSTALLED .. "/" .. dummy .. ".ko"), dummy .. " is installed")
      assert.is_nil(guest.proc_line(dummy), dummy .. " is not loaded")
    end
    local ofa = ("/usr/src/ofa_kernel/x86_64/%s"):format(KVER)
    for _, f in ipairs { "include/rdma/ib_verbs.h", "Module.symvers", "configure.mk.kernel", "compat/config.h",
                         "compat_version" } do
      assert.is_true(fs.exists(ofed.EXPOSE .. ofa .. "/" .. f), f .. " is installed and exposed")
    end
    stop(p, log)
    assert_inbox_loaded()
    ofed.assert_host_as_it_was(INBOX)
  end)

  it("on a node with nothing of the stack loaded (after a reboot), loads what it needs from the kernel first, and "
     .. "the kernel's own stack on stop", function()
    guest.unload_all()
    assert(stack.unload_all(assert(kmod.new()), { "psample", "tls", "mlxfw", "pci_hyperv_intf" }))
    local p, log = start()
    assert.is_true(ofed.wait_for(ofed.READY[1], p, 900), fs.read(log))
    assert.matches("load: first the kernel's [^\n]*psample", fs.read(log))
    assert_real_loaded()
    stop(p, log)
    assert.matches("restore: loading back the kernel's own [^\n]*mlx5_core[^\n]* %(none of the stack was loaded "
                   .. "before%)", fs.read(log))
    assert_inbox_loaded()
  end)

  it("restarts fast with the real stack loaded: no build, no reload", function()
    load_inbox()
    local p, log = start { "RESTORE_DRIVER_ON_POD_TERMINATION=false" }
    assert.is_true(ofed.wait_for(ofed.READY[1], p, 900), fs.read(log))
    stop(p, log)
    local t0 = sys.monotonic()
    local p2, log2 = start()
    assert.is_true(ofed.wait_for(ofed.READY[1], p2, 300), fs.read(log2))
    local text = fs.read(log2)
    assert.matches("the built stack is already loaded %(srcversions match%); no reload", text)
    assert.is_nil(text:find("configure", 1, true), "no configure")
    assert.is_nil(text:find("make -j", 1, true), "no compiler")
    print(("    warm restart with the real stack: ready %.3f s after spawning drvrun"):format(sys.monotonic() - t0))
    assert_real_loaded()
    stop(p2, log2)
  end)

  it("after a SIGKILL at ready, the next run undoes what was left, reloads, and stops cleanly", function()
    load_inbox()
    local p, log = start()
    assert.is_true(ofed.wait_for(ofed.READY[1], p, 900), fs.read(log))
    p:kill("KILL")
    p:wait()
    assert.is_true(fs.exists(ofed.JOURNAL), "the killed run's journal")
    local p2, log2 = start(nil, true)
    assert.is_true(ofed.wait_for_log(log2, "waiting for a signal", p2, 900), fs.read(log2))
    local text = fs.read(log2)
    -- the mount, the module swap and OFED's two udev files
    assert.matches("recovery: undoing 4 changes left by an earlier run that did not stop cleanly", text, nil, true)
    assert.matches("restore: loading back [^\n]*mlx5_ib", text)
    assert_real_loaded()
    stop(p2, log2)
    assert_inbox_loaded()
    ofed.assert_host_as_it_was(INBOX)
  end)
end)

describe("the real nv_peer_mem 1.3 on the real OFED 25.10 stack", function()
  local NVIDIA_ROOT, READY = "/run/nvidia/driver", "/run/peermem/.driver-ready"
  local SOURCE
  setup(function()
    SOURCE = vendor.need(vendor.PEERMEM_SOURCE)
    assert(fs.mkdir(NVIDIA_ROOT))
    if not mount.is_mountpoint(NVIDIA_ROOT) then assert(mount.bind(guest.built .. "/nvidia-root", NVIDIA_ROOT)) end
  end)
  after_each(function() ofed.cleanup() end)
  teardown(function()
    guest.unload_all()
    mount.umount(NVIDIA_ROOT, { lazy = true })
  end)

  it("loads from the build cache against the real ib_uverbs and nvidia, registers its peer-memory client, and is "
     .. "unloaded on SIGTERM and by the OFED container's stop", function()
    load_inbox()
    local op, olog = start()
    assert.is_true(ofed.wait_for(ofed.READY[2], op, 900), fs.read(olog))
    local ko = ("%s/lib/modules/%s/kernel/drivers/video/nvidia.ko"):format(NVIDIA_ROOT, KVER)
    assert(kmod.insert_many { { name = "nvidia", path = ko } })
    local cache = fs.tmpdir("real-peermem-cache")
    assert(proc.run({ "cp", "-a", fs.realpath("build/cache-real") .. "/peermem", cache }).status == 0)
    local function start_peermem()
      return ofed.start_recipe("recipes/peermem.lua", { "PEERMEM_SOURCE=" .. SOURCE, "CACHE_DIR=" .. cache,
        "ROOT=" .. fs.tmpdir("peermem-root"), "READY_FILES=" .. READY, "WATCH_INTERVAL=1", "LOCK_TIMEOUT=60" })
    end
    local p, log = start_peermem()
    assert.is_true(ofed.wait_for(READY, p, 600), fs.read(log))
    local text = fs.read(log)
    assert.matches("build: cache hit", text, nil, true)
    local st = assert(assert(kmod.new()):state("nv_peer_mem"), "nv_peer_mem is loaded")
    assert.equal("1.3-0", st.version)
    for _, holder in ipairs { "ib_uverbs", "nvidia" } do
      assert.truthy((guest.proc_line(holder) or ""):find("nv_peer_mem", 1, true), holder .. " is held by nv_peer_mem")
    end
    assert.is_true(fs.exists("/sys/kernel/mm/memory_peers/nv_mem"), "the client registered with OFED's peer-memory API")
    print("    nv_peer_mem " .. st.version .. " loaded; /sys/kernel/mm/memory_peers/nv_mem: " ..
          table.concat(fs.dir("/sys/kernel/mm/memory_peers/nv_mem") or {}, " "))
    -- the build in the cache: the real source compiled against the OFED root the OFED container exposes
    local build_log = assert(fs.glob(cache .. "/peermem/" .. KVER .. "/builds/*/build.log"))[1]
    local cc = assert(fs.read(build_log)):match("[^\n]*gcc[^\n]*nv_peer_mem%.c[^\n]*")
    assert.truthy(cc, "the compiler command for nv_peer_mem.c is in " .. build_log)
    assert.matches(" %-I/run/mellanox/drivers/usr/src/ofa_kernel/x86_64/" .. KVER:gsub("%p", "%%%0") .. "/include/? ", cc)
    print("    " .. build_log .. ": " .. cc:match("^%s*(.-)%s*$"):sub(1, 200) .. " ...")

    stop(p, log)
    assert.is_nil(guest.proc_line("nv_peer_mem"), "unloaded on SIGTERM")
    assert.is_false(fs.exists("/sys/kernel/mm/memory_peers/nv_mem"), "its client is gone")

    -- loaded again; then the OFED container stops (restoring the inbox stack): the client goes first
    local p2, log2 = start_peermem()
    assert.is_true(ofed.wait_for(READY, p2, 600), fs.read(log2))
    stop(op, olog)
    local r = assert(p2:wait(120))
    assert.equal(1, r.status, fs.read(log2))
    assert.matches("watch: the driver is not loaded as built any more %(nv_peer_mem: not loaded%)", fs.read(log2))
    assert.is_false(fs.exists(READY))
    assert_inbox_loaded()
  end)
end)
