-- guest-timeout: 3600 (40 cases, each a faulted run, a rerun and a stop: ~8 s each here, 3x for a slow machine, and margin)
-- Fault injection on the real kernel: each recipe (ubuntu-ofed, peermem) stopped
-- by SIGTERM and by SIGKILL at each phase boundary, in the middle of the reload
-- (the old stack unloaded, the new one not loaded yet) and in the middle of
-- stop (the stack unloaded, the previous one not loaded back yet) — DRVRUN_FAULT,
-- drv.fault — then a rerun to ready and a stop. After every case the host is
-- consistent: no ready file without the stack it names loaded, no stray mount,
-- no blacklist, no journal, RCU grace periods normal again (a swap expedites
-- them), and the inbox or the built stack loaded, never neither. The table of
-- outcomes is printed at the end.
local fs = require "drv.fs"
local kmod = require "drv.kmod"
local mount = require "drv.mount"
local proc = require "drv.proc"
local sys = require "drv.sys"
local guest = require "spec.support.guest"
local ofed = require "spec.support.ofed"

local POINTS = { "before prepare", "before await", "before build", "before install", "before load", "reload",
                 "before expose", "before ready", "ready", "restore" }
local SIGNALS = { "TERM", "KILL" }
local KVER = sys.uname().release

-- Every ready file of `files` that exists names a stack loaded as it says (drv.ready).
local function ready_files_true(files)
  for _, f in ipairs(files) do
    if fs.exists(f) then
      local r = assert(proc.run({ os.getenv("DRVRUN"), "lib/probe.lua", f }))
      assert(r.status == 0, ("%s exists but its stack is not loaded as it says: %s"):format(f, r.stdout .. r.stderr))
    end
  end
end

-- Which stack `names` is loaded: "inbox" (no out-of-tree taint), "built", "mixed" or "none".
local function which(names)
  local kinds = {}
  for _, n in ipairs(names) do
    local taint = fs.read("/sys/module/" .. n .. "/taint")
    kinds[not taint and "none" or taint:find("O", 1, true) and "built" or "inbox"] = true
  end
  local list = {}
  for _, k in ipairs { "inbox", "built", "none" } do if kinds[k] then list[#list + 1] = k end end
  return #list == 1 and list[1] or "mixed (" .. table.concat(list, ", ") .. ")"
end

-- What each recipe's cases need: how to put the host in its starting state,
-- start a run, and what must hold once a case is over.
local RECIPES = {}

RECIPES["ubuntu-ofed"] = function()
  local env
  local essential = { "mlx5_core", "ib_core", "mlx5_ib" }
  return {
    ready = ofed.READY,
    journal = ofed.JOURNAL,
    setup = function()
      env = ofed.setup()
      env.cache = ofed.fresh_cache()
    end,
    teardown = function()
      env.server:stop()
      guest.unload_all()
    end,
    before = function() ofed.load_inbox() end,
    start = function(vars, after_crash) return ofed.start(env, nil, after_crash, vars) end,
    state = function() return which(essential) end,
    assert_end = function()
      assert(not fs.exists(ofed.EXPOSE .. "/etc"), "no mount left at " .. ofed.EXPOSE)
      assert(not fs.exists(ofed.BLACKLIST), "no blacklist outside a reload")
      for _, f in ipairs(ofed.UDEV_FILES) do assert(not fs.exists(f), "no udev file left: " .. f) end
      assert(not fs.exists(ofed.NETWORK), "no saved network configuration left")
      local mods = guest.proc_modules()
      for _, n in ipairs(essential) do assert(mods[n], n .. " is loaded (the inbox or the built stack)") end
    end,
  }
end

RECIPES.peermem = function()
  local env, ofed_p, cache, root, rc
  local nvidia_root, ready = "/run/nvidia/driver", "/run/peermem/.driver-ready"
  rc = {
    ready = { ready },
    journal = "/run/drvrun/peermem.journal",
    setup = function()
      env = ofed.setup()
      env.cache = ofed.fresh_cache()
      ofed.load_inbox()
      local log
      ofed_p, log = ofed.start(env, { "RESTORE_DRIVER_ON_POD_TERMINATION=false" })
      assert(ofed.wait_for(ofed.READY[2], ofed_p), fs.read(log))
      rc.keep = ofed_p -- it runs through every case
      assert(fs.mkdir(nvidia_root))
      if not mount.is_mountpoint(nvidia_root) then assert(mount.bind(guest.built .. "/nvidia-root", nvidia_root)) end
      local ko = ("%s/lib/modules/%s/kernel/drivers/video/nvidia.ko"):format(nvidia_root, KVER)
      if not guest.proc_line("nvidia") then assert(kmod.insert_many { { name = "nvidia", path = ko } }) end
      cache, root = fs.tmpdir("peermem-cache"), fs.tmpdir("peermem-root")
      assert(proc.run({ "cp", "-a", fs.realpath("build/cache") .. "/peermem", cache }).status == 0)
    end,
    teardown = function()
      if ofed_p:running() then ofed_p:kill("TERM") ofed_p:wait(120) end
      env.server:stop()
      guest.unload_all()
      mount.umount(nvidia_root, { lazy = true })
    end,
    before = function() end,
    start = function(vars)
      local source = assert(fs.glob(guest.fixtures .. "/nv_peer_memory-*.tgz"))[1]
      return ofed.start_recipe("recipes/peermem.lua", { "PEERMEM_SOURCE=" .. source, "ROOT=" .. root,
        "CACHE_DIR=" .. cache, "READY_FILES=" .. ready, "LOCK_TIMEOUT=60", "AWAIT_TIMEOUT=60" }, vars)
    end,
    state = function() return "nv_peer_mem " .. (guest.proc_line("nv_peer_mem") and "loaded" or "not loaded") end,
    assert_end = function()
      assert(not guest.proc_line("nv_peer_mem"), "nv_peer_mem is unloaded by the stop")
      assert(ofed_p:running(), "the OFED container is untouched")
      ready_files_true(ofed.READY)
      assert(fs.exists(ofed.READY[1]), "OFED is still ready")
    end,
  }
  return rc
end

for _, name in ipairs { "ubuntu-ofed", "peermem" } do
  describe("fault injection (" .. name .. ")", function()
    local rc, outcomes = RECIPES[name](), {}
    setup(function() rc.setup() end)
    after_each(function()
      for _, p in ipairs(ofed.running) do
        if p:running() and p ~= rc.keep then p:kill("TERM") p:wait(60) end
      end
    end)
    teardown(function()
      rc.teardown()
      print(("\nfault injection: %s, stopped at POINT by SIGNAL, then rerun and stopped"):format(name))
      print(("  %-16s %-44s %s"):format("point", "SIGTERM", "SIGKILL"))
      for _, point in ipairs(POINTS) do
        print(("  %-16s %-44s %s"):format(point, outcomes[point .. ":TERM"] or "?", outcomes[point .. ":KILL"] or "?"))
      end
    end)

    for _, point in ipairs(POINTS) do
      for _, sig in ipairs(SIGNALS) do
        it(("SIG%s at '%s', then a rerun and a stop, leaves the host consistent"):format(sig, point), function()
          outcomes[point .. ":" .. sig] = "FAILED"
          rc.before()
          local p, log = rc.start({ DRVRUN_FAULT = point .. ":" .. sig })
          if point == "restore" then -- the point is in stop: stop the run once it is ready
            assert.is_true(ofed.wait_for(rc.ready[1], p), fs.read(log))
            assert.is_true(sys.kill(p:pid(), "TERM"))
          end
          local r = assert(p:wait(300), "the faulted run ended")
          local text = fs.read(log)
          assert.matches("fault: SIG" .. sig .. " at '" .. point .. "'", text, nil, true)
          if sig == "KILL" then assert.equal("SIGKILL", r.signal, text) else assert.equal(0, r.status, text) end
          ready_files_true(rc.ready)
          local first = ("%s, %s"):format(sig == "KILL" and "killed" or "exit 0", rc.state())

          local p2, log2 = rc.start({}, true)
          assert.is_true(ofed.wait_for_log(log2, "waiting for a signal", p2), fs.read(log2))
          ready_files_true(rc.ready)
          for _, f in ipairs(rc.ready) do assert.is_true(fs.exists(f), "the rerun is ready: " .. f) end
          local recovered = fs.read(log2):find("recovery: undoing", 1, true) and ", recovered" or ""
          assert.is_true(sys.kill(p2:pid(), "TERM"))
          assert.equal(0, assert(p2:wait(300)).status, fs.read(log2))
          for _, f in ipairs(rc.ready) do assert.is_false(fs.exists(f), "no ready file after the stop: " .. f) end
          assert.is_false(fs.exists(rc.journal), "no journal left")
          assert.equal("0", fs.read("/sys/kernel/rcu_expedited"):match("%d"), "RCU grace periods normal again")
          rc.assert_end()
          outcomes[point .. ":" .. sig] = ("%s%s; rerun ready; stop: %s"):format(first, recovered, rc.state())
        end)
      end
    end
  end)
end
