--- drv.lifecycle: a recipe's run, from start to stop, in the order it happens.
--
--   start    the instance lock (one run of a recipe per host); the ready files and
--            a blacklist a killed run left removed; its journal undone (recovery)
--   prepare  checks that need nothing changed: the recipe's, the network guard's,
--            whether the stack could be reloaded at all
--   await    the recipes this one requires ready; the recipe's own waits
--   build    the sources fetched; the build cache, else the recipe's build
--   install  (the host-wide lock from here on) the modules and the recipe's files
--   load     the stack swapped for the built one, the network kept across, verified;
--            rolled back when what answered before it does not after it
--   expose   the container's root bound where the host sees it
--   ready    the ready files written; the post-ready hooks
--   wait     until a signal, watching that the stack stays loaded
--   stop     the ready files removed first, then the journal undone in reverse
--
-- A phase is its `run(s)` and its `plan(s, say)` side by side: what `drvrun --plan`
-- says of a phase is written next to what the phase does. `s` is the run's
-- private state (drv.run); recipes see `s.r`. Every change to the host is
-- recorded in the journal before it is made; each kind's undo is defined next
-- to the phase that records it.
local M = {}

local run = require "drv.run"
local journal = require "drv.journal"
local options = require "drv.options"
local ready = require "drv.ready"
local stack = require "drv.stack"
local netcfg = require "drv.netcfg"
local secureboot = require "drv.secureboot"
local graph = require "drv.graph"
local cache = require "drv.cache"
local ahead = require "drv.ahead"
local kernels = require "drv.kernels"
local fault = require "drv.fault"
local mount = require "drv.mount"
local expose = require "drv.expose"
local kmod = require "drv.kmod"
local fs = require "drv.fs"
local sys = require "drv.sys"
local lock = require "drv.lock"
local signal = require "drv.signal"
local log = require "drv.log"

local EXIT_REFUSED = 3 -- another instance of the recipe runs on this host

-- ---- the run's state ----------------------------------------------------------------

-- A field of the recipe that may be a function of the run (name, version, stack, sources): its value here,
-- what a function returned checked as the field itself is (`check(key, value)` raises).
local function field_value(s, key, check)
  local v = s.recipe[key]
  if type(v) == "function" then
    v = v(s.r)
    if v ~= nil or key ~= "sources" then check(key, v) end
  end
  return v
end

-- Where recipes that require `name` note it while their stack is loaded (their load phase):
-- STATE_DIR/<name>.dependents/<recipe>, the modules of its stack, one a line.
local function dependents_dir(opt, name)
  return ("%s/%s.dependents"):format(opt.STATE_DIR, name)
end

--- A run of `recipe` (checked by drv.recipe) with the resolved options `opt`: its state.
-- `check(key, value)` checks what a field's function returned (drv.recipe.check_field).
function M.new(recipe, opt, check)
  local s = run.new(recipe, opt)
  s.r = run.facade(s)
  s:named(field_value(s, "name", check), field_value(s, "version", check))
  s.stack = field_value(s, "stack", check)
  s.source_specs = field_value(s, "sources", check) or {}
  local also, why
  if recipe.unload_also then also, why = recipe.unload_also(s.r) end
  s.unload_also, s.unload_why = also or {}, why or {}
  return s
end

-- ---- the instance lock and the host-wide lock --------------------------------------

-- The instance lock (STATE_DIR/<name>.lock), held for the whole run, stop included: what a
-- second instance would undo (the journal, the ready files) belongs to a live run. nil when
-- held; else the exit code, after saying which instance runs (INSTANCE_WAIT: how long to wait).
local function claim_instance(s)
  local path = ("%s/%s.lock"):format(s.opt.STATE_DIR, s.name)
  s:must("instance lock", fs.mkdir(s.opt.STATE_DIR))
  local l, err, errno = lock.acquire(path, {
    timeout = s.opt.INSTANCE_WAIT, remove = true, interrupt_fd = s:interrupt_fd(),
    owner = ("%s %s on %s"):format(s.name, s.version, sys.hostname() or "?"),
    on_wait = function(holder)
      log.info("instance: another %s runs on this host (%s): waiting up to %d s for it to end", s.name, holder,
               s.opt.INSTANCE_WAIT)
    end,
  })
  if l then
    s.instance = l
    return nil
  end
  if errno == "EINTR" then
    log.info("instance: %s; nothing was changed", err)
    return 0
  end
  log.error("instance: another %s runs on this host (%s); it is left as it is. Stop it first (its pod or container), "
            .. "or set INSTANCE_WAIT=SECONDS to wait for it", s.name, err:match("held by (.*)$") or err)
  return EXIT_REFUSED
end

local function release_instance(s)
  if s.instance then s.instance:unlock() end
  s.instance = nil
end

-- The host-wide lock (LOCK_FILE): held while the host changes (install to ready, recovery, stop),
-- not while waiting or building: other driver containers on the host reload meanwhile.
local function lock_host(s, timeout)
  s.lock = s:take_lock("lock", s.opt.LOCK_FILE, {
    timeout = timeout or s.opt.LOCK_TIMEOUT,
    owner = ("%s %s"):format(s.name, s.version),
    on_wait = function(holder) log.info("lock: waiting for %s (held by %s)", s.opt.LOCK_FILE, holder) end,
  })
end

local function unlock_host(s)
  if s.lock then s.lock:unlock() end
  s.lock = nil
end

-- ---- start: what a killed run left -------------------------------------------------

local function remove_ready_files(s)
  local ok, err = ready.remove(s.opt.READY_FILES)
  if not ok then log.error("stop: %s", err) end
end

-- The blacklist a killed run of this recipe left (its first line says drvrun wrote it).
local function blacklist_header(s)
  return "# Written by drvrun " .. s.name .. " while it reloads the driver stack; removed after."
end

local function remove_stale_blacklist(s)
  local file = s.opt.BLACKLIST_FILE
  if file == "" then return end
  local text = fs.read(file)
  if text and text:sub(1, #blacklist_header(s)) == blacklist_header(s) then
    s:must("remove the stale blacklist " .. file, fs.remove(file))
    log.warn("blacklist: removed %s, left by a run of %s that did not stop cleanly", file, s.name)
  end
end

local function recover(s)
  local old = journal.recover(s.journal.path)
  if not old or #old.entries == 0 then return end
  lock_host(s) -- another container may be mid-reload
  log.warn("recovery: undoing %d changes left by an earlier run that did not stop cleanly", #old.entries)
  local o = { hurry = false, recovering = true }
  local ok, failures = old:undo_all(o)
  if not ok then s:fail("recovery: %s", table.concat(failures, "; ")) end
  if o.kept_volume then
    local parent = o.kept_volume:match("^(.+)/[^/]+$") or "/"
    log.warn("expose: %s holds the root the killed run exposed, and the engine bound it as this container's "
             .. "volume: this container cannot unmount the host's copy, which stays mounted there, with what the "
             .. "killed run left in it, under this run's root and after its stop. Unmount it on the host "
             .. "(`umount -R %s`), or make the parent directory the volume (`docker run -v %s:%s:rshared`, a "
             .. "hostPath of %s in a pod) so that the next run unmounts it", o.kept_volume, o.kept_volume, parent,
             parent, parent)
    -- its ready files as it wrote them, through its own root; once the engine removed the killed
    -- container's layer, that root's overlay still shows them and cannot remove them (ENOENT)
    local under = {}
    for _, path in ipairs(s.opt.READY_FILES) do under[#under + 1] = o.kept_volume .. path end
    local removed, err = ready.remove(under)
    if not removed then log.error("recovery: %s", err) end
  end
  unlock_host(s)
end

-- ---- the reload: the plan, and what must hold before anything is unloaded ---------------

-- What may be unloaded with the stack, and why: the recipe's `unload_also`, and the modules of
-- the recipes that require this one (noted now: their runs load them back).
local function also_unloaded(s)
  local also, why = table.move(s.unload_also, 1, #s.unload_also, 1, {}), setmetatable({}, { __index = s.unload_why })
  local dir = dependents_dir(s.opt, s.name)
  for _, dependent in ipairs(fs.dir(dir) or {}) do
    for module in (fs.read(dir .. "/" .. dependent) or ""):gmatch("[%w_]+") do
      also[#also + 1] = module
      why[module] = ("a module of %s, which requires %s (its run loads it back)"):format(dependent, s.name)
    end
  end
  return also, why
end

-- The reload as the kernel is now: what to unload (holders first), what to load (once the
-- build gave the graph), what blocks it, and why each module outside the stack goes with it.
-- One computation for prepare's check, the load and the plan.
local function reload_plan(s, live)
  local also, why = also_unloaded(s)
  local plan = stack.plan(s.stack, live or stack.snapshot(s:kmod()),
                          { also = also, deps = s.stack_deps, devices = s.recipe.devices })
  plan.why = why
  return plan
end

local function refuse_blockers(s, plan)
  if #plan.blockers > 0 then s:fail("cannot reload the driver stack: %s", table.concat(plan.blockers, "; ")) end
end

-- ---- the phases -------------------------------------------------------------------

local PHASES = {}
local function phase(name, def)
  def.name = name
  PHASES[#PHASES + 1] = def
  PHASES[name] = def
end

-- Where expose mounts the root must reach the host (drv.expose): refused now when it would not.
local function check_expose(s)
  local target = s.recipe.expose and s:expand(s.recipe.expose)
  if not target then return end
  local view, err = expose.host_view(target)
  if not view then s:fail("expose: %s", err) end
  s.expose_view = view
end

phase("prepare", {
  run = function(s)
    if not s.opt.BUILD_ONLY and s.opt.BLACKLIST_FILE ~= "" then
      local dir = s.opt.BLACKLIST_FILE:match("^(.*)/[^/]+$") or "."
      if not fs.exists(dir) then
        s:fail("blacklist directory %s does not exist: mount the host's /run/modprobe.d there, or set "
               .. "BLACKLIST_FILE= (empty) to reload without a blacklist", dir)
      end
    end
    secureboot.prepare(s) -- the signing options; under enforcement, a key the kernel trusts
    if s.recipe.prepare then s.recipe.prepare(s.r) end
    netcfg.prepare(s)
    if s.opt.BUILD_ONLY then return end
    refuse_blockers(s, reload_plan(s))
    check_expose(s)
  end,
})

-- A required recipe, ready: its ready file under its root live (every module it names loaded
-- as it says, this boot) and of that recipe. With BUILD_ONLY its root is enough (files only).
local function required_ready(s, req, root)
  if s.opt.BUILD_ONLY then
    if not fs.exists(root) then return nil, ("%s does not exist"):format(root) end
    return { recipe = req.recipe, root = root }
  end
  local file = root .. "/" .. ready.NAME
  local ok, parsed = ready.live(file)
  if not ok then return nil, parsed end
  if parsed.fields.recipe ~= req.recipe then
    return nil, ("%s is the ready file of %s, not of %s"):format(file, tostring(parsed.fields.recipe), req.recipe)
  end
  return { recipe = req.recipe, root = root, ready = file, version = parsed.fields.version,
           kernel = parsed.fields.kernel, modules = parsed.modules }
end

local function each_requirement(s, fn)
  for _, key in ipairs(graph.sorted(s.recipe.requires or {})) do
    local req = s.recipe.requires[key]
    fn(key, req, s:expand(req.root))
  end
end

phase("await", {
  run = function(s)
    each_requirement(s, function(key, req, root)
      s.requires[key] = s:wait_for(("%s (%s) in %s"):format(key, req.recipe, root),
                                   function() return required_ready(s, req, root) end)
    end)
    if s.recipe.await then s.recipe.await(s.r) end
  end,
  plan = function(s, say)
    each_requirement(s, function(key, req, root)
      local got, why = required_ready(s, req, root)
      say("requires: %s: %s in %s (%s)", key, req.recipe, root, got and "ready now" or "waits: " .. why)
    end)
  end,
})

local function fetch_source(s, key, src)
  local url, sha = s:expand(src.url), s:expand(src.sha256)
  local dest = cache.source_path(s, url)
  if sha ~= "" and s:sha256(dest) == sha then
    log.info("source %s: %s already in the cache", key, dest)
    return dest
  end
  s:checked("fetch " .. key, require("drv.fetch").get(url, dest, {
    sha256 = sha ~= "" and sha or nil, resume = true, low_speed_time = s.opt.FETCH_STALL_TIMEOUT,
    deadline = s.opt.FETCH_TIMEOUT, interrupt_fd = s:interrupt_fd() }))
  return dest
end

-- Sources: fetched into the cache, skipped when present with the right checksum; a `path`
-- source (a local file or directory) is used where it is.
local function fetch_sources(s)
  s:must("cache " .. s.cache .. "/sources", fs.mkdir(s.cache .. "/sources"))
  for key, src in pairs(s.source_specs) do
    if src.path then
      local path = s:expand(src.path)
      if not fs.exists(path) then s:fail("source %s: %s does not exist", key, path) end
      s.sources[key] = path
    else
      s.sources[key] = fetch_source(s, key, src)
    end
    s:check_cancel()
  end
end

-- A build for another kernel than the running one is refused before anything changes: the
-- kernel would refuse its modules ("invalid module format") once the old stack is gone.
local function refuse_other_kernel(s, modules)
  local running = sys.uname().release
  for _, m in ipairs(modules) do
    local built_for = (m.vermagic or ""):match("^%S+") or "(none)"
    if built_for ~= running then
      s:fail("%s was built for kernel %s (vermagic \"%s\"), but the running kernel is %s: refusing it before anything "
             .. "is unloaded. Is KVER (%s) set to another kernel, or the build cache or precompiled image one for kernel "
             .. "%s? Leave KVER unset to build for the running kernel", m.name, built_for, m.vermagic or "", running,
             s.kver, built_for)
    end
  end
end

-- The build cache entry's modules taken for this run: the stack's graph from what the build
-- produced (drv.stack.from_build); their signed copies, each checked as the kernel will check it.
local function take_build(s, entry, modules, kept)
  if not s.opt.BUILD_ONLY then refuse_other_kernel(s, modules) end
  local deps, kernel = stack.from_build(s.stack, modules)
  if not deps then s:fail("%s", kernel) end
  s.stack_deps, s.kernel_deps = deps, kernel
  s.built, s.kept, s.build_id = modules, kept, entry.id
  secureboot.after_build(s, entry)
  cache.used(s, entry)
end

-- The sources, when they are here already (a local path, or a download in the cache with its
-- sha256): noted in s.sources, as fetch_sources does; for the plan.
local function sources_at_hand(s)
  for key, src in pairs(s.source_specs) do
    local path = src.path and s:expand(src.path) or cache.source_path(s, s:expand(src.url))
    if src.url and (s:expand(src.sha256) == "" or s:sha256(path) ~= s:expand(src.sha256)) then return false end
    if not fs.exists(path) then return false end
    s.sources[key] = path
  end
  return true
end

-- The modules of the build this run would reuse, when its sources are here already and the
-- build cache holds them; for the plan.
local function cached_build(s)
  return sources_at_hand(s) and (cache.load(s, cache.entry(s))) or nil
end

-- The recipe's build; a failure (not a signal) is kept in the cache with its log, for the plan
-- of a kernel (drv.ahead's verdict: why a build for it fails).
local function build_or_note(s, entry)
  local ok, res = pcall(s.recipe.build, s.r)
  if ok then return res end
  if getmetatable(res) ~= run.Cancel then cache.note_failure(entry, tostring(res), s.build_log) end
  error(res, 0)
end

phase("build", {
  run = function(s)
    fetch_sources(s)
    -- One build at a time in a recipe's cache for a kernel (a build-only run for an image
    -- and a node's run may share it): they share its build tree. Held until the phase ends.
    local _ <close> = s:take_lock("build lock", cache.work_dir(s) .. ".lock", {
      timeout = s.opt.BUILD_TIMEOUT, remove = true, owner = ("%s build for %s"):format(s.name, s.kver),
      on_wait = function(holder) log.info("build: waiting for another build in %s to end (%s)", s.cache, holder) end })
    local entry = cache.entry(s)
    local cached, kept = cache.load(s, entry)
    if cached then
      log.info("build: cache hit for kernel %s (%s)", s.kver, entry.dir)
      return take_build(s, entry, cached, kept)
    end
    if not s.recipe.build then s:fail("nothing in the build cache at %s and the recipe has no build", entry.dir) end
    local res = build_or_note(s, entry)
    local deps, err = stack.from_build(s.stack, res.modules)
    if not deps then s:fail("%s", err) end
    cache.store(s, entry, res)
    take_build(s, entry, cache.load(s, entry))
    cache.prune(s, entry, kernels.bootable(s.opt.HOST_ROOT))
  end,
  plan = function(s, say)
    for _, key in ipairs(graph.sorted(s.source_specs)) do
      local src = s.source_specs[key]
      if src.path then
        say("source: %s %s", key, s:expand(src.path))
      else
        local sha = s:expand(src.sha256)
        say("fetch: %s %s (%s)", key, s:expand(src.url), sha ~= "" and "sha256 " .. sha or "no sha256 set: a run refuses it")
      end
    end
    say("build: %s into %s/%s (cached builds are reused)", s.name, s.cache, s.kver)
    sources_at_hand(s)
    ahead.plan(s, say)
  end,
})

-- The built modules under ROOT/lib/modules/KVER/updates/<recipe>/, then depmod. depmod runs
-- only when a file changed: it reads every module of the kernel.
local function install_modules(s)
  local dir = s:path(("/lib/modules/%s/updates/%s"):format(s.kver, s.name))
  local changed, known = false, {}
  s:must("install", fs.mkdir(dir))
  for _, m in ipairs(s.built) do
    local dest = dir .. "/" .. m.name .. ".ko"
    if s:sha256(dest) ~= m.sha256 then
      s:must("install " .. dest, fs.copy(m.path, dest))
      changed = true
    end
    m.installed, known[dest] = dest, m.sha256
  end
  if not changed then return log.info("install: %s already installed", dir) end
  local t0 = sys.monotonic()
  log.info("install: %s changed; depmod %s (it reads every module of the kernel)", dir, s.kver)
  -- its outputs kept in the build cache: a container starting again on a fresh layer copies them
  local ok = s:checked("depmod", require("drv.compile").depmod(s.kver, s.root, {
    interrupt_fd = s:interrupt_fd(), known = known, memo = ("%s/%s/depmod"):format(s.cache, s.kver) }))
  log.info("install: depmod %s in %.1f s", ok == "remembered" and "outputs copied from the build cache (the same "
           .. "module tree as the last run's)" or "done", sys.monotonic() - t0)
  s.kmod_ctx = nil -- its indexes are the old ones
end

-- The srcversions the stack's modules were built with: `{ [name] = srcversion or false }`.
local function built_srcversions(s)
  local want, in_stack = {}, {}
  for _, n in ipairs(s.stack) do in_stack[n] = true end
  for _, m in ipairs(s.built) do
    local name = stack.module_name(m.name)
    if in_stack[name] then want[name] = m.srcversion ~= "" and m.srcversion or false end
  end
  return want
end

-- What is loaded now of the stack and of what goes with it, remembered (files and order) so
-- that stop can load it back; nothing when the built stack is loaded already (no reload follows).
local function remember_previous(s)
  local ctx, names = s:kmod(), {}
  for _, list in ipairs { s.stack, s.unload_also } do
    for _, n in ipairs(list) do
      if ctx:state(n) then names[#names + 1] = n end
    end
  end
  s.previous = stack.remember(ctx, names)
end

phase("install", {
  run = function(s)
    if not s.opt.BUILD_ONLY then
      local _
      s.stack_loaded, _, s.verified = stack.verify(s:kmod(), built_srcversions(s))
      if not s.stack_loaded then remember_previous(s) end
    end
    -- The module files serve a load; with the built stack loaded, none follows in this run (a
    -- container restarting on a fresh layer would copy them and recall depmod's index for nothing).
    if s.stack_loaded then
      log.info("install: the built stack is loaded already: its modules are not installed again (nothing loads them)")
    else
      install_modules(s)
    end
    if s.recipe.install then s.recipe.install(s.r) end
  end,
  plan = function(s, say)
    say("install: %s", s:path(("/lib/modules/%s/updates/%s/"):format(s.kver, s.name)))
  end,
})

-- The kernel's modules a run loaded for its stack: undone after the stack's own entry (which is
-- newer), each unloaded unless something uses it then (the modules loaded back).
journal.define("kernel_modules", function(e)
  return stack.unload_unused(e.levels)
end)

-- What the stack needs from the kernel (mlx5_core: psample, tls...; v4l2loopback: videodev), loaded
-- from the kernel's own tree before the old stack goes, so that the new one does not fail on an
-- unknown symbol where nothing had loaded them yet; journaled, so that stop unloads what nothing
-- uses any more. A dependency that is neither loaded nor the kernel's fails.
local function load_kernel_deps(s, ctx)
  local missing = {}
  for _, n in ipairs(s.kernel_deps) do
    if not ctx:state(n) then missing[#missing + 1] = n end
  end
  if #missing == 0 then return end
  local inbox = stack.inbox(ctx, missing)
  for _, n in ipairs(missing) do
    if not inbox.paths[n] then
      s:fail("the stack needs %s, which is not loaded and is not a module of the kernel in %s", n, ctx:dirname())
    end
  end
  log.info("load: first the kernel's %s (the stack needs them)", table.concat(graph.flatten(inbox.levels), " "))
  s.journal:record({ kind = "kernel_modules", levels = inbox.levels })
  s:must("load the kernel's modules", stack.load(inbox.levels, inbox.paths, nil, inbox.after))
end

-- Each required recipe still ready as it was when awaited (not mid-reload), and this run
-- noted as its dependent (STATE_DIR/<required>.dependents/<name>: its reload unloads this
-- stack first), journaled.
local function check_requirements(s)
  each_requirement(s, function(key, req, root)
    local now, why = required_ready(s, req, root)
    if not now then s:fail("%s (%s) is not ready any more: %s; not loading now", key, req.recipe, why) end
    s.requires[key] = now
    local dir = dependents_dir(s.opt, req.recipe)
    local file = dir .. "/" .. s.name
    s.journal:record({ kind = "file", path = file })
    s:must("note the dependency on " .. req.recipe, fs.mkdir(dir))
    s:must("note the dependency on " .. req.recipe, fs.write(file, table.concat(s.stack, "\n") .. "\n"))
  end)
end

local function write_blacklist(s)
  local names = s.recipe.blacklist and s.recipe.blacklist(s.r) or {}
  local file = s.opt.BLACKLIST_FILE
  if file == "" or #names == 0 then return nil end
  local lines = { blacklist_header(s) }
  for _, n in ipairs(names) do lines[#lines + 1] = "blacklist " .. n end
  local entry = s.journal:record({ kind = "file", path = file })
  s:must("blacklist " .. file, fs.write(file, table.concat(lines, "\n") .. "\n"))
  log.info("blacklist: %s written (%d modules) for the reload", file, #names)
  return entry
end

local function remove_blacklist(s, entry)
  if not entry then return end
  fs.remove(entry.path, { missing_ok = true })
  s.journal:forget(entry)
  log.info("blacklist: %s removed", entry.path)
end

-- Modules outside the stack unloaded with it, each with its reason.
local function say_why_also(s, plan)
  local in_stack = {}
  for _, n in ipairs(s.stack) do in_stack[n] = true end
  for _, name in ipairs(graph.flatten(plan.unload)) do
    if not in_stack[name] then
      log.info("load: unloading %s first: %s", name, plan.why[name] or "it uses the stack")
    end
  end
end

-- A run killed while its swap or its stop's restore had RCU grace periods expedited
-- (drv.stack.expedited) left them so: the kernel's setting as the swap found it, put back.
local function put_back_rcu(e)
  if not e.rcu_expedited or stack.rcu_expedited() == e.rcu_expedited then return end
  local ok, err = stack.set_rcu_expedited(e.rcu_expedited)
  if ok then
    log.info("stop: RCU grace periods back to rcu_expedited=%s (a run was killed while it expedited them)",
             e.rcu_expedited)
  else
    log.warn("stop: cannot put rcu_expedited back to %s: %s", e.rcu_expedited, err)
  end
end

local function restore_modules(e, o)
  if not e.restore then return true end
  if o.lost then log.warn("stop: the modules changed behind this run's back: leaving them as they are"); return true end
  if o.hurry then
    log.warn("stop: %s: not restoring the previous modules; %s stay loaded as they are", o.hurry,
             table.concat(e.names, " "))
    return true
  end
  log.info("stop: unloading %s (holders first)", table.concat(e.names, " "))
  local net = e.net and netcfg.save(e.net)
  local ok, err = stack.restore(e.names, e.previous)
  if net then netcfg.restore(e.net, net, o.deadline and math.min(e.net.timeout, o.deadline - sys.monotonic())) end
  return ok, err
end

-- The swap's journal entry: the new stack's modules, what to load back, whether to, the network
-- to keep across, and the kernel's rcu_expedited as the swap found it. Its undo (stop, or the
-- next run's recovery) unloads the stack and loads back the previous modules, the network kept
-- across that reload too, then puts rcu_expedited back if a killed run left it changed.
journal.define("modules", function(e, o)
  local ok, err = restore_modules(e, o)
  put_back_rcu(e)
  return ok, err
end)

-- The stack swapped: the blacklist for the time of it; the swap journaled before it starts;
-- the network saved before the unload and restored after the load (also after a failed load,
-- which loads the previous modules back).
local function swap(s, plan)
  local ctx = s:kmod()
  load_kernel_deps(s, ctx)
  local unload = graph.flatten(plan.unload)
  log.info("load: unload %s", #unload > 0 and table.concat(unload, " ") or "nothing (none of the stack is loaded)")
  say_why_also(s, plan)
  log.info("load: load %s", table.concat(graph.flatten(plan.load), " "))
  local paths = {}
  for _, m in ipairs(s.built) do paths[stack.module_name(m.name)] = m.installed or m.path end
  local blacklist = write_blacklist(s)
  local net = netcfg.spec(s)
  local swapped = s.journal:record({ kind = "modules", names = graph.flatten(plan.load), previous = s.previous,
                                     restore = s.opt.RESTORE_DRIVER_ON_POD_TERMINATION, net = net,
                                     rcu_expedited = stack.rcu_expedited() })
  local state = net and netcfg.save(net)
  local ok, down_or_err = stack.swap(plan, paths, s.recipe.module_options and s.recipe.module_options(s.r), s.previous)
  if state then netcfg.restore(net, state) end
  remove_blacklist(s, blacklist)
  if not ok then s:fail("reload: %s", down_or_err) end
  log.info("load: the stack was down for %.3f s", down_or_err)
  return swapped
end

-- What answered before the reload does not after it (`why`): the previous stack loaded back, the
-- network kept across that reload too, and the run fails. The swap's entry (`swapped`) is then
-- forgotten: stop has nothing of it left to undo (unless the roll back failed).
local function roll_back(s, swapped, why)
  log.error("load: %s; rolling back to the previous stack and its network", why)
  if netcfg.around(swapped.net, function() return stack.restore(swapped.names, swapped.previous) end) then
    s.journal:forget(swapped)
  end
  s:fail("reload: %s; rolled back to the previous stack and its network", why)
end

phase("load", {
  run = function(s)
    check_requirements(s)
    if s.recipe.before_load then s.recipe.before_load(s.r) end
    if s.stack_loaded then
      log.info("load: the built stack is already loaded (srcversions match); no reload")
      return netcfg.restore_leftover(netcfg.spec(s))
    end
    local plan = reload_plan(s)
    refuse_blockers(s, plan)
    local reach = netcfg.reach_before(s) -- what answers now must answer after the reload
    local swapped = swap(s, plan)
    local good, bad, states = stack.verify(s:kmod(), built_srcversions(s))
    if not good then s:fail("verify: %s", table.concat(bad, "; ")) end
    local unanswered = netcfg.reach_after(s, reach)
    if unanswered then roll_back(s, swapped, unanswered) end
    s.verified = states
    if s.recipe.after_load then s.recipe.after_load(s.r) end
  end,
  plan = function(s, say)
    local ctx, why = kmod.new()
    local ok, live = false, nil
    if ctx then ok, live = pcall(stack.snapshot, ctx) end
    if not ok then say("unload: unknown (cannot read the loaded modules: %s)", ctx and tostring(live) or why) end
    local built = cached_build(s)
    secureboot.plan(s, built and cache.entry(s), built, say)
    s.stack_deps = built and stack.from_build(s.stack, built)
    local p = reload_plan(s, ok and live or {})
    for i, names in ipairs(p.unload) do say("unload %d: %s", i, table.concat(names, " ")) end
    if ok and #p.unload == 0 then say("unload: nothing of the stack is loaded") end
    if p.load then
      for i, names in ipairs(p.load) do say("load %d: %s", i, table.concat(names, " ")) end
    else
      local names = table.move(s.stack, 1, #s.stack, 1, {})
      table.sort(names)
      say("load: %s (after the build, in the order of their dependencies)", table.concat(names, " "))
    end
    for _, b in ipairs(p.blockers) do say("blocked: %s", b) end
    netcfg.plan(s, say)
  end,
})

-- The expose's journal entry: the rbind of the container's root; undone by unmounting it, and
-- only it: never the volume under it (the host's, which a container engine mounted there).
-- A killed run's root can be that volume (expose.is_volume): recovery keeps it, for unmounting
-- it would cut this container off the host's path and leave the host's copy.
journal.define("mount", function(e, o)
  if not expose.exposed_at(e.target) then return true end
  if expose.is_volume(e.target) then
    if o.recovering then o.kept_volume = e.target end
    return true
  end
  return mount.umount(e.target, { lazy = true })
end)

phase("expose", {
  run = function(s)
    local target = s.recipe.expose and s:expand(s.recipe.expose)
    if not target then return end
    if expose.exposed_at(target) and not expose.is_volume(target) then
      log.info("expose: replacing a stale mount at %s", target)
      s:must("umount " .. target, mount.umount(target, { recursive = true, lazy = true }))
    end
    s:must("expose", fs.mkdir(target))
    -- /sys must not be rbound into the target: it would pin sysfs submounts.
    s:must("expose /sys", mount.propagation("/sys", "unbindable", { recursive = true }))
    s:must("expose /sys", mount.propagation("/sys", "private"))
    s:must("expose " .. target, expose.isolate(target))
    s.journal:record({ kind = "mount", target = target })
    s:must("expose " .. target, mount.rbind("/", target))
    log.info("expose: container root at %s, %s", target, s.expose_view)
  end,
  plan = function(s, say)
    if s.recipe.expose then say("mount: rbind / %s", s:expand(s.recipe.expose)) end
  end,
})

phase("ready", {
  run = function(s)
    local modules = {}
    for _, name in ipairs(graph.flatten(assert(graph.levels(s.stack_deps)))) do
      local st = s.verified[name]
      modules[#modules + 1] = { name = name, srcversion = st and st.srcversion }
    end
    local text = ready.format { recipe = s.name, version = s.version, kernel = s.kver,
                                time = log.timestamp(), modules = modules }
    s:must("ready", ready.write(s.opt.READY_FILES, text))
    log.info("ready: %s (%s s after start)", table.concat(s.opt.READY_FILES, ", "),
             log.seconds(sys.monotonic() - s.started))
    netcfg.post_ready(s)
  end,
  plan = function(s, say)
    say("ready: %s", table.concat(s.opt.READY_FILES, " "))
  end,
})

local BUILD_PHASES = { prepare = true, await = true, build = true, install = true }

local function run_phase(s, p)
  fault.point("before " .. p.name)
  s:check_cancel()
  local t0 = sys.monotonic()
  log.event("info", "phase " .. p.name .. " started", { phase = p.name })
  p.run(s)
  local saved, err = s.digests:save()
  if not saved then log.warn("cache: cannot keep the file digests: %s", err) end
  local seconds = sys.monotonic() - t0
  log.event("info", ("phase %s done in %s s"):format(p.name, log.seconds(seconds)),
            { phase = p.name, seconds = math.floor(seconds * 1000 + 0.5) / 1000 })
end

-- ---- wait: ready until a signal -------------------------------------------------------

-- Wait for a signal, checking every WATCH_INTERVAL seconds that the stack is still the built one,
-- and building ahead for the host's other kernels (drv.ahead; its child stopped with the wait).
-- False when the stack is not the built one (another container reloaded it): the run ends, so
-- that it is restarted.
local function wait_for_signal(s)
  log.info("waiting for a signal (TERM, INT or HUP) to stop")
  local watcher <close> = ahead.watcher(s)
  if watcher then watcher:tick() end
  local interval = s.opt.WATCH_INTERVAL > 0 and s.opt.WATCH_INTERVAL or nil
  local want = built_srcversions(s)
  while true do
    local sig = s.signals:wait(interval)
    if sig then
      log.info("received SIG%s", sig)
      return true
    end
    if watcher then watcher:tick() end
    local ctx = kmod.new() -- not s:kmod(): nothing here may raise
    local good, bad = true, nil
    if ctx then good, bad = stack.verify(ctx, want) end
    if not good then
      log.error("watch: the driver is not loaded as built any more (%s): no longer ready; stopping, so that "
                .. "the container is restarted and loads it again", table.concat(bad, "; "))
      s.lost = true
      return false
    end
  end
end

-- ---- stop ----------------------------------------------------------------------------

-- Ready files first, then the recipe's stop, then the journal undone newest first. A second
-- signal, or STOP_TIMEOUT, hurries the rest: the slow parts are skipped, and said.
local function stop(s)
  local t0 = sys.monotonic()
  log.event("info", "phase stop started", { phase = "stop" })
  remove_ready_files(s)
  if s.recipe.stop then
    local ok, err = pcall(s.recipe.stop, s.r)
    if not ok then log.error("stop: %s", tostring(err)) end
  end
  local deadline = t0 + s.opt.STOP_TIMEOUT
  local o = { hurry = false, lost = s.lost, deadline = deadline }
  o.skip = function()
    if not o.hurry then
      o.hurry = (s.signals:poll() and "second signal")
                or (sys.monotonic() > deadline and ("STOP_TIMEOUT (%d s) reached"):format(s.opt.STOP_TIMEOUT))
      if o.hurry then log.warn("stop: %s: skipping the slow parts", o.hurry) end
    end
    return false
  end
  local ok, failures = s.journal:undo_all(o)
  if not ok then log.error("stop: %s", table.concat(failures, "; ")) end
  log.event("info", ("phase stop done in %.3f s"):format(sys.monotonic() - t0), { phase = "stop" })
  return ok
end

-- ---- the run, and its plan -------------------------------------------------------------

local function error_text(e)
  if getmetatable(e) == run.Cancel then return "interrupted by SIG" .. e.signal end
  return tostring(e)
end

--- Run the lifecycle; returns the exit code: 0 done (or interrupted and
-- stopped cleanly), 1 failed, 3 another instance of the recipe runs on the host.
function M.run(s)
  s.started = sys.monotonic()
  s.signals = signal.watch({ "TERM", "INT", "HUP" })
  log.info("%s %s for kernel %s", s.name, s.version, s.kver)
  local changes_host = not s.opt.BUILD_ONLY
  if changes_host then
    local refused = claim_instance(s)
    if refused then
      s.signals:close()
      return refused
    end
  end
  local ok, err = pcall(function()
    if changes_host then
      remove_ready_files(s)
      remove_stale_blacklist(s)
      recover(s)
    end
    for _, p in ipairs(PHASES) do
      if changes_host or BUILD_PHASES[p.name] then
        if p.name == "install" and changes_host then lock_host(s) end
        run_phase(s, p)
      end
    end
  end)
  if not ok then log.error("%s", error_text(err)) end
  if ok and s.opt.WAIT and changes_host then
    unlock_host(s)
    fault.point("ready")
    wait_for_signal(s)
  end
  if changes_host and not s.lock and #s.journal.entries > 0 then
    -- stop changes the host too; it waits for the lock no longer than it may take (STOP_TIMEOUT:
    -- the engine's grace ends in SIGKILL), then proceeds without it rather than not at all
    local lok = pcall(lock_host, s, math.min(s.opt.LOCK_TIMEOUT, s.opt.STOP_TIMEOUT))
    if not lok then log.warn("stop: proceeding without the host-wide lock") end
  end
  local stopped = not changes_host or (ok and not s.opt.WAIT) or stop(s)
  unlock_host(s)
  release_instance(s)
  s.signals:close()
  if not stopped or s.lost then return 1 end
  if not ok and getmetatable(err) ~= run.Cancel then return 1 end
  return 0
end

--- Print what a start on the run's kernel (KVER) would find: its build in the cache, being
-- built, failing and why, no headers, not built yet (drv.ahead.verdict); changes nothing.
-- @treturn integer the exit status: drv.ahead.EXIT of the verdict
function M.preflight(s, out)
  out = out or io.stdout
  sources_at_hand(s)
  local v = ahead.plan(s, function(fmt, ...) out:write(fmt:format(...), "\n") end)
  return ahead.EXIT[v.state]
end

--- Print what a run would do, changing nothing: each phase's plan, in order.
-- @tparam table s the run's state (M.new)
-- @tparam table specs every option's spec
-- @param[opt] out a file (default io.stdout)
function M.plan(s, specs, out)
  out = out or io.stdout
  local function say(fmt, ...) out:write(fmt:format(...), "\n") end
  say("plan: %s %s for kernel %s (nothing is changed)", s.name, s.version, s.kver)
  say("options:")
  for _, line in ipairs(options.describe(specs, s.opt)) do say("%s", line) end
  if s.recipe.plan then s.recipe.plan(s.r, say) end
  for _, p in ipairs(PHASES) do
    if p.plan and (not s.opt.BUILD_ONLY or BUILD_PHASES[p.name]) then p.plan(s, say) end
  end
  return 0
end

return M
