-- guest-timeout: 1800 (COMMAND limit of this file's guest boot; the boot took 199-543 s here at load 6-10)
-- recipes/ubuntu-ofed.lua end to end on the guest's real kernel: the simulated
-- OFED bundle over HTTP on 127.0.0.1 replaces the inbox RDMA stack in use.
local fs = require "drv.fs"
local kmod = require "drv.kmod"
local sys = require "drv.sys"
local proc = require "drv.proc"
local guest = require "spec.support.guest"
local ofed = require "spec.support.ofed"

describe("ubuntu-ofed recipe", function()
  local env
  setup(function() env = ofed.setup() end)
  after_each(function() ofed.cleanup() end)
  teardown(function()
    env.server:stop()
    guest.unload_all()
  end)

  it("replaces the inbox stack, exposes the root, says ready, and restores everything on SIGTERM", function()
    local inbox = ofed.load_inbox()
    local p, log = ofed.start(env)
    assert.is_true(ofed.wait_for(ofed.READY[2], p), fs.read(log))

    -- every module of the stack is the built one
    local ctx = assert(kmod.new())
    local ready = assert(fs.read(ofed.READY[1]))
    for _, n in ipairs(ofed.STACK) do
      local built = assert(kmod.modinfo(("/lib/modules/%s/updates/ubuntu-ofed/%s.ko"):format(sys.uname().release, n)))
      local st = assert(ctx:state(n), n .. " loaded")
      assert.equal(built.srcversion, st.srcversion, n)
      assert.matches("O", st.taint)
      assert.matches("module=" .. n .. " srcversion=" .. built.srcversion, ready, nil, true)
    end
    assert.matches("^recipe=ubuntu%-ofed\nversion=25%.10%-1%.7%.1%.1\nkernel=" .. sys.uname().release:gsub("%p", "%%%0")
      .. "\nboot_id=" .. sys.boot_id():gsub("%p", "%%%0") .. "\n", ready)
    assert.equal(ready, fs.read(ofed.READY[2]))
    -- the container root, seen from this (another) mount namespace
    assert.is_true(require("drv.mount").is_mountpoint(ofed.EXPOSE))
    assert.is_true(fs.exists(ofed.EXPOSE .. "/usr/src/ofa_kernel/default/Module.symvers"))
    assert.equal(("x86_64/%s"):format(sys.uname().release), fs.readlink("/usr/src/ofa_kernel/default"))
    assert.is_false(fs.exists(ofed.BLACKLIST), "the blacklist exists only during the reload")
    local lock = require("drv.lock").acquire("/run/drvrun/host.lock", { timeout = 0 })
    assert.truthy(lock, "a ready recipe leaves the host-wide lock to other containers")
    lock:unlock()
    local text = fs.read(log)
    assert.matches("phase load done in", text)
    assert.matches("load: the stack was down for", text)

    assert.is_true(sys.kill(p:pid(), "TERM"))
    local r = assert(p:wait(120))
    assert.equal(0, r.status, fs.read(log))
    for _, f in ipairs(ofed.READY) do assert.is_false(fs.exists(f)) end
    assert.is_false(fs.exists(ofed.EXPOSE .. "/etc"), "the exposed root is unmounted")
    assert.is_false(fs.exists(ofed.JOURNAL))
    -- the inbox stack is back: loaded from kernel/, no out-of-tree taint
    for _, n in ipairs(inbox) do
      local st = assert(ctx:state(n), n .. " reloaded")
      assert.equal("", st.taint, n)
      assert.is_nil(st.srcversion, n)
    end
  end)

  it("restarts without building or reloading when the built stack is already loaded (timed in make bench)", function()
    ofed.load_inbox()
    env.cache = ofed.fresh_cache()
    finally(function() env.cache = nil end)
    local p, log = ofed.start(env, { "RESTORE_DRIVER_ON_POD_TERMINATION=false" })
    assert.is_true(ofed.wait_for(ofed.READY[1], p), fs.read(log))
    sys.kill(p:pid(), "TERM")
    assert.equal(0, assert(p:wait(120)).status)
    assert.is_not_nil(assert(kmod.new():state("mlx5_ib")).srcversion, "the OFED stack stays loaded without restore")

    local t0 = sys.monotonic()
    local p2, log2 = ofed.start(env)
    assert.is_true(ofed.wait_for(ofed.READY[1], p2), fs.read(log2))
    local elapsed = sys.monotonic() - t0
    local text = fs.read(log2)
    assert.matches("build: cache hit", text)
    assert.matches("the built stack is already loaded %(srcversions match%); no reload", text)
    assert.matches("install: /usr/src/ofa_kernel/x86_64/[^ ]+ already installed", text, "headers are not copied again")
    local after = text:match("ready: [^\n]*%((%d+%.%d+) s after start%)")
    print(("    warm restart: ready %s s after start (%.3f s including process start)"):format(after, elapsed))
    assert.is_nil(text:find("make -j", 1, true), "no compiler run")
    assert.is_nil(text:find("load: unload", 1, true), "no reload")
    sys.kill(p2:pid(), "TERM")
    assert.equal(0, assert(p2:wait(120)).status)
  end)

  it("after a SIGKILL, the next run undoes what the killed one left (mount, OFED stack) before it starts", function()
    local inbox = ofed.load_inbox()
    env.cache = ofed.fresh_cache()
    finally(function() env.cache = nil end)
    local p, log = ofed.start(env)
    assert.is_true(ofed.wait_for(ofed.READY[1], p), fs.read(log))
    p:kill("KILL")
    p:wait()
    -- what a killed container leaves behind
    assert.is_true(fs.exists(ofed.JOURNAL), "the journal")
    assert.is_true(fs.exists(ofed.EXPOSE .. "/etc/os-release"), "the rbind on the host path")
    assert.is_not_nil(assert(kmod.new():state("mlx5_ib")).srcversion, "the OFED stack")

    local p2, log2 = ofed.start(env, nil, true)
    assert.is_true(ofed.wait_for_log(log2, "waiting for a signal", p2), fs.read(log2))
    local text = fs.read(log2)
    -- the mount, the module swap and OFED's two udev files
    assert.matches("recovery: undoing 4 changes left by an earlier run that did not stop cleanly", text, nil, true)
    local recovered = text:find("recovery: undoing", 1, true)
    assert.is_true(recovered < text:find("phase prepare started", 1, true), "recovery comes first")
    assert.matches("stop: unloading [^\n]+\n[^\n]+restore: loading back [^\n]*mlx5_ib", text:sub(recovered),
                   "the killed run's stack is swapped back for the inbox one")
    assert.matches("load: unload ", text, nil, true, "then the reload runs again")
    local ready = assert(fs.read(ofed.READY[2]))
    assert.matches("boot_id=", ready, nil, true)
    sys.kill(p2:pid(), "TERM")
    assert.equal(0, assert(p2:wait(120)).status, fs.read(log2))
    ofed.assert_host_as_it_was(inbox)
    assert.is_false(fs.exists(ofed.JOURNAL))
  end)

  it("refuses a second instance, naming the live one, which stays ready and untouched", function()
    local inbox = ofed.load_inbox()
    local p, log = ofed.start(env)
    assert.is_true(ofed.wait_for(ofed.READY[2], p), fs.read(log))
    local ready = assert(fs.read(ofed.READY[1]))
    local status, text = ofed.run(env, nil, true)
    assert.equal(3, status, text)
    assert.matches("instance: another ubuntu%-ofed runs on this host %(pid %d+ %(ubuntu%-ofed 25%.10%-1%.7%.1%.1 on "
                   .. "[^)]+%) since [^)]+%); it is left as it is%. Stop it first", text)
    assert.not_matches("recovery:", text)
    assert.not_matches("phase prepare", text)
    assert.is_true(p:running(), "the first one still runs")
    assert.equal(ready, fs.read(ofed.READY[1]), "its ready files are untouched")
    assert.equal(ready, fs.read(ofed.READY[2]))
    assert.is_true(require("drv.mount").is_mountpoint(ofed.EXPOSE), "its exposed root is still mounted")
    assert.is_not_nil(assert(kmod.new():state("mlx5_ib")).srcversion, "its stack is still loaded")
    assert.is_true(sys.kill(p:pid(), "TERM"))
    assert.equal(0, assert(p:wait(120)).status, fs.read(log))
    ofed.assert_host_as_it_was(inbox)
  end)

  it("loads the kernel's own stack back on stop when what it replaced cannot be (an older release's files are gone)",
    function()
    guest.unload_all()
    -- another OFED release, loaded by a container that is gone with its files
    local gone = fs.tmpdir("release-a")
    local paths = {}
    for name, path in pairs(guest.fixture_paths("sim-ofed-next")) do
      paths[name] = gone .. "/" .. name .. ".ko"
      assert(fs.copy(path, paths[name]))
    end
    paths.irdma = nil
    guest.load_fixture_stack(paths)
    assert(fs.remove(gone, { recursive = true }))
    local p, log = ofed.start(env)
    assert.is_true(ofed.wait_for(ofed.READY[1], p), fs.read(log))
    assert.is_true(sys.kill(p:pid(), "TERM"))
    assert.equal(0, assert(p:wait(120)).status, fs.read(log))
    local text = fs.read(log)
    assert.matches("stack: the file mlx5_ib was loaded from is not in [^\n]+: it cannot be loaded back", text)
    assert.matches("restore: loading back the kernel's own [^\n]*mlx5_ib[^\n]* %(the files [^)]*mlx5_ib[^)]* had been "
                   .. "loaded from are gone%)", text)
    ofed.assert_host_as_it_was({ "ib_core", "ib_cm", "iw_cm", "ib_uverbs", "ib_umad", "rdma_cm", "rdma_ucm",
                                 "mlx5_core", "mlx5_ib", "ib_ipoib" })
  end)

  it("loads the kernel's own stack on stop when none was loaded before (a node after a crash and a reboot)", function()
    guest.unload_all()
    local p, log = ofed.start(env)
    assert.is_true(ofed.wait_for(ofed.READY[1], p), fs.read(log))
    assert.is_true(sys.kill(p:pid(), "TERM"))
    assert.equal(0, assert(p:wait(120)).status, fs.read(log))
    assert.matches("restore: loading back the kernel's own [^\n]* %(none of the stack was loaded before%)", fs.read(log))
    ofed.assert_host_as_it_was({ "ib_core", "mlx5_core", "mlx5_ib", "rdma_ucm", "ib_ipoib" })
  end)

  it("removes a blacklist a killed run left behind (it would keep the inbox driver from loading at boot)", function()
    local inbox = ofed.load_inbox()
    assert(fs.write(ofed.BLACKLIST, "# Written by drvrun ubuntu-ofed while it reloads the driver stack; removed after.\n"
                                    .. "blacklist mlx5_core\n"))
    local p, log = ofed.start(env)
    assert.is_true(ofed.wait_for(ofed.READY[1], p), fs.read(log))
    assert.matches("blacklist: removed " .. ofed.BLACKLIST:gsub("%p", "%%%0") .. ", left by a run of ubuntu%-ofed that "
                   .. "did not stop cleanly", fs.read(log))
    assert.is_false(fs.exists(ofed.BLACKLIST), "no blacklist outside a reload")
    assert.is_true(sys.kill(p:pid(), "TERM"))
    assert.equal(0, assert(p:wait(120)).status)
    ofed.assert_host_as_it_was(inbox)
  end)

  it("refuses while a storage module uses the stack, before touching anything", function()
    local inbox = ofed.load_inbox()
    assert(assert(kmod.new()):insert("rpcrdma"))
    local status, text = ofed.run(env)
    assert.equal(1, status)
    assert.matches("storage modules are loaded and use the RDMA stack: rpcrdma%. Unload them, or set "
      .. "UNLOAD_STORAGE_MODULES=true", text)
    assert.not_matches("phase build", text)
    ofed.assert_host_as_it_was(inbox)
  end)

  it("fails on a bundle with the wrong sha256 and leaves the host as it was", function()
    local inbox = ofed.load_inbox()
    local status, text = ofed.run(env, { "OFED_SHA256=" .. ("0"):rep(64) })
    assert.equal(1, status)
    assert.matches("sha256 mismatch: expected 0+, got " .. env.sha, text)
    ofed.assert_host_as_it_was(inbox)
  end)

  it("refuses while a process holds an RDMA device, naming it, and leaves the host as it was", function()
    local inbox = ofed.load_inbox()
    local holder = assert(proc.spawn({ "sh", "-c", "exec sleep 120 < /dev/infiniband/rdma_cm" }))
    finally(function() holder:kill("KILL") holder:wait() end)
    guest.wait_for_device_user("/dev/infiniband")
    local status, text = ofed.run(env)
    assert.equal(1, status)
    assert.matches("cannot reload the driver stack: rdma_ucm is in use %(1 reference besides modules%): pid %d+ "
      .. "%(sleep%) has /dev/infiniband/rdma_cm open", text)
    ofed.assert_host_as_it_was(inbox)
  end)

  it("plans without changing anything", function()
    local inbox = ofed.load_inbox()
    local r = assert(proc.run({ os.getenv("DRVRUN"), "--plan", "recipes/ubuntu-ofed.lua",
                                "OFED_URL=" .. env.server:url(env.bundle), "OFED_SHA256=" .. env.sha,
                                "CACHE_DIR=" .. fs.realpath("build/cache") }))
    assert.equal(0, r.status, r.stderr)
    assert.matches("plan: ubuntu%-ofed 25%.10%-1%.7%.1%.1 for kernel", r.stdout)
    assert.matches("\nunload 1: ib_umad mlx5_ib rdma_ucm\n", r.stdout)
    assert.matches("\nload 1: mlx_compat\nload 2: ib_core mlx5_core mlxdevm\n", r.stdout, nil, true)
    -- without the build in the cache, the names, and that the order comes with the build
    local fresh = assert(proc.run({ os.getenv("DRVRUN"), "--plan", "recipes/ubuntu-ofed.lua",
                                    "OFED_SHA256=" .. env.sha, "CACHE_DIR=" .. ofed.fresh_cache() }))
    assert.equal(0, fresh.status, fresh.stderr)
    assert.matches("\nunload 1: ib_umad mlx5_ib rdma_ucm\n", fresh.stdout)
    assert.matches("\nload: ib_cm ib_core [^\n]+ %(after the build, in the order of their dependencies%)\n", fresh.stdout)
    assert.matches("\nmount: rbind / /run/mellanox/drivers\n", r.stdout)
    ofed.assert_host_as_it_was(inbox)
  end)
end)
