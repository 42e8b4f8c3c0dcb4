--- drv.recipe: what a recipe is, and how drvrun takes one in.
--
-- A recipe is a Lua file that returns a table (its fields: FIELDS below; doc/recipes.md).
-- It runs in an environment of its own, as nmap's scripts do: its globals are its own,
-- and of drvrun it reaches the library (`require "drv.log"`, `drv.fs`, the `r` its
-- functions are handed), not the raw C modules (`drv.kmod`, `drv.proc`...) unless it
-- names them in `raw_modules`. The recipe API has a version (`api`); a recipe written
-- for an earlier one runs with a warning naming what changed, or is refused with exit 2
-- naming its file, line and field and how to write it now, never with a traceback of
-- drvrun's own files. Then `main` hands it to the lifecycle (drv.lifecycle).
local M = {}

local config = require "drv.config"
local options = require "drv.options"
local netcfg = require "drv.netcfg"
local secureboot = require "drv.secureboot"
local ahead = require "drv.ahead"
local log = require "drv.log"

--- The recipe API this drvrun implements (doc/recipes.md has the changelog).
M.API = 3
local API_DATES = { "2026-11-25", "2026-12-01", "2026-12-07" }

-- Fields a recipe may have: the types each may be, and whether it is required.
local FIELDS = {
  api = { "number", false }, name = { "string|function", true }, version = { "string|function", true },
  description = { "string", false }, options = { "table", false }, stack = { "table|function", true },
  sources = { "table|function", false }, requires = { "table", false }, raw_modules = { "table", false },
  devices = { "string", false }, network = { "table", false },
  await = { "function", false }, prepare = { "function", false }, build = { "function", false },
  install = { "function", false }, before_load = { "function", false }, after_load = { "function", false },
  stop = { "function", false }, unload_also = { "function", false }, blacklist = { "function", false },
  expose = { "string", false }, module_options = { "function", false }, plan = { "function", false },
}

-- Options every recipe has (a recipe may override their defaults).
local COMMON = {
  KVER = { doc = "kernel release to build for (default: the running kernel)" },
  ROOT = { default = "/", doc = "root to install modules and headers into" },
  BUILD_ONLY = { type = "boolean", default = false,
                 doc = "fetch, build and install into ROOT for KVER; do not touch the running kernel" },
  FETCH_TIMEOUT = { type = "integer", default = 3600, min = 0,
                    doc = "seconds a download may take in all, retries and waits included (0: no limit)" },
  FETCH_STALL_TIMEOUT = { type = "integer", default = 60, min = 1,
                          doc = "seconds without a byte before a download attempt is given up (and retried)" },
  CACHE_DIR = { default = "/var/cache/drvrun", doc = "downloads and build results, per kernel" },
  CACHE_KEEP = { type = "integer", default = 2, min = 1,
                 doc = "builds kept per kernel, most recently used first (2: this one and one to roll back to)" },
  STATE_DIR = { default = "/run/drvrun", doc = "journal of host changes, for stop and crash recovery" },
  LOCK_FILE = { default = "/run/drvrun/host.lock", doc = "host-wide lock: one driver reload at a time" },
  INSTANCE_WAIT = { type = "integer", default = 0, min = 0,
                    doc = "seconds to wait for another instance of this recipe on the host to end (0: refuse at once)" },
  LOCK_TIMEOUT = { type = "integer", default = 600, min = 0, doc = "seconds to wait for the host-wide lock" },
  READY_FILES = { type = "list", default = "/.driver-ready", doc = "files written when the driver is ready" },
  AWAIT_TIMEOUT = { type = "integer", default = 2400, min = 0,
                    doc = "seconds to wait for what the recipe needs (the recipes it requires, other drivers)" },
  WATCH_INTERVAL = { type = "integer", default = 10, min = 0,
                     doc = "while ready, seconds between checks that the modules are still loaded (0: never)" },
  STOP_TIMEOUT = { type = "integer", default = 120, min = 0, doc = "seconds stop may take before it gives up" },
  BUILD_TIMEOUT = { type = "integer", default = 3600, min = 1, doc = "seconds a build may take (all its steps)" },
  BUILD_JOBS = { type = "integer", default = 0, min = 0, doc = "parallel build jobs (0: one per CPU)",
                 value = function(n) return n > 0 and n or require("drv.sys").nproc() end },
  CCACHE = { type = "boolean", default = true,
             doc = "compile through ccache when it is installed, its cache kept in CACHE_DIR: a rebuild "
                   .. "recompiles only what changed" },
  WAIT = { type = "boolean", default = true, doc = "after ready, wait for a signal, then stop" },
  RESTORE_DRIVER_ON_POD_TERMINATION = { type = "boolean", default = true,
                                        doc = "on stop, unload the stack and load back what was loaded before" },
  BLACKLIST_FILE = { default = "",
                     doc = "a modprobe.d file naming the recipe's blacklist (its `blacklist`) while the stack is "
                           .. "swapped, removed after (empty: none); on the host, under /run/modprobe.d, so "
                           .. "that a reboot cannot keep it" },
}
for name, spec in pairs(netcfg.OPTIONS) do COMMON[name] = spec end -- NET_RESTORE, the guard, the hooks
for name, spec in pairs(secureboot.OPTIONS) do COMMON[name] = spec end -- SIGN_KEY, SIGN_CERT, SIGNATURE_CHECK...
for name, spec in pairs(ahead.OPTIONS) do COMMON[name] = spec end -- HOST_ROOT, BUILD_AHEAD, AHEAD_JOBS

--- Every option of a recipe, the common ones included: `{ NAME = spec }`.
function M.option_specs(recipe)
  local specs = {}
  for k, v in pairs(COMMON) do specs[k] = v end
  for k, v in pairs(recipe.options or {}) do specs[k] = v end
  return specs
end

-- ---- checking a recipe: a mistake names the field, and the file and line ---------------

-- A recipe mistake: raised as this table, reported as "FILE:LINE: message" with exit 2.
local Mistake = {}
local function mistake(field, fmt, ...)
  error(setmetatable({ field = field, message = fmt:format(...) }, Mistake), 0)
end

local function check_stack(names)
  local expected = "recipe field 'stack': a list of module names expected ({ \"ib_core\", \"mlx5_core\" })"
  if type(names) ~= "table" then mistake("stack", "%s, got %s", expected, type(names)) end
  local seen = {}
  for key, name in pairs(names) do
    if math.type(key) ~= "integer" or key > #names or type(name) ~= "string" or not name:match("^[%w_]+$") then
      mistake("stack", "%s", expected)
    end
    if seen[name] then mistake("stack", "recipe field 'stack': %s is listed twice", name) end
    seen[name] = true
  end
end

local function check_sources(sources)
  if type(sources) ~= "table" then mistake("sources", "recipe field 'sources': table expected, got %s", type(sources)) end
  for key, src in pairs(sources) do
    local where = ("recipe field 'sources.%s'"):format(tostring(key))
    if type(src) ~= "table" then mistake("sources", "%s: table expected", where) end
    if (src.url == nil) == (src.path == nil) then
      mistake("sources", "%s: { url = ..., sha256 = ... } or { path = ... } expected", where)
    end
    if src.url ~= nil and (type(src.url) ~= "string" or type(src.sha256) ~= "string") then
      mistake("sources", "%s: url and sha256 must be strings", where)
    end
    if src.path ~= nil and type(src.path) ~= "string" then mistake("sources", "%s: path must be a string", where) end
  end
end

local function check_requires(requires)
  for key, req in pairs(requires) do
    local where = ("recipe field 'requires.%s'"):format(tostring(key))
    if type(key) ~= "string" or type(req) ~= "table" or type(req.recipe) ~= "string" or type(req.root) ~= "string" then
      mistake("requires", "%s: { recipe = \"NAME\", root = \"${OPTION}\" } expected (the recipe it needs ready, "
              .. "and the root that recipe exposes)", where)
    end
  end
end

local function check_network(network)
  for key, v in pairs(network) do
    if key ~= "pin_vf_macs" or type(v) ~= "table" then
      mistake("network", "recipe field 'network': { pin_vf_macs = { \"0x15b3\" } } expected (the PCI vendors whose "
              .. "VFs get an admin MAC before their rebind), got a field '%s'", tostring(key))
    end
  end
end

-- A name or version: it names files (the cache, the journal, the install directory).
local function check_word(key, value)
  if type(value) ~= "string" or not value:match("^[%w][%w_.+~:-]*$") then
    mistake(key, "recipe field '%s': a word of letters, digits and _ . + ~ : - expected, got %s", key,
            type(value) == "string" and "'" .. value .. "'" or type(value))
  end
end

--- Check a value of field `key` (a recipe's, or what its function returned); raises a mistake.
function M.check_field(key, value)
  if key == "stack" then check_stack(value) elseif key == "sources" then check_sources(value) end
  if key == "name" or key == "version" then check_word(key, value) end
end

--- Check a recipe table (upgraded to this API); raises a mistake naming the field.
function M.check(recipe)
  if type(recipe) ~= "table" then mistake(nil, "a recipe returns a table, not a %s", type(recipe)) end
  for key, value in pairs(recipe) do
    local f = FIELDS[key]
    if not f then mistake(key, "recipe: unknown field '%s'", tostring(key)) end
    if not ("|" .. f[1] .. "|"):find("|" .. type(value) .. "|", 1, true) then
      mistake(key, "recipe field '%s': %s expected, got %s", key, (f[1]:gsub("|", " or ")), type(value))
    end
  end
  for key, f in pairs(FIELDS) do
    if f[2] and recipe[key] == nil then mistake(key, "recipe: missing field '%s'", key) end
  end
  if type(recipe.stack) == "table" then check_stack(recipe.stack) end
  if type(recipe.sources) == "table" then check_sources(recipe.sources) end
  for _, key in ipairs { "name", "version" } do
    if type(recipe[key]) == "string" then check_word(key, recipe[key]) end
  end
  if recipe.requires then check_requires(recipe.requires) end
  if recipe.network then check_network(recipe.network) end
  local ok, err = pcall(options.check_specs, recipe.options or {}, 1)
  if not ok then mistake("options", "recipe field 'options': %s", tostring(err):gsub("^[^:]*:%d+: ", "")) end
  return recipe
end

-- ---- earlier forms of the API ------------------------------------------------------------

-- The line of `src` where field `key` is set, or nil.
local function line_of(src, key)
  if not src or not key then return nil end
  local n = 0
  for line in (src .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if line:match("^%s*" .. key .. "%s*=") then return n end
  end
end

-- What changed from each API version to the next: an upgrade of the table (nil: nothing
-- to do), or a refusal; each with the words a warning or refusal says.
local function upgrade_stack_map(recipe, warn)
  local stack = recipe.stack
  if type(stack) ~= "table" or #stack > 0 or next(stack) == nil then return end
  local names = {}
  for name, deps in pairs(stack) do
    if type(name) ~= "string" or type(deps) ~= "table" then return end -- not API 1's form: check() says what is wrong
    names[#names + 1] = name
  end
  table.sort(names)
  recipe.stack = names
  warn("stack", "recipe field 'stack': { module = { its dependencies } } is API 1's form; since API 2 (%s) it is "
       .. "the list of module names, the dependencies come from the build: write stack = { \"%s\" }",
       API_DATES[2], table.concat(names, "\", \""))
end

--- Bring `recipe` (written for `recipe.api`, or API 2 when it says none) to this API, saying what
-- changed through `warn(field, fmt, ...)`; raises a mistake for an API this drvrun does not know.
local function upgrade(recipe, warn)
  local api = recipe.api
  if api == nil then
    warn("api", "the recipe says no API version: read as API 2 (%s); after checking doc/recipes.md's changelog, "
         .. "add api = %d", API_DATES[2], M.API)
    api = 2
  elseif math.type(api) ~= "integer" or api < 1 or api > M.API then
    mistake("api", "recipe field 'api': this drvrun knows the recipe API 1 to %d, not %s (a newer drvrun's recipe?)",
            M.API, tostring(api))
  end
  upgrade_stack_map(recipe, warn)
  return api
end

-- Raw C modules the recipe required without naming them in raw_modules: API 3 refuses them,
-- earlier ones get a warning.
local function check_raw(recipe, api, required, warn_at)
  local allowed = {}
  for _, name in ipairs(recipe.raw_modules or {}) do allowed[name] = true end
  for _, req in ipairs(required or {}) do
    if M.is_raw(req.name) and not allowed[req.name] then
      local text = ("require \"%s\": a raw C module; recipes use the library (r:..., drv.fs, drv.log...) or name "
                    .. "it in raw_modules = { \"%s\" }"):format(req.name, req.name)
      if api >= 3 then error(setmetatable({ line = req.line, message = text }, Mistake), 0) end
      warn_at(req.line, text .. " (API 3)")
    end
  end
end

--- Is `name` a raw C module (preloaded by drvrun) that recipes reach only by asking? drv.fs,
-- the file primitives every build needs, is not one.
function M.is_raw(name)
  return package.preload[name] ~= nil and name ~= "drv.fs"
end

-- ---- the recipe's environment -------------------------------------------------------

--- Take in what a script returned as a recipe: upgraded to this API (warnings through log.warn),
-- checked, its environment closed to raw modules it did not name.
-- @tparam table recipe what the script returned
-- @tparam string file the script's path (for messages)
-- @tparam[opt] table env the environment it ran in (drv.chunk.environment())
-- @treturn[1] table the recipe
-- @treturn[2] nil, string "FILE:LINE: message"
function M.take(recipe, file, env)
  local function where(field, line) -- the source is read only for a message: not at every start
    if not line and field then
      local f = io.open(file)
      line = f and line_of(f:read("a"), field)
      if f then f:close() end
    end
    return line and ("%s:%d"):format(file, line) or file
  end
  local function warn(field, fmt, ...)
    log.warn("%s: %s", where(field), fmt:format(...))
  end
  local ok, err = pcall(function()
    if type(recipe) ~= "table" then mistake(nil, "a recipe returns a table, not a %s", type(recipe)) end
    local api = upgrade(recipe, warn)
    M.check(recipe)
    local mt = env and getmetatable(env)
    check_raw(recipe, api, mt and mt.required, function(line, text) log.warn("%s: %s", where(nil, line), text) end)
    if env then
      local allowed = {}
      for _, name in ipairs(recipe.raw_modules or {}) do allowed[name] = true end
      env.require = function(name)
        if M.is_raw(name) and not allowed[name] and api >= 3 then
          error(("require \"%s\": a raw C module; name it in the recipe's raw_modules"):format(name), 2)
        end
        return require(name)
      end
    end
  end)
  if ok then return recipe end
  if getmetatable(err) ~= Mistake then error(err, 0) end
  return nil, ("%s: %s"):format(where(err.field, err.line), err.message)
end

--- Load a recipe file as drvrun does (for tools): the recipe, or nil and "FILE:LINE: message".
function M.load(file)
  local chunk_lib = require "drv.chunk"
  local env = chunk_lib.environment()
  local chunk, err = chunk_lib.load(file, env)
  if not chunk then return nil, err end
  local ok, recipe = pcall(chunk)
  if not ok then return nil, tostring(recipe) end
  return M.take(recipe, file, env)
end

-- ---- the command line --------------------------------------------------------------

--- Print how to run a recipe and its options with their values here, given
-- the KEY=VALUE arguments `kv` (`drvrun RECIPE --help`).
function M.help(recipe, script, kv, out)
  out = out or io.stdout
  local specs = M.option_specs(recipe)
  local name = type(recipe.name) == "string" and recipe.name or script:match("([^/]+)%.lua$") or script
  out:write(("usage: drvrun [--plan] %s [KEY=VALUE...]\n\n%s%s%s\n\n"):format(script, name,
    type(recipe.version) == "string" and " " .. recipe.version or "", recipe.description and ": " .. recipe.description or ""))
  out:write("options (a KEY=VALUE argument overrides the environment variable KEY, which overrides the default):\n")
  local values, err = options.resolve(specs, kv)
  for _, line in ipairs(options.describe(specs, values)) do out:write(line, "\n") end
  if err then out:write("\n", err, "\n") end
  out:write("\nSee what a run would do here, changing nothing: drvrun --plan ", script, " [KEY=VALUE...]\n")
  return 0
end

--- Entry point used by drvrun for a script that returns a recipe table.
-- @tparam table recipe the table the script returned
-- @tparam string script its path
-- @tparam table arg the global arg (KEY=VALUE options at 1..n)
-- @tparam[opt] table env the environment the script ran in (drv.chunk.environment())
-- @treturn integer exit code
function M.main(recipe, script, arg, env)
  local taken, why = M.take(recipe, script, env)
  if not taken then
    log.error("%s", why)
    return 2
  end
  local kv, positional = options.parse_args(arg)
  if positional[1] == "--help" or positional[1] == "-h" then return M.help(recipe, script, kv) end
  if #positional > 0 then
    log.error("%s: unexpected argument '%s' (options are KEY=VALUE; %s --help lists them)", script,
              positional[1], script)
    return 2
  end
  local specs = M.option_specs(recipe)
  local opt, err = options.resolve(specs, kv)
  if not opt then
    log.error("%s: %s", script, err)
    return 2
  end
  local lifecycle = require "drv.lifecycle"
  local ok, s = pcall(lifecycle.new, recipe, opt, M.check_field)
  if not ok and getmetatable(s) == Mistake then
    log.error("%s: %s (as the recipe's %s function returned it)", script, s.message, s.field)
    return 2
  elseif not ok then -- a field's function failed (r:fail: its DKMS_SOURCE has no dkms.conf): nothing was changed
    log.error("%s: %s", script, tostring(s))
    return 1
  end
  s.recipe_file, s.args = script, kv -- a build ahead runs the recipe again, build-only for another kernel
  if config.preflight then return lifecycle.preflight(s) end
  if config.plan then return lifecycle.plan(s, specs) end
  return lifecycle.run(s)
end

return M
