-- guest-timeout: 3000 (per boot; boot 2, the longest: 914 s at load 6-8, its build ahead under emulation 641 s)
-- guest-vm: --out build/upgrade
-- A kernel upgrade, with the machine's two kernels (the newest, NEWEST, and OLDER: Makefile's
-- UPGRADE_KVER), over three boots of the guest (spec/vm/run: the spec asks for each reboot).
-- The build cache of the simulated stack is on build/upgrade, an --out directory: it is
-- what a node keeps over a reboot; /run and the rest start empty, as after a reboot.
--
--   boot 1, NEWEST  the real MLNX_OFED stack ready; OLDER installed on the host: its build
--                   is in the cache (made on this machine, build-only, the build ahead's
--                   code path: compiling the real stack under emulation takes hours)
--   boot 2, OLDER   the real stack ready from that build, no compiler run; the simulated
--                   stack ready; NEWEST installed on the host without headers (the plan
--                   says why it cannot be built), then with them: built in the background
--                   while the driver stays ready (a TERM stops that build in seconds)
--   boot 3, NEWEST  the simulated stack ready from the build made ahead, no compiler run;
--                   a build for another kernel refused before anything is unloaded
local fs = require "drv.fs"
local mount = require "drv.mount"
local proc = require "drv.proc"
local ready = require "drv.ready"
local sys = require "drv.sys"
local guest = require "spec.support.guest"
local kernel = require "spec.support.kernel"
local ofed = require "spec.support.ofed"
local traps = require "spec.support.trap"
local upgrade = require "spec.support.upgrade"
local vendor = require "spec.support.vendor"

local BOOT = tonumber(os.getenv("DRVRUN_VM_BOOT") or "1")
local NEWEST = kernel.release
local OLDER = kernel.installed[#kernel.installed - 1]
  or error("only " .. NEWEST .. " is installed here: the upgrade spec needs a second kernel (make deps: UPGRADE_KVER)")
local OUT = "build/upgrade"
local SIM_CACHE = OUT .. "/cache-sim"
local REAL_CACHE = "build/cache-real"
local AHEAD_BUILD_TIMEOUT = 2000 -- the simulated stack under emulation, 2 jobs at nice 19: 641 s at load 6-8, x3

local function sim_bundle()
  local path = assert(fs.glob(guest.fixtures .. "/sim-ofed-[0-9]*.tgz"))[1]
  return path, ofed.sha_of(path:match("[^/]+$"))
end

local function real(host, extra)
  return upgrade.args { bundle = vendor.need(vendor.OFED_BUNDLE), sha = vendor.OFED_SHA256, host = host,
                        cache = assert(fs.realpath(REAL_CACHE)), extra = extra }
end

local function sim(host, extra)
  local bundle, sha = sim_bundle()
  return upgrade.args { bundle = bundle, sha = sha, host = host, cache = assert(fs.realpath(SIM_CACHE)),
                        extra = extra }
end

local function start(args, vars)
  return ofed.start_recipe("recipes/ubuntu-ofed.lua", args, vars)
end

local function stop(p, log)
  assert.is_true(sys.kill(p:pid(), "TERM"))
  local r = assert(p:wait(300))
  assert.equal(0, r.status, fs.read(log))
end

-- `drvrun --preflight` with the container's options, for kernel `kver`: its status and output.
local function preflight(args, kver)
  local argv = { os.getenv("DRVRUN"), "--preflight", "recipes/ubuntu-ofed.lua", "KVER=" .. kver }
  for _, a in ipairs(args) do
    if not a:match("^KVER=") then argv[#argv + 1] = a end
  end
  local r = assert(proc.run(argv, { timeout = 300 }))
  io.write("    $ drvrun --preflight recipes/ubuntu-ofed.lua KVER=", kver, " ...: exit ", tostring(r.status), "\n    ",
           r.stdout)
  return r.status, r.stdout .. r.stderr
end

local function reboot_into(kver)
  local dir = assert(os.getenv("DRVRUN_VM_REBOOT"), "not in a spec/vm/run guest: DRVRUN_VM_REBOOT is not set")
  assert(fs.write(dir .. "/kernel", upgrade.image(kver) .. "\n"))
  print("    rebooting into " .. kver .. " (spec/vm/run boots the guest again)")
end

local function wait_log(log, pattern, p, timeout)
  assert.is_true(guest.wait_until(function() return (fs.read(log) or ""):find(pattern) ~= nil end, timeout or 300, p),
                 "no '" .. pattern .. "' in the log:\n" .. (fs.read(log) or ""))
  return fs.read(log)
end

-- The ready file as a container left it: its text and whether its modules are live.
local function ready_state()
  local text = fs.read(ofed.READY[2])
  local live = ready.live(ofed.READY[2])
  return text, live
end

-- Ready from the cache, no compiler, make, configure or apt-get run (the traps on PATH saw
-- none, and the log has no configure or make line): the start after a reboot.
local function assert_no_compiler(log, runs)
  local text = fs.read(log)
  assert.matches("build: cache hit for kernel " .. upgrade.running:gsub("%p", "%%%0"), text)
  local ran = runs()
  for line in text:gmatch("[^\n]+") do
    if line:match("configure [^:]+: %./configure") or line:match(": make %-j") then ran[#ran + 1] = line end
  end
  assert.same({}, ran, "a compiler, make, configure or apt-get ran")
  print(("    ready on %s from the build cache: %d compiler runs; %s"):format(upgrade.running, #ran,
        text:match("ready: [^\n]*%(([%d.]+ s after start)%)") or "?"))
end

local function setup_node()
  assert(fs.mkdir("/run/modprobe.d"))
  ofed.share_expose()
end

if BOOT == 1 then
  describe("boot 1, on " .. NEWEST .. ":", function()
    setup(setup_node)
    after_each(function() ofed.cleanup() end)

    it("the real OFED stack ready; " .. OLDER .. " installed on the host: its build is in the cache, the plan says "
       .. "so before the reboot", function()
      assert.equal(NEWEST, upgrade.running, "the first boot is on the newest kernel (spec/vm/run's default)")
      local host = upgrade.node(OLDER)
      upgrade.load_inbox()
      local args = real(host)
      local p, log = start(args)
      assert.is_true(ofed.wait_for(ofed.READY[2], p, 900), fs.read(log))
      local before = ready_state()
      upgrade.install(host, OLDER)
      local text = wait_log(log, "ahead: kernel " .. OLDER:gsub("%p", "%%%0") .. " is installed on the host: in the "
                            .. "build cache", p, 120)
      print("    " .. text:match("[^\n]*ahead: kernel [^\n]*"))
      assert.equal(before, (ready_state()), "the ready file is as it was")
      local status, out = preflight(args, OLDER)
      assert.equal(0, status, out)
      assert.matches("kernel " .. OLDER:gsub("%p", "%%%0") .. ": in the build cache", out)
      stop(p, log)
      reboot_into(OLDER)
    end)
  end)
end

if BOOT == 2 then
  describe("boot 2, after the reboot into " .. OLDER .. ":", function()
    local host
    setup(function()
      setup_node()
      host = upgrade.node(NEWEST)
    end)
    after_each(function() ofed.cleanup() end)
    teardown(function() guest.unload_all() end)

    it("the real OFED stack ready from the build made for it before the reboot, with no compiler, make or configure "
       .. "run", function()
      assert.equal(OLDER, upgrade.running)
      upgrade.install(host, NEWEST) -- still installed: the host boots either
      local path, runs = traps.set(assert(fs.tmpdir("traps")), { "apt-get", table.unpack(traps.BUILD) })
      upgrade.load_inbox()
      local p, log = start(real(host), { PATH = path })
      assert.is_true(ofed.wait_for(ofed.READY[2], p, 900), fs.read(log))
      assert_no_compiler(log, runs)
      assert.equal("25.10-1.7.1", assert(require("drv.kmod").new()):state("mlx5_core").version)
      stop(p, log)
      assert(mount.umount(host .. "/lib/modules/" .. NEWEST))
    end)

    local args
    it("the simulated stack ready; " .. NEWEST .. " installed on the host without its headers: the plan says why it "
       .. "cannot be built", function()
      -- the cache the node keeps over the reboot: the simulated stack's build for OLDER only
      assert(proc.run({ "rm", "-rf", SIM_CACHE }).status == 0)
      assert(fs.mkdir(SIM_CACHE))
      assert(proc.run({ "cp", "-a", "build/cache/ubuntu-ofed", SIM_CACHE }).status == 0)
      assert(proc.run({ "rm", "-rf", SIM_CACHE .. "/ubuntu-ofed/" .. NEWEST, SIM_CACHE .. "/ubuntu-ofed/ccache" })
             .status == 0)
      assert.is_truthy(mount.find(SIM_CACHE).fstype == "9p", ("%s is not an --out directory: the cache would not "
                       .. "outlive the reboot (spec/vm/run --out %s)"):format(OUT, OUT))
      upgrade.load_inbox()
      args = sim(host, { "RESTORE_DRIVER_ON_POD_TERMINATION=false", "CCACHE=false", "AHEAD_JOBS=2" })
      local p, log = start(args)
      assert.is_true(ofed.wait_for(ofed.READY[2], p, 600), fs.read(log))
      upgrade.install(host, NEWEST, false)
      local text = wait_log(log, "ahead: kernel " .. NEWEST:gsub("%p", "%%%0") .. ": the build failed", p, 600)
      print("    " .. text:match("[^\n]*ahead: kernel [^\n]*: the build failed[^\n]*"))
      local status, out = preflight(args, NEWEST)
      assert.equal(5, status, out)
      assert.matches("kernel headers for " .. NEWEST:gsub("%p", "%%%0") .. " not found", out)
      assert.is_true(ready.live(ofed.READY[2]), "still ready")
      stop(p, log)
    end)

    it("with " .. NEWEST .. "'s headers installed, it builds for it in the background while it stays ready; a TERM "
       .. "stops that build within seconds", function()
      upgrade.install_headers(host, NEWEST)
      local p, log = start(args)
      assert.is_true(ofed.wait_for_log(log, "waiting for a signal", p, 600), fs.read(log))
      local before = ready_state()
      local text = wait_log(log, ": make %-j%d+ ahead=" .. NEWEST:gsub("%p", "%%%0"), p, 600)
      local pid = assert(tonumber(text:match("building it in the background %(pid (%d+)")))
      local stat = assert(fs.read("/proc/" .. pid .. "/stat"))
      assert.equal("19", stat:match("^%d+ %b() %S+" .. (" %S+"):rep(15) .. " (%S+)"), "the build runs at nice 19")
      local io = assert(proc.run({ "ionice", "-p", tostring(pid) }))
      assert.equal("idle\n", io.stdout)
      assert.equal(before, (ready_state()), "the ready file is as it was")
      local t0 = sys.monotonic()
      assert.is_true(sys.kill(p:pid(), "TERM"))
      local r = assert(p:wait(120))
      local seconds = sys.monotonic() - t0
      assert.equal(0, r.status, fs.read(log))
      assert.is_false(fs.exists("/proc/" .. pid), "the build's process is gone")
      for _, comm in ipairs(fs.glob("/proc/[0-9]*/comm") or {}) do
        local name = (fs.read(comm) or ""):match("^(%S*)")
        assert.is_true(name ~= "cc1" and name ~= "make", comm .. ": " .. name .. " still runs")
      end
      local after = fs.read(log)
      assert.matches("ahead: stopping the build for kernel", after, nil, true)
      assert.is_nil(after:find("ahead: kernel " .. NEWEST .. ": the build failed", 1, true),
                    "the build ahead was running, not failed, when the TERM came:\n" .. after)
      print(("    TERM during the build ahead: the run ended %.1f s later, the build with it"):format(seconds))
      assert.is_true(seconds < 60, "the run took " .. seconds .. " s to stop")
    end)

    it("started again, builds " .. NEWEST .. "'s stack in the background while ready; the plan says it is in the "
       .. "cache", function()
      local p, log = start(args)
      assert.is_true(ofed.wait_for_log(log, "waiting for a signal", p, 600), fs.read(log))
      print("    warm restart on " .. OLDER .. " (the stack loaded): "
            .. (fs.read(log):match("ready: [^\n]*%(([%d.]+ s after start)%)") or "?"))
      local before = ready_state()
      local t0 = sys.monotonic()
      local text = wait_log(log, "ahead: kernel " .. NEWEST:gsub("%p", "%%%0") .. ": built in", p, AHEAD_BUILD_TIMEOUT)
      print(("    built ahead for %s in %.0f s (the simulated stack, under emulation) while ready on %s")
            :format(NEWEST, sys.monotonic() - t0, OLDER))
      for line in text:gmatch("[^\n]*ahead[^\n]*") do
        if line:match("ahead: kernel") or line:match("modules in") then print("    " .. line) end
      end
      assert.equal(before, (ready_state()), "the ready file is as it was")
      assert.is_nil(text:find("load: unload", 1, true), "no reload: the stack was loaded, and stays")
      local status, out = preflight(args, NEWEST)
      assert.equal(0, status, out)
      stop(p, log)
      reboot_into(NEWEST)
    end)
  end)
end

if BOOT == 3 then
  describe("boot 3, after the reboot into " .. NEWEST .. ":", function()
    local host
    setup(function()
      setup_node()
      host = upgrade.node(OLDER)
      upgrade.install(host, OLDER)
    end)
    after_each(function() ofed.cleanup() end)
    teardown(function() guest.unload_all() end)

    it("the simulated stack ready from the build made ahead, with no compiler, make or configure run", function()
      assert.equal(NEWEST, upgrade.running)
      local path, runs = traps.set(assert(fs.tmpdir("traps")), { "apt-get", table.unpack(traps.BUILD) })
      upgrade.load_inbox()
      local p, log = start(sim(host, { "CCACHE=false" }), { PATH = path })
      assert.is_true(ofed.wait_for(ofed.READY[2], p, 600), fs.read(log))
      assert_no_compiler(log, runs)
      stop(p, log)
    end)

    it("refuses the build for " .. OLDER .. " (KVER) before anything is unloaded, naming both kernels", function()
      local inbox = upgrade.load_inbox()
      local lines = {}
      for _, n in ipairs(inbox) do lines[n] = guest.proc_line(n) end
      local p, log = start(sim(host, { "KVER=" .. OLDER, "CCACHE=false" }))
      local r = assert(p:wait(300))
      local text = fs.read(log)
      assert.equal(1, r.status, text)
      local refusal = text:match("[^\n]*was built for kernel [^\n]*")
      assert.truthy(refusal, text)
      assert.matches("built for kernel " .. OLDER:gsub("%p", "%%%0"), refusal)
      assert.matches("the running kernel is " .. NEWEST:gsub("%p", "%%%0"), refusal)
      print("    " .. refusal)
      for _, n in ipairs(inbox) do assert.equal(lines[n], guest.proc_line(n), n .. " is untouched") end
      ofed.assert_host_as_it_was(inbox)
    end)
  end)
end
