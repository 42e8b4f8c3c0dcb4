--- drv.netcfg: the network policy around every reload of a recipe's stack.
--
-- Unloading a NIC driver destroys its network devices; the new one makes them
-- afresh, with defaults. Around every reload (the load phase's swap and the
-- rollback of a failed load, stop's restore, a recovering run's restore), the
-- configuration of each device whose driver is a module of the stack is saved
-- (drv.netstate) to a file next to the journal, waited for after the load
-- (NET_WAIT_TIMEOUT), restored, and the log says what was restored and what
-- could not be. The file outlives a run killed mid-reload: the next one
-- restores it. VFs of the PCI vendors a recipe names (its `network.pin_vf_macs`:
-- OFED's, Mellanox) without an admin MAC are given theirs before they are
-- rebound, so that their RDMA GUID is generated from it (what the original
-- OFED container did after its reload).
--
-- Before anything changes, `prepare` refuses a reload that would take the
-- node's default route, or a GUARD_ADDRESSES address, with it (unless
-- ALLOW_UPLINK_RELOAD); after ready, `post_ready` runs POST_READY_HOOKS.
local M = {}

-- drv.netstate (the largest module) loads at its first use: a run on a node
-- whose stack has no network device, or a restart that reloads nothing,
-- never reads or writes a device's state.
local netstate = setmetatable({}, { __index = function(t, k)
  setmetatable(t, { __index = require "drv.netstate" })
  return t[k]
end })
local net = require "drv.net"
local fs = require "drv.fs"
local proc = require "drv.proc"
local sys = require "drv.sys"
local log = require "drv.log"

--- The options every recipe gets from this module (drv.recipe adds them to its common ones).
M.OPTIONS = {
  NET_RESTORE = { type = "boolean", default = true,
                  doc = "keep the configuration of the stack's network devices (state, MTU, addresses, routes, "
                        .. "eswitch mode, VFs) across every reload: saved before the unload, restored after the load" },
  NET_WAIT_TIMEOUT = { type = "integer", default = 120, min = 1,
                       doc = "seconds the stack's network devices may take to come back after a load (a NIC's "
                             .. "firmware starts in tens of seconds)" },
  GUARD_ADDRESSES = { type = "list", default = "",
                      doc = "addresses that must not be reached through a device of the stack (the API server's, "
                            .. "the management network's): the reload is refused when one is, as when the default "
                            .. "route is" },
  ALLOW_UPLINK_RELOAD = { type = "boolean", default = false,
                          doc = "reload even when the default route or a GUARD_ADDRESSES address goes through a "
                                .. "device of the stack; that device's configuration is restored right after the "
                                .. "load (also with NET_RESTORE=false)" },
  POST_READY_HOOKS = { default = "",
                       doc = "commands run after ready, in order, in drvrun's network namespace (the host's with "
                             .. "hostNetwork: true), separated by ';'; words split at blanks, '...' and \"...\" "
                             .. "quote; no shell unless the command is one (sh -c '...'); output logged; a failure "
                             .. "is logged, not fatal" },
  POST_READY_HOOK_TIMEOUT = { type = "integer", default = 60, min = 1,
                              doc = "seconds each post-ready hook may take before it is killed" },
}

-- The modules whose network devices are kept: the stack and what is unloaded with it.
local function stack_modules(r)
  local names = {}
  for _, list in ipairs { r.stack, r.unload_also or {} } do
    for _, n in ipairs(list) do names[#names + 1] = n end
  end
  return names
end

-- Is a network device bound to one of `modules` now? From sysfs, so that a
-- node without one (most runs: no NIC of the stack) never opens netlink.
local function has_stack_netdev(modules)
  local set = {}
  for _, n in ipairs(modules) do set[n] = true end
  for _, dev in ipairs(fs.dir("/sys/class/net") or {}) do
    local link = fs.readlink("/sys/class/net/" .. dev .. "/device/driver/module")
    if link and set[link:match("([^/]+)$") or ""] then return true end
  end
  return false
end

-- The network state of the stack's devices now (drv.netstate.save); nil, why when it cannot be read.
local function read_now(modules)
  local sock, err = net.open()
  if not sock then return nil, err end
  local ok, state = pcall(netstate.save, sock, modules)
  sock:close()
  if not ok then return nil, tostring(state) end
  return state
end

--- What to keep across the reloads of run `r`: plain data, recorded in the journal's "modules"
-- entry, so that stop and a recovering run do the same. nil when nothing is kept (NET_RESTORE=false,
-- and no uplink the guard let through).
-- @treturn table `{ file = STATE_DIR/<recipe>.network, modules = {...}, timeout = NET_WAIT_TIMEOUT,
--   only = { "bus/device"... } (NET_RESTORE=false: the uplink's devices), pin_vf_macs = { PCI vendor ids } }`
function M.spec(r)
  if not r.opt.NET_RESTORE and not r.net_uplinks then return nil end
  return { file = ("%s/%s.network"):format(r.opt.STATE_DIR, r.name), modules = stack_modules(r),
           timeout = r.opt.NET_WAIT_TIMEOUT, only = not r.opt.NET_RESTORE and r.net_uplinks or nil,
           pin_vf_macs = r.recipe.network and r.recipe.network.pin_vf_macs }
end

local function only(state, keys)
  if not keys then return state end
  local wanted, kept = {}, {}
  for _, k in ipairs(keys) do wanted[k] = true end
  for _, d in ipairs(state.devices) do
    if wanted[netstate.device_key(d)] then kept[#kept + 1] = d end
  end
  state.devices = kept
  return state
end

-- What a run that died mid-reload saved (it was taken before that run's unload), or nil.
local function leftover(spec)
  if not fs.exists(spec.file) then return nil end
  local state, err = netstate.read(spec.file)
  if not state then
    log.warn("network: ignoring %s: %s", spec.file, err)
    fs.remove(spec.file, { missing_ok = true })
    return nil
  end
  log.info("network: %s holds what a run that did not finish its reload saved", spec.file)
  return state
end

--- Before a reload: save the configuration of the stack's devices to spec.file (what a dead run
-- saved there wins for the devices it names). Returns the state, or nil when there is nothing to
-- keep (no device of the stack: nothing is said).
function M.save(spec)
  local left = leftover(spec)
  if not left and not has_stack_netdev(spec.modules) then return nil end
  local state, err = read_now(spec.modules)
  if not state then
    log.error("network: cannot read the configuration of the stack's devices (%s): %s", err,
              left and "restoring what " .. spec.file .. " holds" or "it is not kept across the reload")
    state = left
  elseif left then
    state = netstate.merge(state, left)
  end
  state = state and only(state, spec.only)
  if not state or #state.devices == 0 then
    fs.remove(spec.file, { missing_ok = true })
    return nil
  end
  local ok, werr = netstate.write(spec.file, state)
  if not ok then log.warn("network: cannot keep the saved configuration in %s: %s", spec.file, werr) end
  for _, d in ipairs(state.devices) do log.info("network: saved %s", netstate.describe(d)) end
  return state
end

--- After a reload: wait for the saved devices (at most `timeout` seconds, default spec.timeout),
-- restore what the reload reset, log each setting restored and each that could not be, and remove
-- spec.file. Nothing here fails the run: the driver is loaded, and the log says what is missing.
function M.restore(spec, state, timeout)
  timeout = math.max(0, timeout or spec.timeout)
  local sock, err = net.open()
  if not sock then
    log.error("network: cannot restore the configuration saved in %s: %s", spec.file, err)
    return
  end
  local t0 = sys.monotonic()
  local back, missing = netstate.wait(sock, state, { timeout = timeout })
  if back then
    log.info("network: the stack's devices were back %.1f s after the load", sys.monotonic() - t0)
  else
    log.error("network: %s; restoring the others", missing)
  end
  local left = math.max(0, timeout - (sys.monotonic() - t0)) -- for the VFs and representors restore makes
  t0 = sys.monotonic()
  local ok, report = pcall(netstate.restore, sock, state, { timeout = left, pin_vf_macs = spec.pin_vf_macs })
  sock:close()
  if not ok then
    log.error("network: restoring the configuration saved in %s failed: %s", spec.file, tostring(report))
  else
    for _, what in ipairs(report.restored) do log.info("network: restored %s", what) end
    for _, what in ipairs(report.failed) do log.error("network: could not restore %s", what) end
    log.info("network: %d settings restored, %d could not be, in %.1f s", #report.restored, #report.failed,
             sys.monotonic() - t0)
  end
  fs.remove(spec.file, { missing_ok = true })
end

--- Run `reload()` (an unload and a load of the stack: drv.stack.swap or restore) keeping the
-- configuration of the stack's network devices across it: saved before, restored after, also when
-- it fails (a failed load puts the previous modules back: they make the devices again).
-- @tparam[opt] table spec from M.spec (nil: only reload)
-- @tparam function reload
-- @tparam[opt] number deadline monotonic time by which the wait for the devices must end (stop's)
-- @return what reload returns
function M.around(spec, reload, deadline)
  local state = spec and M.save(spec)
  local res = table.pack(reload())
  if state then M.restore(spec, state, deadline and math.min(spec.timeout, deadline - sys.monotonic())) end
  return table.unpack(res, 1, res.n)
end

--- When no reload happens (the built stack is loaded already): restore what a run killed between
-- its unload and its restore saved, if anything.
function M.restore_leftover(spec)
  if spec and fs.exists(spec.file) then M.around(spec, function() end) end
end

-- ---- before anything changes: the guard and the options -----------------------------

--- Split POST_READY_HOOKS into commands: `{ { "sh", "-c", "ip link" }, { "/bin/fix" } }`, or nil, why.
-- Commands end at ';' or a newline, words at blanks; '...' quotes all, "..." all but \" and \\,
-- and a backslash outside quotes the next character. Nothing is expanded.
function M.parse_commands(text)
  local commands, argv, word, quote = {}, {}, nil, nil
  local function end_word()
    if word then argv[#argv + 1] = word end
    word = nil
  end
  local function end_command()
    end_word()
    if #argv > 0 then commands[#commands + 1] = argv end
    argv = {}
  end
  local i = 1
  while i <= #text do
    local c = text:sub(i, i)
    if quote == "'" then
      if c == "'" then quote = nil else word = word .. c end
    elseif quote == '"' then
      if c == '"' then
        quote = nil
      elseif c == "\\" and text:sub(i + 1, i + 1):match('["\\]') then
        i = i + 1
        word = word .. text:sub(i, i)
      else
        word = word .. c
      end
    elseif c == "'" or c == '"' then
      quote, word = c, word or ""
    elseif c == "\\" then
      if i == #text then return nil, "it ends with a '\\'" end
      i = i + 1
      word = (word or "") .. text:sub(i, i)
    elseif c == ";" or c == "\n" then
      end_command()
    elseif c:match("%s") then
      end_word()
    else
      word = (word or "") .. c
    end
    i = i + 1
  end
  if quote then return nil, ("a %s quote is not closed"):format(quote == "'" and "single" or "double") end
  end_command()
  return commands
end

-- The guard's verdict on the devices now: true; or false, why, devices; or nil, why (unknown).
local function verdict(r)
  local modules = stack_modules(r)
  if not has_stack_netdev(modules) then return true end
  local state, err = read_now(modules)
  if not state then return nil, err end
  return netstate.guard(state, r.opt.GUARD_ADDRESSES)
end

--- Check the options and refuse, before anything changes, a reload that would take the node's
-- default route or a GUARD_ADDRESSES address with it, naming the device and the route or address
-- (ALLOW_UPLINK_RELOAD=true lets it through: that device's configuration is then restored right
-- after the load, whatever NET_RESTORE says). Fails the phase.
function M.prepare(r)
  for _, a in ipairs(r.opt.GUARD_ADDRESSES) do
    if not netstate.is_address(a) then
      r:fail("option GUARD_ADDRESSES: '%s' is not an IPv4 or IPv6 address (give addresses, not names)", a)
    end
  end
  local hooks, why = M.parse_commands(r.opt.POST_READY_HOOKS)
  if not hooks then r:fail("option POST_READY_HOOKS: %s: %s", why, r.opt.POST_READY_HOOKS) end
  r.hooks = hooks
  if r.opt.BUILD_ONLY then return end
  local ok, reasons, devices = verdict(r)
  if ok then return end
  if ok == nil then
    if r.opt.ALLOW_UPLINK_RELOAD then return end
    r:fail("cannot tell whether the reload would take the node's network with it: %s. Set "
           .. "ALLOW_UPLINK_RELOAD=true to reload anyway", reasons)
  end
  if not r.opt.ALLOW_UPLINK_RELOAD then
    r:fail("refusing to reload the driver stack: %s: the node would lose that network while the driver "
           .. "reloads. Set ALLOW_UPLINK_RELOAD=true to reload anyway (the device's configuration is restored "
           .. "right after the load), or take the route or address off the stack's devices", reasons)
  end
  log.warn("network: %s; reloading anyway (ALLOW_UPLINK_RELOAD=true): its configuration is restored right "
           .. "after the load", reasons)
  r.net_uplinks = devices
end

-- ---- after ready ----------------------------------------------------------------------

local HOOK_CAPTURE = 64 * 1024 -- bytes of a hook's output kept in memory (all of it is logged)

--- Run POST_READY_HOOKS, one after the other, each line of their output logged. A hook that
-- fails, times out or cannot start is logged as an error; the driver stays ready. A signal
-- stops the hook and cancels the phase.
function M.post_ready(r)
  for i, argv in ipairs(r.hooks or {}) do
    local label = ("hook %d (%s)"):format(i, argv[1])
    log.info("%s: running %s", label, table.concat(argv, " "))
    local res, err = proc.run(argv, {
      stdin = "", stderr = "stdout", max_capture = HOOK_CAPTURE, timeout = r.opt.POST_READY_HOOK_TIMEOUT,
      interrupt_fd = r.signals and r.signals:fd(),
      on_line = function(_, line) log.info("%s: %s", label, line) end,
    })
    if not res then
      log.error("%s: cannot run it: %s", label, err)
    elseif res.interrupted then
      r:check_cancel()
    elseif res.timed_out then
      log.error("%s: killed after %d s (POST_READY_HOOK_TIMEOUT)", label, r.opt.POST_READY_HOOK_TIMEOUT)
    elseif res.status ~= 0 then
      log.error("%s: failed (%s) after %.1f s; the driver stays ready", label,
                res.status and "exit " .. res.status or res.signal, res.seconds)
    else
      log.info("%s: done in %.1f s", label, res.seconds)
    end
  end
end

-- ---- the plan -----------------------------------------------------------------------

--- What a run would do with the network, for `drvrun --plan`: the devices whose configuration is
-- saved and restored, the guard's verdict, the hooks. `say(fmt, ...)` prints a line.
function M.plan(r, say)
  local modules = stack_modules(r)
  local ok, reasons, uplinks = verdict(r)
  if has_stack_netdev(modules) then
    local state, err = read_now(modules)
    if not state then say("network: unknown (cannot read the network configuration: %s)", err) end
    local uplink = {}
    for _, k in ipairs(ok == false and r.opt.ALLOW_UPLINK_RELOAD and uplinks or {}) do uplink[k] = true end
    for _, d in ipairs(state and state.devices or {}) do
      local kept = r.opt.NET_RESTORE and "save and restore"
        or uplink[netstate.device_key(d)] and "save and restore (the uplink: ALLOW_UPLINK_RELOAD=true)"
        or "leave as the reload makes it (NET_RESTORE=false)"
      say("network: %s %s", kept, netstate.describe(d))
    end
  else
    say("network: no network device of the stack: nothing to save or restore")
  end
  if ok then
    say("guard: the reload takes neither the default route nor a GUARD_ADDRESSES address with it")
  elseif r.opt.ALLOW_UPLINK_RELOAD then
    say("guard: allowed by ALLOW_UPLINK_RELOAD=true: %s", reasons or "unknown")
  else
    say("guard: refused: %s; ALLOW_UPLINK_RELOAD=true would allow it", reasons or "cannot tell")
  end
  local hooks, why = M.parse_commands(r.opt.POST_READY_HOOKS)
  if not hooks then say("post-ready hooks: POST_READY_HOOKS is malformed: %s", why) end
  for i, argv in ipairs(hooks or {}) do say("post-ready hook %d: %s", i, table.concat(argv, " ")) end
end

return M
