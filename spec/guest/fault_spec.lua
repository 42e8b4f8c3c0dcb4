-- guest-timeout: 2700 (20 cases, each a faulted run, a rerun and a stop: ~10 s each here, 3x for a slow machine, and margin)
-- Fault injection on the real kernel: recipes/ubuntu-ofed.lua stopped by SIGTERM
-- and by SIGKILL at each phase boundary, in the middle of the reload (the inbox
-- stack unloaded, OFED's not loaded yet) and in the middle of stop (OFED
-- unloaded, the inbox stack not loaded back yet) — DRVRUN_FAULT, drv.fault —
-- then a rerun to ready and a stop. After every case the host is consistent:
-- no ready file without the stack it names loaded, no stray mount, no
-- blacklist, no journal, and the inbox or the built stack loaded, never
-- neither. The table of outcomes is printed at the end.
local fs = require "drv.fs"
local proc = require "drv.proc"
local sys = require "drv.sys"
local guest = require "spec.support.guest"
local ofed = require "spec.support.ofed"

local POINTS = { "before prepare", "before await", "before build", "before install", "before load", "reload",
                 "before expose", "before ready", "ready", "restore" }
local SIGNALS = { "TERM", "KILL" }
-- The modules whose absence would leave the node without its NIC or RDMA driver.
local ESSENTIAL = { "mlx5_core", "ib_core", "mlx5_ib" }

-- Every ready file that exists names a stack that is loaded as it says (drv.probe).
local function ready_files_true()
  for _, f in ipairs(ofed.READY) do
    if fs.exists(f) then
      local r = assert(proc.run({ os.getenv("DRVRUN"), "lib/probe.lua", f }))
      assert(r.status == 0, ("%s exists but its stack is not loaded as it says: %s"):format(f, r.stdout .. r.stderr))
    end
  end
end

-- The end state of every case.
local function assert_consistent()
  ready_files_true()
  for _, f in ipairs(ofed.READY) do assert(not fs.exists(f), "no ready file after the stop: " .. f) end
  assert(not fs.exists(ofed.EXPOSE .. "/etc"), "no mount left at " .. ofed.EXPOSE)
  assert(not fs.exists(ofed.BLACKLIST), "no blacklist outside a reload")
  assert(not fs.exists(ofed.JOURNAL), "no journal left")
  for _, f in ipairs(ofed.UDEV_FILES) do assert(not fs.exists(f), "no udev file left: " .. f) end
  assert(not fs.exists(ofed.NETWORK), "no saved network configuration left")
  local mods = guest.proc_modules()
  for _, n in ipairs(ESSENTIAL) do assert(mods[n], n .. " is loaded (the inbox or the built stack)") end
end

-- Which stack is loaded: "inbox" (no out-of-tree taint), "built" or "mixed".
local function which_stack()
  local kinds = {}
  for _, n in ipairs(ESSENTIAL) do
    kinds[(fs.read("/sys/module/" .. n .. "/taint") or ""):find("O", 1, true) and "built" or "inbox"] = true
  end
  return kinds.built and kinds.inbox and "mixed" or kinds.built and "built" or "inbox"
end

describe("fault injection (ubuntu-ofed)", function()
  local env, outcomes = nil, {}
  setup(function()
    env = ofed.setup()
    env.cache = ofed.fresh_cache()
  end)
  after_each(function() ofed.cleanup() end)
  teardown(function()
    env.server:stop()
    guest.unload_all()
    print("\nfault injection: ubuntu-ofed, stopped at POINT by SIGNAL, then rerun and stopped")
    print(("  %-16s %-40s %s"):format("point", "SIGTERM", "SIGKILL"))
    for _, point in ipairs(POINTS) do
      print(("  %-16s %-40s %s"):format(point, outcomes[point .. ":TERM"] or "?", outcomes[point .. ":KILL"] or "?"))
    end
  end)

  for _, point in ipairs(POINTS) do
    for _, sig in ipairs(SIGNALS) do
      it(("SIG%s at '%s', then a rerun and a stop, leaves the host consistent"):format(sig, point), function()
        outcomes[point .. ":" .. sig] = "FAILED"
        ofed.load_inbox()
        local p, log = ofed.start(env, nil, false, { DRVRUN_FAULT = point .. ":" .. sig })
        if point == "restore" then -- stop is where the point is: stop it once it is ready
          assert.is_true(ofed.wait_for(ofed.READY[1], p), fs.read(log))
          assert.is_true(sys.kill(p:pid(), "TERM"))
        end
        local r = assert(p:wait(300), "the faulted run ended")
        local text = fs.read(log)
        assert.matches("fault: SIG" .. sig .. " at '" .. point .. "'", text, nil, true)
        local first = r.signal == "SIGKILL" and "killed" or ("exit " .. tostring(r.status))
        if sig == "KILL" then assert.equal("SIGKILL", r.signal, text) else assert.equal(0, r.status, text) end
        ready_files_true()
        local after_fault = which_stack()

        local p2, log2 = ofed.start(env, nil, true)
        assert.is_true(ofed.wait_for_log(log2, "waiting for a signal", p2), fs.read(log2))
        ready_files_true()
        local recovered = fs.read(log2):find("recovery: undoing", 1, true) and ", recovered" or ""
        assert.is_true(sys.kill(p2:pid(), "TERM"))
        assert.equal(0, assert(p2:wait(300)).status, fs.read(log2))
        assert_consistent()
        outcomes[point .. ":" .. sig] = ("%s (%s)%s; rerun ready; stop: %s"):format(first, after_fault, recovered,
                                                                                    which_stack())
      end)
    end
  end
end)
