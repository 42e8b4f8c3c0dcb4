--- drv.phases: what each phase of the recipe lifecycle does around the
-- recipe's own functions.
--
-- prepare -> await -> build -> install -> load -> expose -> ready
--
-- Each is a function of the run `r` (drv.run); a failure fails the phase with
-- a message for the operator (r:fail). Stop and recovery are drv.stop.
local M = {}

local stack = require "drv.stack"
local netcfg = require "drv.netcfg"
local graph = require "drv.graph"
local cache = require "drv.cache"
local fetch = require "drv.fetch"
local mount = require "drv.mount"
local fs = require "drv.fs"
local sys = require "drv.sys"
local log = require "drv.log"

local EINTR = 4

local function fetch_source(r, key, src)
  local url, sha = r:expand(src.url), r:expand(src.sha256)
  local dest = cache.source_path(r, url)
  if sha ~= "" and r:sha256(dest) == sha then
    log.info("source %s: %s already in the cache", key, dest)
  else
    local res, err, errno = fetch.get(url, dest, { sha256 = sha ~= "" and sha or nil, resume = true,
                                                   low_speed_time = r.opt.FETCH_STALL_TIMEOUT,
                                                   deadline = r.opt.FETCH_TIMEOUT,
                                                   interrupt_fd = r.signals and r.signals:fd() })
    if errno == EINTR then r:check_cancel() end
    r:must("fetch " .. key, res, err)
  end
  return dest
end

-- Sources: fetched into the cache, skipped when present with the right
-- checksum; a `path` source (a local file or directory) is used where it is.
local function fetch_sources(r)
  local dir = r.cache .. "/sources"
  r:must("cache " .. dir, fs.mkdir(dir))
  for key, src in pairs(r.source_specs) do
    if src.path then
      local path = r:expand(src.path)
      if not fs.exists(path) then r:fail("source %s: %s does not exist", key, path) end
      r.sources[key] = path
    else
      r.sources[key] = fetch_source(r, key, src)
    end
    r:check_cancel()
  end
end

-- The stack's graph from what the build produced (drv.stack.from_build).
local function stack_from_build(r, built)
  local deps, kernel, only = stack.from_build(r.stack, built)
  if not deps then r:fail("%s", kernel) end
  r.stack_deps, r.kernel_deps, r.installed_only = deps, kernel, only
end

-- Everything that can be checked before the first change is checked here.
local function check_blacklist_dir(r)
  local file = r.blacklist_file
  if r.opt.BUILD_ONLY or not file or file == "" then return end
  local dir = file:match("^(.*)/[^/]+$") or "."
  if not fs.exists(dir) then
    r:fail("blacklist directory %s does not exist: mount the host's /run/modprobe.d there, or set "
           .. "BLACKLIST_FILE= (empty) to reload without a blacklist", dir)
  end
end

-- Refuse now, before anything changes, when the reload could not happen.
local function check_blockers(r)
  if r.opt.BUILD_ONLY then return end
  local live = stack.snapshot(r:kmod())
  local plan = stack.plan(r.stack, live, { also = r.unload_also })
  if #plan.blockers > 0 then r:fail("cannot reload the driver stack: %s", table.concat(plan.blockers, "; ")) end
end

function M.await(r)
  if r.recipe.await then r.recipe.await(r) end
end

function M.prepare(r)
  check_blacklist_dir(r)
  if r.recipe.prepare then r.recipe.prepare(r) end
  netcfg.prepare(r)
  check_blockers(r)
end

-- One build at a time in a recipe's cache for a kernel (a build-only run for
-- an image and a node's run may share it): they share its build tree.
local function lock_build_tree(r)
  return r:take_lock("build lock", cache.work_dir(r) .. ".lock", { timeout = r.opt.BUILD_TIMEOUT, remove = true,
    owner = ("%s build for %s"):format(r.recipe.name, r.kver),
    on_wait = function(holder) log.info("build: waiting for another build in %s to end (%s)", r.cache, holder) end })
end

function M.build(r)
  fetch_sources(r)
  local _ <close> = lock_build_tree(r) -- until the build phase ends
  local entry = cache.entry(r)
  local cached, kept = cache.load(r, entry)
  if cached then
    log.info("build: cache hit for kernel %s (%s)", r.kver, entry.dir)
    stack_from_build(r, cached)
    r.built, r.kept, r.cache_hit, r.build_id = cached, kept, true, entry.id
    cache.used(r, entry)
    return
  end
  if not r.recipe.build then r:fail("nothing in the build cache at %s and the recipe has no build", entry.dir) end
  local res = r.recipe.build(r)
  stack_from_build(r, res.modules)
  cache.store(r, entry, res)
  r.built, r.kept = cache.load(r, entry)
  r.build_id = entry.id
  cache.used(r, entry)
  cache.prune(r, entry)
end

-- Default install: the built modules under ROOT/lib/modules/KVER/updates/<recipe>/, then depmod.
-- depmod runs only when a file changed: it reads every module of the kernel.
local function install_modules(r)
  local dir = r:path(("/lib/modules/%s/updates/%s"):format(r.kver, r.recipe.name))
  local changed = false
  r:must("install", fs.mkdir(dir))
  for _, m in ipairs(r.built) do
    local dest = dir .. "/" .. m.name .. ".ko"
    if r:sha256(dest) ~= m.sha256 then
      r:must("install " .. dest, fs.copy(m.path, dest))
      changed = true
    end
    m.installed = dest
  end
  if changed then
    local t0 = sys.monotonic()
    log.info("install: %s changed; depmod %s (it reads every module of the kernel)", dir, r.kver)
    local depmod = require("drv.compile").depmod -- loaded here, not at the start: most restarts install nothing
    local ok, err, errno = depmod(r.kver, r.root, { interrupt_fd = r.signals and r.signals:fd() })
    if errno == EINTR then r:check_cancel() end
    r:must("depmod", ok, err)
    log.info("install: depmod done in %.1f s", sys.monotonic() - t0)
    r.kmod_ctx = nil -- its indexes are the old ones
  else
    log.info("install: %s already installed", dir)
  end
end

-- What was loaded before is remembered for stop's restore; when the built
-- stack is loaded already no reload follows, and nothing is to be remembered.
function M.install(r)
  if not r.opt.BUILD_ONLY then
    local _
    r.stack_loaded, _, r.verified = stack.verify(r:kmod(), r:built_srcversions())
  end
  if not r.opt.BUILD_ONLY and not r.stack_loaded then
    local ctx = r:kmod()
    local names = {}
    for _, n in ipairs(r.stack) do
      if ctx:state(n) then names[#names + 1] = n end
    end
    for _, n in ipairs(r.unload_also or {}) do
      if ctx:state(n) then names[#names + 1] = n end
    end
    r.previous = stack.remember(ctx, names)
  end
  install_modules(r)
  if r.recipe.install then r.recipe.install(r) end
end

local function write_blacklist(r, names, file)
  if not file or file == "" or #names == 0 then return nil end
  local lines = { "# Written by drvrun " .. r.recipe.name .. " while it reloads the driver stack; removed after." }
  for _, n in ipairs(names) do lines[#lines + 1] = "blacklist " .. n end
  local entry = r.journal:record({ kind = "file", path = file })
  r:must("blacklist " .. file, fs.write(file, table.concat(lines, "\n") .. "\n"))
  log.info("blacklist: %s written (%d modules) for the reload", file, #names)
  return entry
end

local function remove_blacklist(r, entry)
  if not entry then return end
  fs.remove(entry.path, { missing_ok = true })
  r.journal:forget(entry)
  log.info("blacklist: %s removed", entry.path)
end

-- What the stack needs from the kernel (mlx5_core: psample, tls...), loaded
-- from the kernel's own tree before the old stack goes, so that the new one
-- does not fail on an unknown symbol where nothing had loaded them yet. A
-- dependency that is neither loaded nor the kernel's fails the phase.
local function load_kernel_deps(r, ctx)
  local missing = {}
  for _, n in ipairs(r.kernel_deps) do
    if not ctx:state(n) then missing[#missing + 1] = n end
  end
  if #missing == 0 then return end
  local inbox = stack.inbox(ctx, missing)
  for _, n in ipairs(missing) do
    if not inbox.paths[n] then
      r:fail("the stack needs %s, which is not loaded and is not a module of the kernel in %s", n, ctx:dirname())
    end
  end
  log.info("load: first the kernel's %s (the stack needs them)", table.concat(graph.flatten(inbox.levels), " "))
  r:must("load the kernel's modules", stack.load(inbox.levels, inbox.paths))
end

-- Modules outside the stack unloaded with it, each with the recipe's reason.
local function say_why_also(r, plan)
  local stack_set = {}
  for _, n in ipairs(r.stack) do stack_set[n] = true end
  for _, name in ipairs(graph.flatten(plan.unload)) do
    if not stack_set[name] then
      log.info("load: unloading %s first: %s", name, r.unload_why[name] or "it uses the stack")
    end
  end
end

function M.load(r)
  if r.recipe.before_load then r.recipe.before_load(r) end
  if r.stack_loaded then
    log.info("load: the built stack is already loaded (srcversions match); no reload")
    r.reloaded = false
    netcfg.restore_leftover(netcfg.spec(r))
    return
  end
  local ctx, want = r:kmod(), r:built_srcversions()
  local plan = stack.plan(r.stack, stack.snapshot(ctx), { also = r.unload_also, deps = r.stack_deps })
  if #plan.blockers > 0 then r:fail("cannot reload the driver stack: %s", table.concat(plan.blockers, "; ")) end
  load_kernel_deps(r, ctx)
  local unload = graph.flatten(plan.unload)
  log.info("load: unload %s", #unload > 0 and table.concat(unload, " ") or "nothing (none of the stack is loaded)")
  say_why_also(r, plan)
  log.info("load: load %s", table.concat(graph.flatten(plan.load), " "))
  local paths = {}
  for _, m in ipairs(r.built) do paths[stack.module_name(m.name)] = m.installed or m.path end
  local reach = netcfg.reach_before(r) -- what answers now must answer after the reload
  local bl = write_blacklist(r, r.recipe.blacklist and r.recipe.blacklist(r) or {}, r.blacklist_file)
  local net = netcfg.spec(r) -- the network devices' configuration, kept across this reload and stop's
  local entry = r.journal:record({ kind = "modules", names = graph.flatten(plan.load), previous = r.previous,
                                   restore = r.restore_on_stop, net = net })
  local ok, down_or_err = netcfg.around(net, function()
    return stack.swap(plan, paths, r.recipe.module_options and r.recipe.module_options(r), r.previous)
  end)
  remove_blacklist(r, bl)
  if not ok then r:fail("reload: %s", down_or_err) end
  log.info("load: the stack was down for %.3f s", down_or_err)
  local good, bad, states = stack.verify(r:kmod(), want)
  if not good then r:fail("verify: %s", table.concat(bad, "; ")) end
  local unanswered = netcfg.reach_after(r, reach)
  if unanswered then
    log.error("load: %s; rolling back to the previous stack and its network", unanswered)
    if netcfg.around(net, function() return stack.restore(graph.flatten(plan.load), r.previous) end) then
      r.journal:forget(entry)
    end
    r:fail("reload: %s; rolled back to the previous stack and its network", unanswered)
  end
  r.verified = states
  r.reloaded = true
  if r.recipe.after_load then r.recipe.after_load(r) end
end

function M.expose(r)
  local target = r.recipe.expose and r:expand(r.recipe.expose)
  if not target then return end
  if mount.is_mountpoint(target) and (mount.info(target).root or "/") == "/" and mount.find(target).id ~= mount.find("/").id then
    log.info("expose: replacing a stale mount at %s", target)
    r:must("umount " .. target, mount.umount(target, { recursive = true, lazy = true }))
  end
  r:must("expose", fs.mkdir(target))
  -- /sys must not be rbound into the target: it would pin sysfs submounts.
  r:must("expose /sys", mount.propagation("/sys", "unbindable", { recursive = true }))
  r:must("expose /sys", mount.propagation("/sys", "private"))
  r.journal:record({ kind = "mount", target = target })
  r:must("expose " .. target, mount.rbind("/", target))
  log.info("expose: container root visible at %s", target)
end

local function ready_content(r)
  local lines = {
    "recipe=" .. r.recipe.name, "version=" .. r.recipe.version, "kernel=" .. r.kver,
    "boot_id=" .. (sys.boot_id() or "unknown"), "time=" .. log.timestamp(),
  }
  -- The stack as the load (or, with nothing to reload, install) verified it.
  for _, name in ipairs(graph.flatten(assert(graph.levels(r.stack_deps)))) do
    local st = r.verified[name]
    lines[#lines + 1] = ("module=%s srcversion=%s"):format(name, st and st.srcversion or "none")
  end
  return table.concat(lines, "\n") .. "\n"
end

function M.ready(r)
  local content = ready_content(r)
  for _, path in ipairs(r.ready_files) do
    local dir = path:match("^(.+)/[^/]*$")
    if dir then r:must("ready " .. path, fs.mkdir(dir)) end
    r:must("ready " .. path, fs.write(path, content))
  end
  log.info("ready: %s (%s s after start)", table.concat(r.ready_files, ", "), log.seconds(sys.monotonic() - r.started))
  netcfg.post_ready(r)
end

return M
