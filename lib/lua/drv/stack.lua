--- drv.stack: swap a kernel module stack for another, safely and quickly.
--
-- Policy over drv.kmod's primitives: from the live kernel state compute what
-- must be unloaded (holders first) for a new stack to take the place of the
-- loaded one, refuse when something outside the stack uses it (naming it),
-- then unload and load level by level, each level concurrently, and verify
-- every loaded srcversion.
local M = {}

local kmod = require "drv.kmod"
local fs = require "drv.fs"
local graph = require "drv.graph"
local log = require "drv.log"
local sys = require "drv.sys"
local symvers = require "drv.symvers"

local EBUSY, EIO = 16, 5

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
-- @tparam table stack the new stack: `{ [name] = { dependency names... } }`
-- @tparam table live `M.snapshot(ctx)`
-- @tparam[opt] table opts `{ also = { names that may be unloaded with the stack (auxiliary,
--   peer-memory, storage when allowed) }, devices = "/dev/infiniband" }`
-- @treturn table `{ unload = levels (holders first), load = levels (dependencies first),
--   loaded = { names of the stack loaded now }, blockers = { "message"... } }`
function M.plan(stack, live, opts)
  opts = opts or {}
  local also = in_set(opts.also)
  local replaced = {}
  for name in pairs(stack) do
    if live[name] then replaced[#replaced + 1] = name end
  end
  table.sort(replaced)
  local set = graph.closure(replaced, function(n) return live[n].holders end)
  local blockers, unload_edges = {}, {}
  for _, name in ipairs(graph.sorted(set)) do
    local m = live[name]
    if not stack[name] and not also[name] then
      local held = {}
      for _, r in ipairs(graph.sorted(set)) do
        for _, h in ipairs(live[r].holders) do if h == name then held[#held + 1] = r end end
      end
      blockers[#blockers + 1] = ("%s uses %s and is not part of the stack"):format(name, table.concat(held, ", "))
    end
    local others = m.refcount - #m.holders
    if others > 0 then
      local msg = ("%s is in use (%d reference%s besides modules)"):format(name, others, others > 1 and "s" or "")
      local users = M.device_users(opts.devices or "/dev/infiniband", opts.proc_root)
      if #users > 0 then msg = msg .. ": " .. table.concat(users, "; ") end
      blockers[#blockers + 1] = msg
    end
    unload_edges[name] = holders_within(live, set, name)
  end
  local unload = assert(graph.levels(unload_edges))
  local load, err = graph.levels(stack)
  if not load then error("stack: " .. err, 2) end
  return { unload = unload, load = load, loaded = replaced, blockers = blockers }
end

local function run_levels(what, levels, fn)
  for i, names in ipairs(levels) do
    local t0 = sys.monotonic()
    local ok, err, errno = fn(names)
    if not ok then return nil, err, errno, i end
    log.debug("%s level %d (%s) in %.3f s", what, i, table.concat(names, " "), sys.monotonic() - t0)
  end
  return true
end

--- Unload `levels` (holders first), each level concurrently.
function M.unload(levels)
  return run_levels("unloaded", levels, kmod.remove_many)
end

--- Load `levels`; `paths[name]` is the .ko file, `options[name]` its parameters.
function M.load(levels, paths, options)
  options = options or {}
  return run_levels("loaded", levels, function(names)
    local items = {}
    for _, n in ipairs(names) do
      if not paths[n] then return nil, n .. ": no module file to load", EIO end
      items[#items + 1] = { name = n, path = paths[n], options = options[n] }
    end
    return kmod.insert_many(items)
  end)
end

--- Which stack modules are loaded with the srcversion they were built with.
-- @treturn boolean all match
-- @treturn table `{ "name: loaded X, built Y"... }` mismatches
function M.verify(ctx, built)
  local bad = {}
  for _, name in ipairs(graph.sorted(built)) do
    local want = built[name]
    local st = ctx:state(name)
    if not st then
      bad[#bad + 1] = name .. ": not loaded"
    elseif want and st.srcversion ~= want then
      bad[#bad + 1] = ("%s: loaded srcversion %s, built %s"):format(name, tostring(st.srcversion), want)
    end
  end
  return #bad == 0, bad
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

-- Find the files of the `missing` loaded modules (`{ [name] = live state }`)
-- that the index does not name: the in-tree ones from modules.order (one
-- read), the others by srcversion in a walk of the modules directory.
local function find_loaded_files(ctx, missing, found)
  local dir = ctx:dirname()
  local order = io.open(dir .. "/modules.order")
  for line in order and order:lines() or function() end do
    local name = line:match("([^/]+)%.ko$")
    name = name and name:gsub("-", "_")
    if missing[name] then
      for _, ext in ipairs { "", ".xz", ".zst", ".gz" } do
        local mi = take_if_loaded(ctx, dir .. "/" .. line .. ext, missing[name])
        if mi then found[name], missing[name] = mi, nil break end
      end
    end
  end
  if order then order:close() end
  if not next(missing) then return end
  local by_name = symvers.files_by_name({ dir })
  for name, live in pairs(missing) do
    for _, path in ipairs(by_name[name] or {}) do
      local mi = take_if_loaded(ctx, path, live)
      if mi then found[name] = mi break end
    end
    if not found[name] then
      log.warn("stack: the file %s was loaded from is not in %s: it cannot be loaded back", name, dir)
    end
  end
end

--- Record what is loaded now so it can be loaded back: `{ levels, paths }`,
-- the files the loaded modules came from. The module index usually names
-- them; not when another driver was installed since (a restarted or
-- recovering container finds its own modules under updates/ already).
function M.remember(ctx, names)
  local found, missing = {}, {}
  for _, n in ipairs(names) do
    local live, info = ctx:state(n), ctx:info(n)
    if live and info and info.path then
      if is_loaded_file(ctx, info, live) then found[n] = info else missing[n] = live end
    end
  end
  if next(missing) then find_loaded_files(ctx, missing, found) end
  local deps, paths = {}, {}
  for n, info in pairs(found) do
    paths[n] = info.path
    deps[n] = info.depends or {}
  end
  return { levels = assert(graph.levels(deps)), paths = paths }
end

--- Swap: unload `plan.unload`, load the new stack; on a failed load, put the
-- remembered modules back so the node is never left without its driver.
-- @treturn[1] true, seconds the stack was down
-- @treturn[2] nil, message, errno
function M.swap(plan, paths, options, previous)
  if #plan.blockers > 0 then
    return nil, "cannot reload: " .. table.concat(plan.blockers, "; "), EBUSY
  end
  local t0 = sys.monotonic()
  local ok, err, errno = M.unload(plan.unload)
  if ok then ok, err, errno = M.load(plan.load, paths, options) end
  if ok then return true, sys.monotonic() - t0 end
  log.error("reload failed: %s; restoring the previous modules", err)
  local loaded_new = {}
  for _, names in ipairs(plan.load) do for _, n in ipairs(names) do loaded_new[#loaded_new + 1] = n end end
  M.restore(loaded_new, previous)
  return nil, err, errno
end

--- Unload whatever of `names` is loaded (holders first) and load `previous` back.
function M.restore(names, previous)
  local ctx = kmod.new()
  local live = M.snapshot(ctx)
  local edges = {}
  local set = graph.closure(names, function(n) return live[n] and live[n].holders or {} end)
  for n in pairs(set) do
    if live[n] then edges[n] = holders_within(live, set, n) end
  end
  local ok, err = M.unload(assert(graph.levels(edges)))
  if not ok then log.error("restore: %s", err) end
  if previous then
    ok, err = M.load(previous.levels, previous.paths)
    if not ok then log.error("restore: %s", err); return nil, err end
  end
  return ok
end

return M
