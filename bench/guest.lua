--- bench/guest.lua ROWS_FILE: the real-kernel part of `make bench`, run by
-- bench/main.lua in the QEMU guest (spec/vm/run). Writes its result rows to
-- ROWS_FILE (Lua source) and its progress to stderr. Each stack's build comes
-- from a build cache filled on the host (build/cache: the simulated bundle,
-- build/cache-real: the real MLNX_OFED 25.10), installed with the index
-- bench/main.lua made on the host (OUT/stage-sim, OUT/stage-real).
--
-- 1. Reload downtime: the OFED stack (the simulated one, then the real one)
--    replaces the loaded inbox RDMA stack. Six contenders, in rotating order,
--    each from the same state:
--    drvrun (the recipe, WAIT=false), drvrun's swap by levels (bench/swap.lua
--    levels: a barrier between dependency levels, the way the graph replaced),
--    drvrun with normal RCU grace periods (the kernel's rcu_normal=1 overrides
--    the expedited ones drvrun's swap asks for: drv.stack.expedited), the
--    seed's shell (bench/seed-reload.sh), modprobe (bench/modprobe-reload.sh),
--    and the floor (build/floor, one syscall at a time in the order drvrun's
--    plan gives, with grace periods expedited as drvrun's swap has them: the
--    same work for the kernel). The downtime is read from the
--    kernel's own trace of the syscalls: from the entry of the first
--    delete_module(2) that succeeded to the return of the last finit_module(2)
--    that succeeded. Every run is checked: the new stack loaded, as built.
--    The floor's trace also gives each module's unload and load time alone;
--    the critical path of the stack's graph is the longest chain of unloads
--    (holders first) plus the longest chain of loads (dependencies first),
--    each module weighing its median time alone: what a swap that starts
--    every module as soon as what it waits for is done cannot beat.
-- 1b. Traffic through the swap (the simulated stack): a simulated PF cabled to
--    its peer in a network namespace of its own (spec/fixtures/sim-pci), the
--    other build of the stack loaded, the PF configured; the peer pings the
--    PF's address every 10 ms (bench/pinger.lua) while drvrun swaps the stack
--    and keeps its network (bench/swap.lua: drv.netcfg.around over
--    drv.stack.swap, as the recipe's load phase runs them): the traffic gap is
--    the longest time between two replies, the swap's downtime the trace's.
--    The real stack has no device without ConnectX hardware: no traffic there.
-- 2. Cold start (the simulated stack): empty build cache, bundle over HTTP on
--    127.0.0.1, build in the guest, reload, ready; peak RSS of that whole run
--    (bench/recipe-rss.lua).
-- 3. Warm restart (both stacks): the built stack loaded, its headers
--    installed, cache present: start to ready file, against the start of a
--    bare `lua5.4 -e ''` in turns with it (the ratio is the target: absolute
--    times in an emulated guest depend on the machine).
-- 4. A kernel upgrade (both stacks; bench/main.lua boots the guest on the older
--    kernel, Makefile's UPGRADE_KVER, and this script asks spec/vm/run for the
--    reboot into the newest): the start after a reboot (the inbox stack loaded,
--    no state in /run, the stack's build for the running kernel in the cache) on
--    the older kernel, then on the newest from its build made ahead (tools/fill-
--    cache made both on the host with the build ahead's command, build-only for
--    a kernel); the vendor's way, the build after the reboot, is the cold start
--    (2.). On the older kernel, a reload of the simulated stack while the build
--    ahead for the newest runs (drv.ahead.command: nice 19, idle I/O, its jobs),
--    in turns with one while that build is stopped (SIGSTOP to its group).
local kmod = require "drv.kmod"
local mount = require "drv.mount"
local stack = require "drv.stack"
local graph = require "drv.graph"
local proc = require "drv.proc"
local sys = require "drv.sys"
local fs = require "drv.fs"
local util = require "bench.util"
local httpd = require "spec.support.httpd"
local ahead = require "drv.ahead"
local kernel = require "spec.support.kernel"

local OUT = assert(arg[1], "usage: bench/guest.lua ROWS_FILE")
local REPS = tonumber(os.getenv("BENCH_REPS") or "") or 5
local WARM_REPS = 4 * REPS + 1 -- a restart costs a fraction of a second; its median wants more samples
local ROOT = assert(fs.realpath("."))
local DRVRUN = ROOT .. "/build/drvrun"
local FLOOR = ROOT .. "/build/floor"
local K = sys.uname().release
local MODDIR = "/lib/modules/" .. K
local FIXTURES = ROOT .. "/build/fixtures"
local WORK = "/run/bench"                                    -- guest tmpfs
local READY = WORK .. "/ready"
local TRACE = "/sys/kernel/tracing"
local RCU_EXPEDITED, RCU_NORMAL = "/sys/kernel/rcu_expedited", "/sys/kernel/rcu_normal"
local RECIPE = dofile("recipes/ubuntu-ofed.lua")
local VENDOR = os.getenv("VENDOR") or ROOT .. "/../shared/vendor"
local NEWEST = kernel.release -- the guest boots the older kernel first, then this one
local BOOT = tonumber(os.getenv("DRVRUN_VM_BOOT") or "1")
local rows = {}
local say = util.say

local function put(path, value) -- tracefs files: written in place, not atomically
  local f = assert(io.open(path, "w"))
  assert(f:write(value))
  assert(f:close())
end

local function sim_bundle()
  local path = assert(fs.glob(FIXTURES .. "/sim-ofed-[0-9]*.tgz")[1], "no sim-ofed bundle: run make fixtures")
  local name = path:match("[^/]+$")
  for line in io.lines(FIXTURES .. "/SHA256SUMS") do
    local sha, file = line:match("^(%x+)%s+(%S+)$")
    if file == name then return path, name, sha end
  end
  error("no checksum for " .. name)
end

-- The stacks: where their build cache and staged index are, their bundle, and
-- (from the build) their modules' dependencies and srcversions.
local function new_stack(key, label, cache, bundle, name, sha)
  local s = { key = key, label = label, cache = cache, bundle = bundle, bundle_name = name, sha = sha,
              stage = ("%s/build/bench/stage-%s/lib/modules/%s"):format(ROOT, key, K) }
  local build = util.cached_build(cache, "ubuntu-ofed", K)
  s.deps = util.built_stack(RECIPE.stack, build.modules).deps
  s.names = RECIPE.stack
  s.want = {}
  for _, m in ipairs(build.modules) do
    if s.deps[m.name] then s.want[m.name] = m.srcversion end
  end
  return s
end
local SIM = new_stack("sim", "", ROOT .. "/build/cache", sim_bundle())
local REAL_NAME = "MLNX_OFED_SRC-debian-25.10-1.7.1.1.tgz"
local REAL = new_stack("real", " (real stack)", ROOT .. "/build/cache-real", VENDOR .. "/" .. REAL_NAME, REAL_NAME,
  "3e42df1e2081b7ccb602c5c15fb757687b2480d9a140141b9741f245348d79c0")

-- ---- the kernel's trace of the module syscalls ------------------------------

local function trace_setup()
  if not fs.exists(TRACE .. "/trace") then util.must({ "mount", "-t", "tracefs", "nodev", TRACE }) end
  if not fs.exists(TRACE .. "/events/syscalls/sys_enter_delete_module") then
    error("this kernel has no syscall trace events (CONFIG_FTRACE_SYSCALLS)")
  end
  put(TRACE .. "/buffer_size_kb", "512")
  put(TRACE .. "/trace_clock", "mono")
  for _, call in ipairs({ "delete_module", "finit_module", "init_module" }) do
    for _, side in ipairs({ "enter", "exit" }) do
      put(("%s/events/syscalls/sys_%s_%s/enable"):format(TRACE, side, call), "1")
    end
  end
  put(TRACE .. "/tracing_on", "1")
end

local function trace_clear() put(TRACE .. "/trace", "") end

-- The module syscalls in the trace that succeeded, in the order they were entered:
-- `{ { call = "delete_module"|"finit_module"|"init_module", enter, exit }... }`.
local function trace_calls()
  local open, calls = {}, {}
  for line in assert(fs.read(TRACE .. "/trace")):gmatch("[^\n]+") do
    local tid, ts, what = line:match("%-(%d+)%s+%[%d+%].-%s(%d+%.%d+): (.*)$")
    if tid then
      local call = what:match("^sys_([%w_]+_module)%(")
      local ret_call, ret = what:match("^sys_([%w_]+_module) %-> (0x%x+)")
      if call then
        open[tid] = { call = call, enter = tonumber(ts) }
      elseif ret_call and open[tid] and open[tid].call == ret_call then
        local c = open[tid]
        open[tid] = nil
        c.exit = tonumber(ts)
        if ret == "0x0" then calls[#calls + 1] = c end
      end
    end
  end
  table.sort(calls, function(a, b) return a.enter < b.enter end)
  return calls
end

-- Downtime in the trace: first successful delete_module entry to last successful load return.
local function trace_downtime(calls)
  calls = calls or trace_calls()
  local first, last, unloads, loads = nil, nil, 0, 0
  for _, c in ipairs(calls) do
    if c.call == "delete_module" then
      unloads = unloads + 1
      if not first or c.enter < first then first = c.enter end
    else
      loads = loads + 1
      if not last or c.exit > last then last = c.exit end
    end
  end
  if not first or not last then return nil, ("trace: %d unloads, %d loads"):format(unloads, loads) end
  return last - first, unloads, loads
end

-- Each module's time alone in a run of the floor (one syscall at a time, in the order given):
-- `{ unload = { [name] = seconds }, load = { [name] = seconds } }`.
local function alone_times(calls, unload_order, load_order)
  local t, u, l = { unload = {}, load = {} }, 0, 0
  for _, c in ipairs(calls) do
    if c.call == "delete_module" then
      u = u + 1
      t.unload[unload_order[u]] = c.exit - c.enter
    else
      l = l + 1
      t.load[load_order[l]] = c.exit - c.enter
    end
  end
  return t
end

-- The longest chain of `edges` (`{ [name] = { names before it } }`), each name weighing `t[name]`.
local function critical_path(edges, t)
  local memo = {}
  local function chain(n)
    if not memo[n] then
      local before = 0
      for _, d in ipairs(edges[n] or {}) do
        if t[d] then before = math.max(before, chain(d)) end
      end
      memo[n] = before + t[n]
    end
    return memo[n]
  end
  local longest = 0
  for n in pairs(t) do longest = math.max(longest, chain(n)) end
  return longest
end

-- The same with a barrier between levels: the slowest of each level, summed.
local function levels_path(levels, t)
  local sum = 0
  for _, level in ipairs(levels) do
    local slowest = 0
    for _, n in ipairs(level) do slowest = math.max(slowest, t[n] or 0) end
    sum = sum + slowest
  end
  return sum
end

-- ---- module states ------------------------------------------------------------

local function loaded_set()
  local set = {}
  for _, m in ipairs(assert(kmod.new()):loaded()) do set[m.name] = true end
  return set
end

-- The inbox stack, loaded and in use as on a node: rdma_ucm holds rdma_cm, mlx5_ib holds mlx5_core...
local INBOX_TOPS = { "mlx5_ib", "rdma_ucm", "ib_umad" }
local inbox, previous, everything

local function load_inbox_first()
  local ctx = assert(kmod.new())
  local before = loaded_set()
  for _, m in ipairs(INBOX_TOPS) do assert(ctx:insert(m)) end
  inbox = {}
  for name in pairs(loaded_set()) do if not before[name] then inbox[#inbox + 1] = name end end
  table.sort(inbox)
  previous = stack.remember(ctx, inbox) -- the inbox files, before the new index points elsewhere
  everything = {}
  local in_stack = {}
  for _, name in ipairs(RECIPE.stack) do everything[#everything + 1], in_stack[name] = name, true end
  for _, name in ipairs(inbox) do
    if not in_stack[name] and name ~= "configfs" then everything[#everything + 1] = name end
  end
  say("inbox stack loaded: %s", table.concat(inbox, " "))
end

-- Back to the inbox stack, whatever is loaded now.
local function reset_inbox()
  assert(stack.restore(everything, previous))
  local ctx = assert(kmod.new())
  for _, name in ipairs(inbox) do
    local st = ctx:state(name)
    assert(st and st.taint == "", name .. " must be the inbox module again")
  end
end

-- A stack as the recipe installs it (in place of the one installed before),
-- with the index depmod made on the host.
local function install_stack(s)
  local dir = MODDIR .. "/updates/ubuntu-ofed"
  assert(fs.remove(dir, { recursive = true, missing_ok = true }))
  assert(fs.mkdir(dir))
  for _, ko in ipairs(fs.glob(s.stage .. "/updates/ubuntu-ofed/*.ko")) do
    assert(fs.copy(ko, dir .. "/" .. ko:match("[^/]+$"), { sync = false }))
  end
  for _, f in ipairs(fs.glob(s.stage .. "/modules.*")) do
    if fs.lstat(f).type == "file" then assert(fs.copy(f, MODDIR .. "/" .. f:match("[^/]+$"))) end
  end
end

local function new_paths(s)
  local paths = {}
  for _, name in ipairs(s.names) do paths[name] = ("%s/updates/ubuntu-ofed/%s.ko"):format(MODDIR, name) end
  return paths
end

-- Modules of the new stack nothing else in it depends on.
local function tops(edges)
  local used = {}
  for _, deps in pairs(edges) do for _, d in ipairs(deps) do used[d] = true end end
  local list = {}
  for name in pairs(edges) do if not used[name] then list[#list + 1] = name end end
  table.sort(list)
  return list
end

-- ---- 1. reload downtime -----------------------------------------------------------

local function recipe_args(s, extra)
  local args = { "recipes/ubuntu-ofed.lua", "OFED_URL=file://" .. s.bundle, "OFED_SHA256=" .. s.sha,
                 "STATE_DIR=" .. WORK .. "/state", "LOCK_FILE=" .. WORK .. "/host.lock",
                 "BLACKLIST_FILE=/etc/modprobe.d/bench-blacklist-ofed.conf", "EXPOSE_PATH=" .. WORK .. "/expose",
                 "UDEV_RULES_DIR=",
                 "READY_FILES=" .. READY }
  for _, a in ipairs(extra) do args[#args + 1] = a end
  return args
end

-- The expose path shared with the guest, as a driver container's volume is
-- (drvrun refuses one the host would not see); the run's own namespace keeps it so.
local function shared_expose()
  local dir = WORK .. "/expose"
  assert(fs.mkdir(dir))
  if not mount.is_mountpoint(dir) then
    assert(mount.bind(dir, dir))
    assert(mount.propagation(dir, "shared"))
  end
end

-- The command line of a recipe reload run by `argv` (drvrun, the recipe and its arguments), from
-- a fresh state, in a mount namespace of its own.
local function reload_argv(argv)
  fs.remove(WORK .. "/state", { recursive = true, missing_ok = true })
  shared_expose()
  return table.move(argv, 1, #argv, 5, { "unshare", "-m", "--propagation", "unchanged" })
end

-- The recipe's reload (WAIT=false) from the build cache `cache`: the drvrun contenders' command line.
local function recipe_reload(s, _, cache)
  return reload_argv({ DRVRUN, table.unpack(recipe_args(s, { "WAIT=false", "CACHE_DIR=" .. cache })) })
end

local contenders = {
  { key = "drvrun", name = "drvrun (recipe reload, along the graph)", argv = recipe_reload },
  { key = "levels", name = "drvrun's swap by levels (a barrier between levels)", argv = function(s)
      return { DRVRUN, "bench/swap.lua", "levels", "-", table.unpack(s.names) }
    end },
  { key = "shell", name = "seed shell (rmmod over holders, modprobe each)", argv = function(_, plan)
      return { "sh", "bench/seed-reload.sh", table.concat(plan.loaded, " "), table.concat(graph.flatten(plan.load), " ") }
    end },
  { key = "modprobe", name = "modprobe -r each / modprobe tops", argv = function(s, plan)
      return { "sh", "bench/modprobe-reload.sh", table.concat(graph.flatten(plan.unload), " "),
        table.concat(tops(s.deps), " ") }
    end },
  { key = "normal", name = "drvrun, normal RCU grace periods (the kernel's rcu_normal=1)", rcu_normal = true,
    argv = recipe_reload },
  { key = "floor", name = "floor (sequential syscalls, precomputed)", expedited = true, argv = function(s, plan)
      local argv, paths = { FLOOR }, new_paths(s)
      for _, n in ipairs(graph.flatten(plan.unload)) do argv[#argv + 1] = "-r"; argv[#argv + 1] = n end
      for _, n in ipairs(graph.flatten(plan.load)) do argv[#argv + 1] = "-i"; argv[#argv + 1] = paths[n] end
      return argv
    end },
}

-- A copy of a stack's build cache in the guest's tmpfs, as a node has it on
-- its own disk rather than on this guest's 9p share of the host (~1 ms each
-- file opened there): what a restart reads, without the ccache and the builds
-- for other kernels.
local function local_cache(s)
  local cache = WORK .. "/cache-" .. s.key
  assert(fs.mkdir(cache .. "/ubuntu-ofed"))
  for _, name in ipairs(assert(fs.dir(s.cache .. "/ubuntu-ofed"))) do
    local other_kernel = name:match("^%d+%.%d") and name ~= K
    if name ~= "ccache" and not other_kernel then
      util.must({ "cp", "-a", s.cache .. "/ubuntu-ofed/" .. name, cache .. "/ubuntu-ofed/" })
    end
  end
  return cache
end

local function bench_reload(s)
  local cache = s.cache
  local times, alone, plan0 = {}, { unload = {}, load = {} }, nil
  for _, c in ipairs(contenders) do times[c.key] = {} end
  for rep = 1, REPS do
    for i = 0, #contenders - 1 do
      local c = contenders[(rep + i - 1) % #contenders + 1]
      reset_inbox()
      local plan = stack.plan(s.names, stack.snapshot(assert(kmod.new())), { deps = s.deps })
      assert(#plan.blockers == 0, table.concat(plan.blockers, "; "))
      local argv = c.argv(s, plan, cache)
      plan0 = plan0 or plan
      trace_clear()
      if c.expedited then put(RCU_EXPEDITED, "1") end
      if c.rcu_normal then put(RCU_NORMAL, "1") end
      local wall, res = util.time(argv, { stdout = "capture", stderr = "stdout" })
      if c.expedited then put(RCU_EXPEDITED, "0") end
      if c.rcu_normal then put(RCU_NORMAL, "0") end
      local calls = trace_calls()
      local down, unloads, loads = trace_downtime(calls)
      if c.key == "floor" and down then
        local t = alone_times(calls, graph.flatten(plan.unload), graph.flatten(plan.load))
        for _, kind in ipairs { "unload", "load" } do
          for n, secs in pairs(t[kind]) do
            alone[kind][n] = alone[kind][n] or {}
            table.insert(alone[kind][n], secs)
          end
        end
      end
      if res.status ~= 0 or not down then
        error(("%s failed (exit %s, %s):\n%s"):format(c.key, tostring(res.status), tostring(unloads), res.stdout))
      end
      local good, bad = stack.verify(assert(kmod.new()), s.want)
      if not good then error(c.key .. " did not load the new stack as built: " .. table.concat(bad, "; ")) end
      local own = res.stdout:match("the stack was down for ([%d.]+) s")
      times[c.key][#times[c.key] + 1] = down
      say("reload%s %d/%d %-8s down %.3f s (%d unloads, %d loads), process %.3f s%s", s.label, rep, REPS, c.key, down,
        unloads, loads, wall, own and (", drvrun says " .. own .. " s") or "")
    end
  end
  local m = {}
  for _, c in ipairs(contenders) do
    m[c.key] = util.median(times[c.key])
    rows[#rows + 1] = util.info("reload downtime" .. s.label .. ": " .. c.name, m[c.key], "s")
  end
  local label = "reload" .. s.label
  rows[#rows + 1] = util.target(label .. ": drvrun / floor", m.drvrun, "s", m.floor, m.drvrun / m.floor, "<=", 0.85)
  rows[#rows + 1] = util.target(label .. ": shell / drvrun (speed-up)", m.drvrun, "s", m.shell, m.shell / m.drvrun,
    ">=", 3)
  rows[#rows + 1] = util.target(label .. ": modprobe / drvrun (speed-up)", m.drvrun, "s", m.modprobe,
    m.modprobe / m.drvrun, ">=", 1.5)
  -- the critical path, from each module's median time alone (the floor's runs)
  local t = { unload = {}, load = {} }
  for _, kind in ipairs { "unload", "load" } do
    for n, list in pairs(alone[kind]) do t[kind][n] = util.median(list) end
  end
  for _, kind in ipairs { "unload", "load" } do
    local each = {}
    for _, n in ipairs(graph.flatten(plan0[kind])) do each[#each + 1] = ("%s %.3f"):format(n, t[kind][n] or 0) end
    say("reload%s: each module's %s alone (median s): %s", s.label, kind, table.concat(each, ", "))
  end
  local cp_unload, cp_load = critical_path(plan0.unload_after, t.unload), critical_path(s.deps, t.load)
  local cp = cp_unload + cp_load
  local lv = levels_path(plan0.unload, t.unload) + levels_path(plan0.load, t.load)
  say("reload%s: critical path %.3f s (unload chain %.3f s, load chain %.3f s), by levels %.3f s, sum of all %.3f s",
    s.label, cp, cp_unload, cp_load, lv, m.floor)
  rows[#rows + 1] = util.info(("reload%s: critical path (unload chain %.3f + load chain %.3f s, alone)"):format(
    s.label, cp_unload, cp_load), cp, "s")
  rows[#rows + 1] = util.info(("reload%s: the same with a barrier between levels"):format(s.label), lv, "s")
  rows[#rows + 1] = util.target(label .. ": drvrun / critical path", m.drvrun, "s", cp, m.drvrun / cp, "<=", 1.15)
  rows[#rows + 1] = util.compare(label .. ": by levels / drvrun (the graph's gain)", m.drvrun, "s", m.levels,
    m.levels / m.drvrun)
  rows[#rows + 1] = util.compare(label .. ": normal grace periods / drvrun (expedited ones' gain)", m.drvrun, "s",
    m.normal, m.normal / m.drvrun)
  fs.remove(WORK .. "/state", { recursive = true, missing_ok = true }) -- the WAIT=false runs' journal
end

-- ---- 1b. traffic through the swap (the simulated stack) -------------------------------

local PEER_NS, PF_ID, PF_DEVICE = "benchpeer", "3", "0000:03:00.0"
local PF_CIDR, PEER_CIDR = "10.20.0.1/24", "10.20.0.254/24"
local SIMBUS = "/sys/bus/sim_pci"

-- The other build of stack `s` (the simulated one), to swap from: `paths, deps`.
local function next_build(s)
  local paths, deps = {}, {}
  for _, name in ipairs(s.names) do
    local ko = assert(fs.glob(FIXTURES .. "/built/sim-ofed-next/src/*/" .. name .. ".ko")[1], name)
    paths[name], deps[name] = ko, assert(kmod.modinfo(ko)).depends
  end
  return paths, deps
end

-- The times a pinger wrote (bench/pinger.lua), in order.
local function replies(path)
  local list = {}
  for line in (fs.read(path) or ""):gmatch("[^\n]+") do list[#list + 1] = tonumber(line) end
  return list
end

-- The longest time between two replies.
local function longest_gap(times)
  local gap = 0
  for i = 2, #times do gap = math.max(gap, times[i] - times[i - 1]) end
  return gap
end

local function wait_for(what, check, timeout)
  local deadline = sys.monotonic() + timeout
  while not check() do
    if sys.monotonic() > deadline then error(what .. ": not within " .. timeout .. " s") end
    sys.sleep(0.05)
  end
end

-- The NIC: a PF of the simulated bus, its peer in a network namespace of its own.
local function traffic_setup()
  assert(kmod.insert_many { { name = "sim_pci", path = FIXTURES .. "/built/sim-pci/sim_pci.ko" } })
  put(SIMBUS .. "/new_device", PF_ID)
  util.must({ "ip", "netns", "add", PEER_NS })
  util.must({ "ip", "link", "set", "simpeer" .. PF_ID, "netns", PEER_NS })
  util.must({ "ip", "-n", PEER_NS, "addr", "add", PEER_CIDR, "dev", "simpeer" .. PF_ID })
  util.must({ "ip", "-n", PEER_NS, "link", "set", "simpeer" .. PF_ID, "up" })
end

local function traffic_teardown()
  reset_inbox()
  put(SIMBUS .. "/del_device", PF_ID)
  assert(kmod.remove_many { "sim_pci" })
  util.must({ "ip", "netns", "del", PEER_NS })
end

-- The other build loaded, the PF's netdev (the driver made it afresh) given its address, up.
local function traffic_reset(paths, deps)
  assert(stack.unload_all(assert(kmod.new()), everything))
  assert(stack.load(assert(graph.levels(deps)), paths, nil, deps))
  local pf = assert((fs.dir(SIMBUS .. "/devices/" .. PF_DEVICE .. "/net") or {})[1], "the PF has no netdev")
  util.must({ "ip", "addr", "add", PF_CIDR, "dev", pf })
  util.must({ "ip", "link", "set", pf, "up" })
end

-- One swap with the peer pinging through it: the traffic gap and the swap's downtime.
local function traffic_once(s, paths, deps)
  traffic_reset(paths, deps)
  local out, stop = WORK .. "/pings", WORK .. "/pings.stop"
  fs.remove(stop, { missing_ok = true })
  fs.remove(out, { missing_ok = true })
  local pinger = assert(proc.spawn({ "ip", "netns", "exec", PEER_NS, DRVRUN, "bench/pinger.lua", PF_CIDR:match("^[^/]+"),
                                     out, stop }, { stdout = "null", stderr = "null" }))
  local ok, err = pcall(function()
    wait_for("the peer's first replies", function() return #replies(out) >= 5 end, 120)
    trace_clear()
    local _, res = util.time({ DRVRUN, "bench/swap.lua", "graph", WORK .. "/net-state", table.unpack(s.names) },
                             { stdout = "capture", stderr = "stdout" })
    if res.status ~= 0 then error("bench/swap.lua failed:\n" .. res.stdout) end
    local t1 = sys.monotonic()
    wait_for("the peer's replies after the swap", function()
      local n = 0
      for _, t in ipairs(replies(out)) do if t > t1 then n = n + 1 end end
      return n >= 5
    end, 120)
    return res.stdout
  end)
  assert(fs.write(stop, ""))
  if not pinger:wait(60) then pinger:kill("KILL") pinger:wait() end
  if not ok then error(err, 0) end
  local down = assert(trace_downtime())
  local good, bad = stack.verify(assert(kmod.new()), s.want)
  if not good then error("the swap did not load the stack as built: " .. table.concat(bad, "; ")) end
  return longest_gap(replies(out)), down, err:match("settings restored, %d+ could not be, in ([%d.]+) s")
end

local function bench_traffic(s)
  traffic_setup()
  local paths, deps = next_build(s)
  local gaps, downs = {}, {}
  local ok, err = pcall(function()
    for rep = 1, REPS do
      local gap, down, restore = traffic_once(s, paths, deps)
      gaps[#gaps + 1], downs[#downs + 1] = gap, down
      say("traffic %d/%d: gap %.3f s, swap down %.3f s (network restored in %s s)", rep, REPS, gap, down,
        tostring(restore))
    end
  end)
  traffic_teardown()
  if not ok then error(err, 0) end
  local g, d = util.median(gaps), util.median(downs)
  rows[#rows + 1] = util.info("traffic: the swap's module downtime (a peer pinging)", d, "s")
  rows[#rows + 1] = util.target("traffic: gap in the peer's replies / the swap's downtime", g, "s", d, g / d, "<=", 1.5)
  rows[#rows + 1] = util.note("traffic through the swap (real stack)", "not measured: the real mlx5_core binds only "
    .. "ConnectX hardware, and the guest has none")
end

-- ---- 2. and 3. cold start, warm restart ----------------------------------------------

-- How often a start is looked at: an exit ends the wait at once, the ready file
-- is seen at the next look, half a period late on average (1 ms of an 80 ms
-- restart at the 2 ms this was). Both the restarts and the bare starts poll so.
local POLL = 0.0005

-- Start argv; seconds until the ready file appears, and the process's result after TERM.
local function start_to_ready(argv, timeout)
  fs.remove(READY, { missing_ok = true })
  local t0 = sys.monotonic()
  local p = assert(proc.spawn(argv, { stdout = "capture", stderr = "stdout" }))
  local res
  while not fs.exists(READY) and sys.monotonic() - t0 < timeout do
    res = p:wait(POLL)
    if res then break end
  end
  local dt = sys.monotonic() - t0
  if not res then
    p:kill("TERM")
    res = assert(p:wait(120))
  end
  if not fs.exists(READY) and res.status ~= 0 then
    error(("%s: not ready (exit %s):\n%s"):format(argv[#argv], tostring(res.status), res.stdout))
  end
  return dt, res
end

-- Seconds from spawning argv until it exits, polled as start_to_ready polls
-- (the poll costs the guest's CPUs the same for both).
local function start_to_exit(argv)
  local t0 = sys.monotonic()
  local p = assert(proc.spawn(argv, { stdout = "null", stderr = "null" }))
  local res
  repeat res = p:wait(POLL) until res
  if res.status ~= 0 then error(table.concat(argv, " ") .. ": exit " .. tostring(res.status or res.signal)) end
  return sys.monotonic() - t0
end

local function ready_seconds(res)
  return tonumber(res.stdout:match("ready: .- %(([%d.]+) s after start%)"))
end

-- The runtime as an image holds it (bench/main.lua staged `make install`),
-- copied to tmpfs: a restarted container runs drvrun from its image's layers,
-- not from this guest's 9p share of the source tree (~1 ms per file opened).
-- lua5.4 goes next to it, for the bare start the restarts are compared with.
local RUNTIME = WORK .. "/runtime"
local function stage_runtime()
  util.must({ "cp", "-a", ROOT .. "/build/bench/install/usr/local", RUNTIME })
  util.must({ "cp", assert(proc.which("lua5.4")), RUNTIME .. "/bin/lua5.4" })
end

local function cold_start(s)
  -- The cold start builds in a fresh cache at the same path tools/fill-cache
  -- used on the host, so it produces the same files (the build is
  -- deterministic), which are already installed: install skips depmod (~140 s
  -- in this guest).
  reset_inbox()
  assert(fs.remove(s.cache .. "/ubuntu-ofed", { recursive = true, missing_ok = true })) -- the guest's overlay only
  local server = httpd.start(FIXTURES)
  local rss_file = WORK .. "/rss"
  local argv = { DRVRUN, "bench/recipe-rss.lua", rss_file }
  for _, a in ipairs(recipe_args(s, { "RESTORE_DRIVER_ON_POD_TERMINATION=false", "CACHE_DIR=" .. s.cache })) do
    argv[#argv + 1] = a
  end
  for i, a in ipairs(argv) do
    if a:match("^OFED_URL=") then argv[i] = "OFED_URL=" .. server:url(s.bundle_name) end
  end
  say("cold start: fetch over HTTP, build in the guest (minutes under emulation), reload, ready")
  local cold, res = start_to_ready(argv, 1800)
  server:stop()
  local depmod = not res.stdout:match("already installed")
  assert(res.stdout:match("cache hit") == nil, "the cold start hit a cache")
  local build = res.stdout:match("phase build done in ([%d.]+) s")
  say("cold start: ready after %.1f s (build phase %s s, depmod %s), exit %s", cold, tostring(build),
    depmod and "ran" or "skipped", tostring(res.status))
  local kb = tonumber(fs.read(rss_file) or "")
  rows[#rows + 1] = kb and util.absolute("peak RSS of an OFED recipe run (cold start)", kb / 1024, "MiB", "<=", 16)
    or util.missing("peak RSS of an OFED recipe run (cold start)", "MiB", "<= 16 MiB", "not measured")
  rows[#rows + 1] = util.info("cold start (fetch, build, reload, ready; depmod " .. (depmod and "ran" or "skipped")
    .. ")", cold, "s")
  -- drv.digests trusts a file's stat only a second after its last change: a
  -- restart within that second of the build (none in a cluster: a pod restarts
  -- after seconds at least) hashes the build's files again.
  sys.sleep(1)
  return cold
end

local function warm_argv(s)
  local argv = { RUNTIME .. "/bin/drvrun" }
  for _, a in ipairs(recipe_args(s, { "RESTORE_DRIVER_ON_POD_TERMINATION=false", "CACHE_DIR=" .. s.cache })) do
    argv[#argv + 1] = a
  end
  argv[2] = RUNTIME .. "/share/drvrun/" .. argv[2]
  return argv
end

local function warm_restart(s)
  local dt, res = start_to_ready(warm_argv(s), 300)
  if not res.stdout:match("already loaded %(srcversions match%); no reload") or res.status ~= 0 then
    error("warm restart did not skip the reload (exit " .. tostring(res.status) .. "):\n" .. res.stdout)
  end
  return dt, res
end

-- The first restart from a stack's cache copy (local_cache) or after its install hashes the
-- files it has not seen yet (drv.digests), once: not counted.
local function first_restart(s)
  say("warm restart%s 0: %.3f s, the first from this cache (not counted)", s.label, (warm_restart(s)))
  sys.sleep(1)
end

local function minimum(list)
  local m = math.huge
  for _, v in ipairs(list) do m = math.min(m, v) end
  return m
end

-- Warm restarts of stack `s` (loaded, its headers installed, its cache
-- present), each followed by two bare starts of lua5.4 from the same place.
local function bench_warm(s, cold)
  local warm, own, bare = {}, {}, {}
  for rep = 1, WARM_REPS do
    local dt, res = warm_restart(s)
    warm[#warm + 1], own[#own + 1] = dt, ready_seconds(res) or 0
    for _ = 1, 2 do bare[#bare + 1] = start_to_exit({ RUNTIME .. "/bin/lua5.4", "-e", "" }) end
    local phases = {}
    for name, secs in res.stdout:gmatch("phase (%w+) done in ([%d.]+) s") do phases[#phases + 1] = name .. " " .. secs end
    say("warm restart%s %d/%d: ready after %.3f s (drvrun says %.3f s after its start; %s); lua5.4 -e '' %.3f s",
      s.label, rep, WARM_REPS, dt, own[#own], table.concat(phases, ", "), bare[#bare])
  end
  local w, b = util.median(warm), util.median(bare)
  rows[#rows + 1] = util.info("warm restart" .. s.label .. ": start to ready file", w * 1000, "ms")
  rows[#rows + 1] = util.info("warm restart" .. s.label .. ": as drvrun logs it (after its Lua start)",
    util.median(own) * 1000, "ms")
  rows[#rows + 1] = util.target("warm restart" .. s.label .. ": warm / bare lua5.4 -e '' start", w * 1000, "ms",
    b * 1000, w / b, "<=", 2)
  rows[#rows + 1] = util.compare("warm restart" .. s.label .. ": fastest warm / fastest bare start",
    minimum(warm) * 1000, "ms", minimum(bare) * 1000, minimum(warm) / minimum(bare))
  if cold then rows[#rows + 1] = util.target("warm restart: cold / warm (speed-up)", w, "s", cold, cold / w, ">=", 50) end
end

-- How much of a warm restart is process start-up alone, in this guest.
local function bench_guest_startup()
  local t = { drvrun = {}, lua = {} }
  for _ = 1, 10 do
    t.drvrun[#t.drvrun + 1] = util.time({ DRVRUN, "-e", "" })
    t.lua[#t.lua + 1] = util.time({ "lua5.4", "-e", "" })
  end
  rows[#rows + 1] = util.info("guest start-up: drvrun -e ''", util.median(t.drvrun) * 1000, "ms")
  rows[#rows + 1] = util.info("guest start-up: lua5.4 -e ''", util.median(t.lua) * 1000, "ms")
end

-- The real stack: its build cache copied to tmpfs, installed in place of the
-- simulated one, swapped in for the inbox stack by each contender; then
-- restarts with it loaded (the reload runs installed its headers). The first restart after the install
-- hashes the files it has not seen yet (drv.digests), once: not counted.
local function bench_real()
  REAL.cache = local_cache(REAL)
  install_stack(REAL)
  bench_reload(REAL)
  say("real stack: reload part done")
  first_restart(REAL)
  bench_warm(REAL)
end

-- ---- 4. a kernel upgrade ----------------------------------------------------------------

local UPGRADE_NAME = "upgrade%s: start after a reboot into %s"

-- A start as the first after a reboot: the inbox stack loaded and in use, no state in /run,
-- the build for the running kernel in the cache: seconds from start to the ready file.
local function start_after_reboot(s)
  reset_inbox()
  assert(fs.remove(WORK .. "/state", { recursive = true, missing_ok = true }))
  local dt, res = start_to_ready(warm_argv(s), 600)
  local ran = res.stdout:match("[^\n]*configure [^:\n]+: %./configure[^\n]*") or res.stdout:match("[^\n]*: make %-j[^\n]*")
  if res.status ~= 0 or not res.stdout:match("build: cache hit for kernel") or ran then
    error(("the start after a reboot did not load the build from the cache (exit %s%s):\n%s"):format(
      tostring(res.status), ran and ("; it ran " .. ran) or "", res.stdout))
  end
  return dt
end

-- Starts after a reboot of stack `s` on the running kernel, the first (which hashes the cache
-- copy's files, drv.digests) not counted: a row of their median.
local function bench_reboot_starts(s, what)
  say("%s: %.3f s, the first from this cache (not counted)", UPGRADE_NAME:format(s.label, K), start_after_reboot(s))
  sys.sleep(1)
  local t = {}
  for rep = 1, REPS do
    t[rep] = start_after_reboot(s)
    say("%s (%s) %d/%d: ready after %.3f s", UPGRADE_NAME:format(s.label, K), what, rep, REPS, t[rep])
  end
  local row = util.info(UPGRADE_NAME:format(s.label, K) .. " (" .. what .. ")", util.median(t), "s")
  rows[#rows + 1] = row
  return row
end

-- The row of an earlier boot named `name`.
local function earlier(name)
  for _, r in ipairs(rows) do if r.name == name then return r end end
end

-- On the newest kernel: its starts against the older kernel's (the boot before), and the
-- build after the reboot (the cold start, simulated stack) beside them.
local function bench_upgraded(s, older, cold)
  local new = bench_reboot_starts(s, "its build made ahead")
  local old = earlier(UPGRADE_NAME:format(s.label, older) .. " (the same kernel as before)")
  local name = ("upgrade%s: after a reboot into %s built ahead / after a reboot on %s"):format(s.label, K, older)
  rows[#rows + 1] = old and util.target(name, new.value, "s", old.value, new.value / old.value, "<=", 1.5)
    or util.missing(name, "s", "<= 1.5", "no start on " .. older .. " measured (its boot failed)")
  if cold then
    rows[#rows + 1] = util.compare(("upgrade%s: the vendor's way, built after the reboot (the cold start) / built "
      .. "ahead"):format(s.label), cold, "s", new.value, cold / new.value)
  end
end

-- The build ahead of stack `s` for kernel `kver`, as the watcher of a ready run starts it, its
-- output in `log`: the process.
local function start_build_ahead(s, kver, log)
  local args = {}
  for _, a in ipairs(recipe_args(s, { "CACHE_DIR=" .. WORK .. "/ahead-cache", "ROOT=" .. WORK .. "/ahead-root",
                                      "HOST_ROOT=/" })) do
    local k, v = a:match("^([%u%d_]+)=(.*)$")
    if k then args[k] = v end
  end
  local argv, opts = ahead.command("recipes/ubuntu-ofed.lua", args, kver, ahead.OPTIONS.AHEAD_JOBS.default)
  table.insert(argv, 1, log)
  for i, a in ipairs { "sh", "-c", 'exec "$@" >"$0" 2>&1' } do table.insert(argv, i, a) end
  return assert(proc.spawn(argv, opts))
end

-- drvrun's reload of stack `s` (the recipe, WAIT=false, run from the runtime in tmpfs as a
-- container runs from its image), from the inbox stack: the run's seconds and the swap's
-- downtime (the trace's).
local function reload_once(s)
  reset_inbox()
  local argv = warm_argv(s)
  argv[#argv + 1] = "WAIT=false"
  argv = reload_argv(argv)
  trace_clear()
  local wall, res = util.time(argv, { stdout = "capture", stderr = "stdout" })
  local down = trace_downtime()
  if res.status ~= 0 or not down then error(("the reload failed (exit %s):\n%s"):format(tostring(res.status), res.stdout)) end
  return wall, down
end

-- Reloads of stack `s` while the build ahead for kernel `kver` runs, in turns with reloads
-- while it is stopped; the build must run through them all.
local function bench_reload_during_build(s, kver)
  local log = WORK .. "/ahead.log"
  local p = start_build_ahead(s, kver, log)
  local t = { [true] = { wall = {}, down = {} }, [false] = { wall = {}, down = {} } }
  local ok, err = pcall(function()
    sys.sleep(5) -- past its start: the fetch and the extraction, into the compiles
    for rep = 1, 2 * REPS do
      local building = rep % 4 == 1 or rep % 4 == 0 -- in turns: with, without, without, with...
      if not p:running() then
        error(("the build ahead for %s ended before the reloads were measured:\n%s"):format(kver, fs.read(log) or ""))
      end
      p:kill(building and "CONT" or "STOP")
      sys.sleep(1)
      local wall, down = reload_once(s)
      table.insert(t[building].wall, wall)
      table.insert(t[building].down, down)
      say("reload %d/%d %s the build ahead for %s: %.3f s, the stack down %.3f s", rep, 2 * REPS,
        building and "during" or "without", kver, wall, down)
    end
  end)
  p:kill("CONT")
  p:kill("TERM")
  local t0 = sys.monotonic()
  if not p:wait(120) then p:kill("KILL") p:wait() end
  say("the build ahead for %s: ended %.1f s after its TERM", kver, sys.monotonic() - t0)
  if not ok then error(err, 0) end
  local w1, w0 = util.median(t[true].wall), util.median(t[false].wall)
  local d1, d0 = util.median(t[true].down), util.median(t[false].down)
  rows[#rows + 1] = util.info("upgrade: drvrun's reload, no build running (" .. K .. ")", w0, "s")
  rows[#rows + 1] = util.target("upgrade: drvrun's reload during a build ahead / without it", w1, "s", w0, w1 / w0,
    "<=", 1.2)
  rows[#rows + 1] = util.compare("upgrade: the swap's downtime during a build ahead / without it", d1, "s", d0,
    d1 / d0)
end

-- The first boot, on the older kernel: the starts after a reboot, the reload during a
-- build ahead; then the reboot into the newest.
local function bench_before_upgrade()
  SIM.cache, REAL.cache = local_cache(SIM), local_cache(REAL)
  bench_reboot_starts(SIM, "the same kernel as before")
  bench_reload_during_build(SIM, NEWEST)
  install_stack(REAL)
  bench_reboot_starts(REAL, "the same kernel as before")
end

-- ---- main ---------------------------------------------------------------------------

local t0 = sys.monotonic()
assert(fs.mkdir(WORK))
local BEFORE_UPGRADE = K ~= NEWEST -- the first boot, on the older kernel
local OLDER = BOOT > 1 and kernel.installed[#kernel.installed - 1] or nil -- the kernel of the boot before
if BOOT > 1 then -- the rows of the boot before
  local chunk = loadfile(OUT, "t", {})
  for _, r in ipairs(chunk and chunk() or {}) do rows[#rows + 1] = r end
end
trace_setup()
load_inbox_first()
install_stack(SIM)
stage_runtime()
-- The rows so far, after each part: a guest cut off still reports what it measured.
local function save() assert(fs.write(OUT, util.serialize(rows))) end
local ok, err = pcall(function()
  if BEFORE_UPGRADE then
    bench_before_upgrade()
    return
  end
  bench_reload(SIM)
  save()
  say("reload part done in %.0f s", sys.monotonic() - t0)
  bench_traffic(SIM)
  save()
  say("traffic part done in %.0f s", sys.monotonic() - t0)
  bench_guest_startup()
  local cold = cold_start(SIM)
  SIM.cache = local_cache(SIM) -- restarts read the cache from the node's disk, as the real stack's do
  first_restart(SIM)
  bench_warm(SIM, cold)
  if OLDER then bench_upgraded(SIM, OLDER, cold) end
  save()
  say("simulated stack done in %.0f s", sys.monotonic() - t0)
  bench_real()
  if OLDER then
    bench_upgraded(REAL, OLDER)
  else
    rows[#rows + 1] = util.note("upgrade: start after a reboot into a kernel built ahead", "not measured: the guest "
      .. "did not boot an older kernel first (bench/main.lua does when a second one is installed: make deps)")
  end
end)
if not ok then
  say("FAILED: %s", tostring(err))
  rows[#rows + 1] = util.missing("guest part" .. (BEFORE_UPGRADE and (" on " .. K) or ""), nil, nil,
    tostring(err):match("^[^\n]*"))
end
save()
if BEFORE_UPGRADE then -- the rest on the newest kernel
  local dir = assert(os.getenv("DRVRUN_VM_REBOOT"), "not in a spec/vm/run guest: DRVRUN_VM_REBOOT is not set")
  assert(fs.write(dir .. "/kernel", "/boot/vmlinuz-" .. NEWEST .. "\n"))
  say("on %s done in %.0f s; rebooting into %s", K, sys.monotonic() - t0, NEWEST)
else
  say("guest part done in %.0f s", sys.monotonic() - t0)
end
os.exit(ok and 0 or 1)
