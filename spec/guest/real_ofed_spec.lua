-- guest-timeout: 2400 (depmod over 4000 modules once, then five swaps of the real stack: ~6 min here, 3x, and margin)
-- recipes/ubuntu-ofed.lua with the real MLNX_OFED 25.10 source bundle
-- (../shared/vendor), on the guest's real kernel: the inbox RDMA stack in use is
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
local BUNDLE = fs.realpath("../shared/vendor/MLNX_OFED_SRC-debian-25.10-1.7.1.1.tgz")
local SHA256 = "3e42df1e2081b7ccb602c5c15fb757687b2480d9a140141b9741f245348d79c0"
local INSTALLED = ("/lib/modules/%s/updates/ubuntu-ofed"):format(KVER)
-- The modules that replace the inbox ones, and the inbox stack as it is in use.
local REAL = { "mlx_compat", "ib_core", "mlxdevm", "ib_cm", "iw_cm", "ib_uverbs", "ib_umad", "rdma_cm", "rdma_ucm",
               "mlx5_core", "mlx5_ib", "ib_ipoib" }
local INBOX = { "mlx5_ib", "mlx5_core", "rdma_ucm", "rdma_cm", "ib_uverbs", "ib_core", "ib_umad", "ib_ipoib" }

-- The inbox stack loaded from the kernel's own files (by path: once OFED is
-- installed, the module index names its files for these names).
local function load_inbox()
  guest.unload_all()
  local ctx = assert(kmod.new())
  local inbox = stack.inbox(ctx, INBOX)
  assert(stack.load(inbox.levels, inbox.paths))
  for _, n in ipairs(INBOX) do assert(guest.proc_line(n), n .. " loaded") end
end

local function start(args, after_crash)
  local argv = { "OFED_URL=file://" .. BUNDLE, "OFED_SHA256=" .. SHA256, "BLACKLIST_FILE=" .. ofed.BLACKLIST,
                 "CACHE_DIR=" .. fs.realpath("build/cache-real"), "LOCK_TIMEOUT=30",
                 "UDEV_RULES_DIR=" .. ofed.UDEV_RULES_DIR, "UDEV_HELPER_DIR=" .. ofed.UDEV_HELPER_DIR }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  for _, f in ipairs(after_crash and {} or ofed.READY) do assert(not fs.exists(f), "stale ready file " .. f) end
  return ofed.start_recipe("recipes/ubuntu-ofed.lua", argv)
end

local function stop(p, log)
  assert.is_true(sys.kill(p:pid(), "TERM"))
  local r = assert(p:wait(300))
  assert.equal(0, r.status, fs.read(log))
end

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
    assert(BUNDLE, "../shared/vendor/MLNX_OFED_SRC-debian-25.10-1.7.1.1.tgz is missing")
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
    assert.matches("recovery: undoing 2 changes left by an earlier run that did not stop cleanly", text, nil, true)
    assert.matches("restore: loading back [^\n]*mlx5_ib", text)
    assert_real_loaded()
    stop(p2, log2)
    assert_inbox_loaded()
    ofed.assert_host_as_it_was(INBOX)
  end)
end)
