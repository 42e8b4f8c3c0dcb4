--- drv.stack: swap a kernel module stack for another, safely and quickly.
--
-- Policy over drv.kmod's primitives: from the live kernel state compute what
-- must be unloaded (holders first) for a new stack to take the place of the
-- loaded one, refuse when something outside the stack uses it (naming it),
-- then unload and load concurrently, each module as soon as what it waits for
-- is done (its holders unloaded, its dependencies loaded: the graph's critical
-- path, not a barrier per level; a swap's loads begin while other old modules
-- still unload), and verify every loaded srcversion. RCU grace periods are
-- expedited while modules unload and load (below).
local M = {}

local kmod = require "drv.kmod"
local fs = require "drv.fs"
local graph = require "drv.graph"
local log = require "drv.log"
local sys = require "drv.sys"
local fault = require "drv.fault"

--- Live module state: `{ [name] = { refcount = n, holders = {...} } }`.
function M.snapshot(ctx)
  local live = {}
  for _, m in ipairs(ctx:loaded()) do
    live[m.name] = { refcount = m.refcount, holders = m.holders or {} }
  end
  return live
end

--- Processes that hold a device of directory `devdir` open: `{ "pid 12 (rping) has /dev/x open", ... }`.
-- Devices are matched by number, not by path: a process in another mount
-- namespace (another container) shows paths that do not resolve here.
function M.device_users(devdir, proc_root)
  proc_root = proc_root or "/proc"
  local devices = {}
  for _, name in ipairs(fs.dir(devdir) or {}) do
    local st = fs.stat(devdir .. "/" .. name)
    if st and st.rdev then devices[st.rdev] = (devdir .. "/" .. name):gsub("//+", "/") end
  end
  local users = {}
  if not next(devices) then return users end
  for _, pid in ipairs(fs.dir(proc_root) or {}) do
    if pid:match("^%d+$") then
      for _, fd in ipairs(fs.dir(("%s/%s/fd"):format(proc_root, pid)) or {}) do
        local st = fs.stat(("%s/%s/fd/%s"):format(proc_root, pid, fd))
        local dev = st and st.rdev and devices[st.rdev]
        if dev then
          local comm = (fs.read(("%s/%s/comm"):format(proc_root, pid)) or "?"):gsub("%s+$", "")
          users[#users + 1] = ("pid %s (%s) has %s open"):format(pid, comm, dev)
          break
        end
      end
    end
  end
  return users
end

local function in_set(list)
  local set = {}
  for _, n in ipairs(list or {}) do set[n] = true end
  return set
end

local function holders_within(live, set, name)
  local hs = {}
  for _, h in ipairs(live[name].holders) do
    if set[h] then hs[#hs + 1] = h end
  end
  return hs
end

--- Plan a reload.
-- @tparam table names the modules of the new stack: `{ "ib_core", ... }`
-- @tparam table live `M.snapshot(ctx)`
-- @tparam[opt] table opts `{ also = { names that may be unloaded with the stack (auxiliary,
--   peer-memory, storage when allowed) }, deps = { [name] = { dependencies in the stack } } (known once
--   built: gives the load levels), devices = "/dev/infiniband" (the stack's device files: the processes
--   holding one are named when the stack is in use) }`
-- @treturn table `{ unload = levels (holders first), unload_after = { [name] = { its holders } },
--   load = levels (dependencies first; nil without deps), load_after = deps, loaded = { names of the
--   stack loaded now }, blockers = { "message"... } }`
function M.plan(names, live, opts)
  opts = opts or {}
  local also, in_stack = in_set(opts.also), in_set(names)
  local replaced = {}
  for _, name in ipairs(names) do
    if live[name] then replaced[#replaced + 1] = name end
  end
  table.sort(replaced)
  local set = graph.closure(replaced, function(n) return live[n].holders end)
  local blockers, unload_edges = {}, {}
  for _, name in ipairs(graph.sorted(set)) do
    local m = live[name]
    if not in_stack[name] and not also[name] then
      local held = {}
      for _, r in ipairs(graph.sorted(set)) do
        for _, h in ipairs(live[r].holders) do if h == name then held[#held + 1] = r end end
      end
      blockers[#blockers + 1] = ("%s uses %s and is not part of the stack"):format(name, table.concat(held, ", "))
    end
    local others = m.refcount - #m.holders
    if others > 0 then
      local msg = ("%s is in use (%d reference%s besides modules)"):format(name, others, others > 1 and "s" or "")
      local users = opts.devices and M.device_users(opts.devices, opts.proc_root) or {}
      if #users > 0 then msg = msg .. ": " .. table.concat(users, "; ") end
      blockers[#blockers + 1] = msg
    end
    unload_edges[name] = holders_within(live, set, name)
  end
  local unload = assert(graph.levels(unload_edges))
  local load
  if opts.deps then
    local err
    load, err = graph.levels(opts.deps)
    if not load then error("stack: " .. err, 2) end
  end
  return { unload = unload, unload_after = unload_edges, load = load, load_after = opts.deps, loaded = replaced,
           blockers = blockers }
end

--- A module's name as the kernel lists it (`pci-hyperv-intf` -> `pci_hyperv_intf`).
function M.module_name(name)
  return (name:gsub("-", "_"))
end

--- The dependency graph of a stack from what a build produced (the modules'
-- own `depends`).
-- @tparam table names the stack's modules
-- @tparam table built `{ { name, depends = {...} }... }` (drv.compile's modules)
-- @treturn[1] table `{ [name] = { dependencies in the stack } }`
-- @treturn[1] table the dependencies the build did not produce (the kernel's own), sorted
-- @treturn[1] table the modules built besides the stack (installed, not loaded), sorted
-- @treturn[2] nil, message
function M.from_build(names, built)
  local by_name, in_stack = {}, in_set(names)
  for _, m in ipairs(built) do by_name[M.module_name(m.name)] = m end
  local deps, kernel = {}, {}
  for _, n in ipairs(names) do
    local m = by_name[n]
    if not m then
      return nil, ("build produced no module %s (the recipe's stack names it); it built: %s")
        :format(n, table.concat(graph.sorted(by_name), " "))
    end
    deps[n] = {}
    for _, d in ipairs(m.depends or {}) do
      d = M.module_name(d)
      if in_stack[d] then
        deps[n][#deps[n] + 1] = d
      elseif by_name[d] then
        return nil, ("%s needs %s, which the build produced but the recipe's stack does not list: add it to the stack")
          :format(n, d)
      else
        kernel[d] = true
      end
    end
  end
  local only = {}
  for name in pairs(by_name) do if not in_stack[name] then only[#only + 1] = name end end
  table.sort(only)
  local _, err = graph.levels(deps)
  if err then return nil, "the built stack: " .. err end
  return deps, graph.sorted(kernel), only
end

-- ---- grace periods -----------------------------------------------------------------------

-- The kernel waits for an RCU grace period at each module unload while it holds its module lock
-- (free_module's synchronize_rcu), so a stack's unloads wait one grace period each, one after the
-- other whatever the graph (35-45 ms each in the test guest; a module's init waits for some too).
-- Expedited grace periods take microseconds. A swap asks for them (/sys/kernel/rcu_expedited) and
-- puts the setting back after: the simulated stack's swap took 0.10 s against 0.40 s. An operator
-- who wants normal grace periods only (real-time latency) sets the kernel's rcu_normal, which
-- overrides it.
M.RCU_EXPEDITED = "/sys/kernel/rcu_expedited"

-- Write a sysfs attribute in place.
local function put(path, value)
  local f, err = io.open(path, "w")
  if not f then return nil, err end
  local ok, werr = f:write(value)
  local closed, cerr = f:close()
  if not ok or not closed then return nil, ("%s: %s"):format(path, werr or cerr) end
  return true
end

--- The kernel's rcu_expedited setting ("0" or "1"), or nil where it has none.
function M.rcu_expedited()
  local v = fs.read(M.RCU_EXPEDITED)
  return v and v:match("^%d+")
end

--- Set the kernel's rcu_expedited (a setting `rcu_expedited()` read).
-- @treturn[1] true
-- @treturn[2] nil, message
function M.set_rcu_expedited(value)
  return put(M.RCU_EXPEDITED, value)
end

local expediting = 0

--- `fn(...)`'s results, RCU grace periods expedited while it runs (the setting put back after,
-- also when it raises; nested calls leave it to the outermost).
function M.expedited(fn, ...)
  local changed = false
  if expediting == 0 and M.rcu_expedited() == "0" then
    changed = M.set_rcu_expedited("1") or false
  end
  expediting = expediting + 1
  local res = table.pack(pcall(fn, ...))
  expediting = expediting - 1
  if changed then
    local ok, err = M.set_rcu_expedited("0")
    if not ok then log.warn("stack: cannot put RCU grace periods back to normal: %s", err) end
  end
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

-- The items of `levels` for drv.kmod, `item(name)` each (or nil, why, errno), with `after` what
-- each waits for among them (`after[name]`; none: a level's items wait for the level before), the
-- ones heading the longest chains first (a chain weighs `weight(name)` per module): of the items
-- ready at once, drv.kmod starts the first in the list first.
local function items_of(levels, after, item, weight)
  local names, set, items = graph.flatten(levels), {}, {}
  for _, n in ipairs(names) do set[n] = true end
  local level_of, waits = {}, {}
  for i, level in ipairs(levels) do for _, n in ipairs(level) do level_of[n] = i end end
  for _, n in ipairs(names) do
    waits[n] = {}
    for _, d in ipairs(after and after[n] or levels[level_of[n] - 1] or {}) do
      if set[d] then waits[n][#waits[n] + 1] = d end
    end
  end
  local chain = graph.chains(waits, weight)
  table.sort(names, function(a, b)
    if chain[a] ~= chain[b] then return chain[a] > chain[b] end
    return level_of[a] < level_of[b] or (level_of[a] == level_of[b] and a < b)
  end)
  for _, n in ipairs(names) do
    local it, err, errno = item(n)
    if not it then return nil, err, errno end
    it.after = waits[n]
    items[#items + 1] = it
  end
  return items
end

-- Run `many` (kmod.insert_many or remove_many) on `items` (items_of's, for `levels` and `after`):
-- each started as soon as what it waits for is done (`after`, or without it the level before: a
-- barrier per level).
local function run_items(what, levels, after, many, items)
  if #items == 0 then return true end
  local t0 = sys.monotonic()
  local ok, err, errno = M.expedited(many, items)
  if not ok then return nil, err, errno end
  log.debug("%s %s in %.3f s (%s)", what, table.concat(graph.flatten(levels), " "), sys.monotonic() - t0,
            after and "each after what it needs" or "by levels")
  return true
end

local function unload_items(levels, after)
  return items_of(levels, after, function(n) return { name = n } end, function() return 1 end)
end

--- Unload `levels` (holders first); with `after` (`{ [name] = { its holders } }`, a plan's
-- unload_after), each as soon as its holders are gone, else each level once the level before is.
-- As many at once as are ready.
function M.unload(levels, after)
  return run_items("unloaded", levels, after, kmod.remove_many, unload_items(levels, after))
end

-- The load items (a module weighs its file's size), or nil, message, errno.
local function load_items(levels, paths, options, after)
  options = options or {}
  return items_of(levels, after, function(n)
    if not paths[n] then return nil, n .. ": no module file to load", "EIO" end
    return { name = n, path = paths[n], options = options[n] }
  end, function(n)
    local st = paths[n] and fs.stat(paths[n])
    return st and st.size or 1
  end)
end

--- Load `levels`; `paths[name]` is the .ko file, `options[name]` its parameters. With `after`
-- (`{ [name] = { its dependencies } }`), each as soon as its dependencies are in, else each level
-- once the level before is; as many at once as are ready, the heads of the longest chains started
-- first (a module weighs its file's size).
function M.load(levels, paths, options, after)
  local items, err, errno = load_items(levels, paths, options, after)
  if not items then return nil, err, errno end
  return run_items("loaded", levels, after, kmod.insert_many, items)
end

--- Which stack modules are loaded with the srcversion they were built with.
-- @treturn boolean all match
-- @treturn table `{ "name: loaded X, built Y"... }` mismatches
-- @treturn table `{ [name] = { name, initstate, srcversion } }` what is loaded (ctx:state)
function M.verify(ctx, built)
  local bad, states = {}, {}
  for _, name in ipairs(graph.sorted(built)) do
    local want = built[name]
    local st = ctx:state(name, { "srcversion" })
    states[name] = st
    if not st then
      bad[#bad + 1] = name .. ": not loaded"
    elseif want and st.srcversion ~= want then
      bad[#bad + 1] = ("%s: loaded srcversion %s, built %s"):format(name, tostring(st.srcversion), want)
    end
  end
  return #bad == 0, bad, states
end

-- Is `info` (modinfo of a file) the module loaded as `live`? An out-of-tree
-- module is told by its srcversion; an in-tree one has none, and its file is
-- under the modules directory's kernel/.
local function is_loaded_file(ctx, info, live)
  if live.srcversion then return info.srcversion == live.srcversion end
  return not (live.taint or ""):find("O", 1, true) and info.path:find(ctx:dirname() .. "/kernel/", 1, true) == 1
end

local function take_if_loaded(ctx, path, live)
  local mi = kmod.modinfo(path)
  if mi and is_loaded_file(ctx, mi, live) then return mi end
end

-- The kernel's own module files, from the modules directory's modules.order
-- (one read): `{ [name] = { path candidates } }` (modules.order omits the
-- compression suffix the file may have).
local function in_tree_files(dir)
  local files = {}
  local order = io.open(dir .. "/modules.order")
  for line in order and order:lines() or function() end do
    local name = line:match("([^/]+)%.ko$")
    if name then
      local path = dir .. "/" .. line
      files[M.module_name(name)] = { path, path .. ".xz", path .. ".zst", path .. ".gz" }
    end
  end
  if order then order:close() end
  return files
end

local function first_modinfo(candidates, accept)
  for _, path in ipairs(candidates or {}) do
    local mi = kmod.modinfo(path)
    if mi and (not accept or accept(mi)) then return mi end
  end
end

-- Find the files of the `missing` loaded modules (`{ [name] = live state }`)
-- that the index does not name: the in-tree ones from modules.order, the
-- others by srcversion in a walk of the modules directory. Returns the names
-- of those not found.
local function find_loaded_files(ctx, missing, found)
  local tree = in_tree_files(ctx:dirname())
  for name, live in pairs(missing) do
    local mi = first_modinfo(tree[name], function(info) return is_loaded_file(ctx, info, live) end)
    if mi then found[name], missing[name] = mi, nil end
  end
  if not next(missing) then return {} end
  local by_name, lost = require("drv.symvers").files_by_name({ ctx:dirname() }), {}
  for name, live in pairs(missing) do
    for _, path in ipairs(by_name[name] or {}) do
      local mi = take_if_loaded(ctx, path, live)
      if mi then found[name] = mi break end
    end
    if not found[name] then
      log.warn("stack: the file %s was loaded from is not in %s: it cannot be loaded back", name, ctx:dirname())
      lost[#lost + 1] = name
    end
  end
  table.sort(lost)
  return lost
end

--- Record what is loaded now so it can be loaded back: `{ levels, after, paths, lost }`,
-- the files the loaded modules came from (`lost`: the loaded modules whose
-- file is gone). The module index usually names them; not when another driver
-- was installed since (a restarted or recovering container finds its own
-- modules under updates/ already).
function M.remember(ctx, names)
  local found, missing = {}, {}
  for _, n in ipairs(names) do
    local live, info = ctx:state(n), ctx:info(n)
    if live and info and info.path and is_loaded_file(ctx, info, live) then
      found[n] = info
    elseif live then
      missing[n] = live
    end
  end
  local lost = next(missing) and find_loaded_files(ctx, missing, found) or {}
  local deps, paths = {}, {}
  for n, info in pairs(found) do
    paths[n] = info.path
    deps[n] = info.depends or {}
  end
  return { levels = assert(graph.levels(deps)), after = deps, paths = paths, lost = lost }
end

--- The kernel's own modules of `names` and the in-tree modules they need,
-- from the modules directory's kernel/ tree (never updates/ or extra/):
-- `{ levels, after, paths }` as `remember` gives. Names the kernel has no module for
-- (mlx_compat) are left out.
function M.inbox(ctx, names)
  local tree, deps, paths = in_tree_files(ctx:dirname()), {}, {}
  local function add(n)
    if deps[n] then return end
    local mi = first_modinfo(tree[n])
    if not mi then return end
    deps[n], paths[n] = {}, mi.path
    for _, d in ipairs(mi.depends or {}) do
      d = M.module_name(d)
      add(d)
      if deps[d] then deps[n][#deps[n] + 1] = d end
    end
  end
  for _, n in ipairs(names) do add(n) end
  return { levels = assert(graph.levels(deps)), after = deps, paths = paths }
end

local NONE_BEFORE = "none of the stack was loaded before"

-- Why `previous` cannot be loaded back, or nil when it can.
local function cannot_load_back(previous)
  if previous and previous.lost and #previous.lost > 0 then
    return ("the files %s had been loaded from are gone"):format(table.concat(previous.lost, " "))
  end
  if not previous or #previous.levels == 0 then return NONE_BEFORE end
  for _, n in ipairs(graph.flatten(previous.levels)) do
    if not fs.exists(previous.paths[n]) then return ("%s is gone"):format(previous.paths[n]) end
  end
end

--- What a restore of stack `names` loads back: `previous` (from `remember`)
-- when it can be, else the kernel's own modules of the stack (as the node
-- boots them), so that a node never ends with neither stack. Returns it, and
-- why not `previous` (nil when it is `previous`).
function M.load_back(ctx, names, previous)
  local why = cannot_load_back(previous)
  if not why then return previous end
  return M.inbox(ctx, names), why
end

-- The old modules whose unloads each new one waits for: the one it replaces (of its name), and
-- those that export a symbol it exports (a duplicate export fails a load); all of them for a file
-- whose symbols cannot be read, and those of unknown files (`previous` has the old ones': remember).
local function replaced_by(unloads, loads, previous)
  local owner, unknown = {}, {}
  for _, it in ipairs(unloads) do
    local path = previous and previous.paths and previous.paths[it.name]
    local syms = path and kmod.symbols(path)
    if syms then
      for sym in pairs(syms) do owner[sym] = it.name end
    else
      unknown[#unknown + 1] = it.name
    end
  end
  local waits = {}
  for _, it in ipairs(loads) do
    local set, syms = {}, kmod.symbols(it.path)
    if syms then
      for _, n in ipairs(unknown) do set[n] = true end
      for sym in pairs(syms) do
        if owner[sym] then set[owner[sym]] = true end
      end
    else
      for _, u in ipairs(unloads) do set[u.name] = true end
    end
    for _, u in ipairs(unloads) do
      if u.name == it.name then set[u.name] = true end
    end
    waits[it.name] = graph.sorted(set)
  end
  return waits
end

-- The swap as one graph for kmod.change_many: each unload after its holders' unloads, each load
-- after its dependencies' loads and the unloads replaced_by says; the unloads first (of the items
-- ready at once, the first in the list starts first). swap runs as many at once as there are
-- CPUs: an unload or a load is the kernel's work on a CPU, and more at once only slow down the
-- chain the stack's downtime waits for (the simulated stack in the 2-CPU guest, 5 swaps each:
-- 0.079-0.095 s two at a time, 0.083-0.127 s three, 0.077-0.109 s all that are ready).
local function swap_items(unloads, loads, previous)
  local waits, items = replaced_by(unloads, loads, previous), {}
  for _, it in ipairs(unloads) do
    local after = {}
    for _, h in ipairs(it.after) do after[#after + 1] = "-" .. h end
    items[#items + 1] = { key = "-" .. it.name, name = it.name, after = after }
  end
  for _, it in ipairs(loads) do
    local after = {}
    for _, d in ipairs(it.after) do after[#after + 1] = d end
    for _, u in ipairs(waits[it.name]) do after[#after + 1] = "-" .. u end
    items[#items + 1] = { name = it.name, path = it.path, options = it.options, after = after }
  end
  return items
end

local function swap(plan, paths, options, previous)
  if #plan.blockers > 0 then
    return nil, "cannot reload: " .. table.concat(plan.blockers, "; "), "EBUSY"
  end
  local loads, err, errno = load_items(plan.load, paths, options, plan.load_after) -- before the stack goes down
  if not loads then return nil, err, errno end
  local unloads = unload_items(plan.unload, plan.unload_after)
  local items = not fault.armed("reload") and swap_items(unloads, loads, previous)
  local t0 = sys.monotonic()
  local ok
  if items then
    ok, err, errno = kmod.change_many(items, { parallel = sys.nproc() })
  else -- DRVRUN_FAULT=reload: every unload first, the fault point, then the loads
    ok, err, errno = run_items("unloaded", plan.unload, plan.unload_after, kmod.remove_many, unloads)
    fault.point("reload")
    if ok then ok, err, errno = run_items("loaded", plan.load, plan.load_after, kmod.insert_many, loads) end
  end
  if ok then return true, sys.monotonic() - t0 end
  log.error("reload failed: %s; restoring the previous modules", err)
  local loaded_new = {}
  for _, names in ipairs(plan.load) do for _, n in ipairs(names) do loaded_new[#loaded_new + 1] = n end end
  M.restore(loaded_new, previous)
  return nil, err, errno
end

--- Swap: unload `plan.unload`, load the new stack, in one graph (a module loads as soon as its
-- dependencies are in and what it replaces is gone, while other old modules still unload); on a
-- failed load, put the remembered modules back so the node is never left without its driver.
-- RCU grace periods are expedited for the time of it (`expedited`).
-- @treturn[1] true, seconds the stack was down
-- @treturn[2] nil, message, errno
function M.swap(plan, paths, options, previous)
  return M.expedited(swap, plan, paths, options, previous)
end

--- Unload whatever of `names` is loaded, and what holds them, holders first.
function M.unload_all(ctx, names)
  local live = M.snapshot(ctx)
  local edges = {}
  local set = graph.closure(names, function(n) return live[n] and live[n].holders or {} end)
  for n in pairs(set) do
    if live[n] then edges[n] = holders_within(live, set, n) end
  end
  return M.unload(assert(graph.levels(edges)), edges)
end

--- Unload the modules of `levels` (as `load` takes them) that nothing uses, the last level first.
-- @treturn[1] true
-- @treturn[2] nil, message, errno
function M.unload_unused(levels)
  local ctx, err, errno = kmod.new()
  if not ctx then return nil, err, errno end
  for i = #levels, 1, -1 do
    local unused = {}
    for _, n in ipairs(levels[i]) do
      local st = ctx:state(n)
      if st and st.initstate ~= "builtin" and st.refcount == 0 and #(st.holders or {}) == 0 then unused[#unused + 1] = n end
    end
    if #unused > 0 then
      local ok, rerr, rerrno = M.expedited(kmod.remove_many, unused)
      if not ok then return nil, rerr, rerrno end
      log.info("restore: unloaded the kernel's %s (loaded for the stack; nothing uses them now)", table.concat(unused, " "))
    end
  end
  return true
end

local function restore(names, previous)
  local ctx, cerr = kmod.new()
  if not ctx then return nil, "restore: cannot read the kernel's modules: " .. cerr end
  local ok, err = M.unload_all(ctx, names)
  if not ok then log.error("restore: %s", err) end
  fault.point("restore")
  local back, why = M.load_back(ctx, names, previous)
  local list = table.concat(graph.flatten(back.levels), " ")
  if why == NONE_BEFORE and list == "" then
    log.info("restore: nothing to load back (%s, and the kernel has no module of it)", why)
  elseif why then
    log.warn("restore: loading back the kernel's own %s (%s)", list ~= "" and list or "(none found)", why)
  else
    log.info("restore: loading back %s", list)
  end
  ok, err = M.load(back.levels, back.paths, nil, back.after)
  if not ok and not why then
    back = M.inbox(ctx, names)
    log.error("restore: %s; loading back the kernel's own %s instead", err, table.concat(graph.flatten(back.levels), " "))
    ok, err = M.load(back.levels, back.paths, nil, back.after)
  end
  if not ok then
    log.error("restore: %s", err)
    return nil, err
  end
  return true
end

--- Unload whatever of `names` is loaded (holders first) and load back what
-- `load_back` says: `previous`, or the kernel's own modules of `names` (also
-- when loading `previous` fails). Says what it loads back instead, and why. RCU grace periods
-- are expedited for the time of it.
function M.restore(names, previous)
  return M.expedited(restore, names, previous)
end

return M
