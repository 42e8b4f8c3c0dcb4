--- bench/swap.lua MODE NETSTATE NAME...: swap the loaded module stack for the one installed under
-- /lib/modules/K/updates/ubuntu-ofed, with drvrun's library as the recipe's load phase does it
-- (drv.stack.plan, drv.stack.swap), for bench/guest.lua. MODE `graph`: each module as soon as
-- what it waits for is done (drvrun's way); `levels`: a barrier between dependency levels (the
-- way it replaced). NETSTATE `-`: the network is not kept; a file: the configuration of the
-- stack's network devices is kept across the swap there (drv.netcfg.around: saved before, waited
-- for and restored after, as the recipe does). Prints "down SECONDS" (drv.stack.swap's own clock).
local kmod = require "drv.kmod"
local stack = require "drv.stack"
local netcfg = require "drv.netcfg"
local sys = require "drv.sys"

local mode, netstate = arg[1], arg[2]
assert(mode == "graph" or mode == "levels", "usage: bench/swap.lua graph|levels NETSTATE|- NAME...")
local names = { table.unpack(arg, 3) }
local dir = ("/lib/modules/%s/updates/ubuntu-ofed"):format(sys.uname().release)
local paths, deps = {}, {}
for _, n in ipairs(names) do
  paths[n] = ("%s/%s.ko"):format(dir, n)
  deps[n] = assert(kmod.modinfo(paths[n])).depends
end
local plan = stack.plan(names, stack.snapshot(assert(kmod.new())), { deps = deps })
assert(#plan.blockers == 0, table.concat(plan.blockers, "; "))
if mode == "levels" then plan.unload_after, plan.load_after = nil, nil end
local spec = netstate ~= "-" and { file = netstate, modules = names, timeout = 60 } or nil
-- graph: what is loaded now remembered, as the recipe does (a load then waits only for the unloads
-- of what it replaces); levels: nothing, so every load waits for every unload
local previous = mode == "graph" and stack.remember(assert(kmod.new()), names) or nil
local ok, down = netcfg.around(spec, function() return stack.swap(plan, paths, nil, previous) end)
assert(ok, down)
print(("down %.6f"):format(down))
