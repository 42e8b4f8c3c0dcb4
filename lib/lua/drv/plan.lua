--- drv.plan: what a run would do, and a recipe's options, printed without
-- changing anything (`drvrun --plan RECIPE`, `drvrun RECIPE --help`).
local M = {}

local options = require "drv.options"
local stack = require "drv.stack"
local netcfg = require "drv.netcfg"
local graph = require "drv.graph"
local kmod = require "drv.kmod"
local cache = require "drv.cache"
local secureboot = require "drv.secureboot"
local fs = require "drv.fs"

-- The loaded modules, for a plan: nil and why when they cannot be read.
local function live_modules()
  local ctx, err = kmod.new()
  if not ctx then return nil, err end
  local ok, live = pcall(stack.snapshot, ctx)
  if not ok then return nil, tostring(live) end
  return live
end

-- The modules of the build this run would reuse, when its sources are here
-- already (a local path, or a download in the cache with its sha256) and the
-- build cache holds them; nil otherwise.
local function cached_build(r)
  for key, src in pairs(r.source_specs) do
    local path
    if src.path then
      path = r:expand(src.path)
    else
      local url, sha = r:expand(src.url), r:expand(src.sha256)
      path = cache.source_path(r, url)
      if sha == "" or r:sha256(path) ~= sha then return nil end
    end
    if not fs.exists(path) then return nil end
    r.sources[key] = path
  end
  return (cache.load(r, cache.entry(r)))
end

--- Print what a run would do, changing nothing.
-- @tparam table r the run (drv.run) with the resolved options
-- @tparam table specs every option's spec (drv.recipe.option_specs)
-- @param[opt] out a file (default io.stdout)
function M.plan(r, specs, out)
  out = out or io.stdout
  local recipe, opt = r.recipe, r.opt
  local function say(fmt, ...) out:write(fmt:format(...), "\n") end
  say("plan: %s %s for kernel %s (nothing is changed)", recipe.name, recipe.version, r.kver)
  say("options:")
  for _, line in ipairs(options.describe(specs, opt)) do say("%s", line) end
  for _, key in ipairs(graph.sorted(r.source_specs)) do
    local src = r.source_specs[key]
    if src.path then
      say("source: %s %s", key, r:expand(src.path))
    else
      local sha = r:expand(src.sha256)
      say("fetch: %s %s (%s)", key, r:expand(src.url), sha ~= "" and "sha256 " .. sha or "no sha256 set: a run refuses it")
    end
  end
  say("build: %s into %s/%s (cached builds are reused)", recipe.name, r.cache, r.kver)
  say("install: %s", r:path(("/lib/modules/%s/updates/%s/"):format(r.kver, recipe.name)))
  if opt.BUILD_ONLY then return 0 end
  local live, why = live_modules()
  if not live then say("unload: unknown (cannot read the loaded modules: %s)", why) end
  local built = cached_build(r)
  secureboot.plan(r, built and cache.entry(r), built, say)
  local deps = built and stack.from_build(r.stack, built)
  local p = stack.plan(r.stack, live or {}, { also = r.unload_also, deps = deps })
  for i, names in ipairs(p.unload) do say("unload %d: %s", i, table.concat(names, " ")) end
  if live and #p.unload == 0 then say("unload: nothing of the stack is loaded") end
  if p.load then
    for i, names in ipairs(p.load) do say("load %d: %s", i, table.concat(names, " ")) end
  else
    local names = {}
    for _, n in ipairs(r.stack) do names[#names + 1] = n end
    table.sort(names)
    say("load: %s (after the build, in the order of their dependencies)", table.concat(names, " "))
  end
  for _, b in ipairs(p.blockers) do say("blocked: %s", b) end
  netcfg.plan(r, say)
  if recipe.expose then say("mount: rbind / %s", r:expand(recipe.expose)) end
  say("ready: %s", table.concat(opt.READY_FILES, " "))
  return 0
end

--- Print how to run a recipe and its options with their values here, given
-- the KEY=VALUE arguments `kv` (`drvrun RECIPE --help`).
function M.help(recipe, specs, script, kv, out)
  out = out or io.stdout
  out:write(("usage: drvrun [--plan] %s [KEY=VALUE...]\n\n%s %s%s\n\n"):format(script, recipe.name,
    recipe.version, recipe.description and ": " .. recipe.description or ""))
  out:write("options (a KEY=VALUE argument overrides the environment variable KEY, which overrides the default):\n")
  local values, err = options.resolve(specs, kv)
  for _, line in ipairs(options.describe(specs, values)) do out:write(line, "\n") end
  if err then out:write("\n", err, "\n") end
  out:write("\nSee what a run would do here, changing nothing: drvrun --plan ", script, " [KEY=VALUE...]\n")
  return 0
end

return M
