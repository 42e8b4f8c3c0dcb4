--- drv.options: a recipe's options, from defaults, the environment and KEY=VALUE arguments.
--
-- An option is declared as `NAME = { default = v, type = "string"|"boolean"|"integer"|"list",
-- doc = "what it does", choices = {...}, pattern = "^lua pattern$", min = n, build = true }`
-- (`min`: the least an integer may be; `build`: the value changes what is built, so it is part of the
-- build cache key; `value = function(v)`: what the value means, decided here once, e.g. BUILD_JOBS'
-- "0: one per CPU" becomes the number of CPUs). A default may be a string with `${OTHER}` references, or a function of the
-- options, called when the option is first read (a fact of the host no one asks for, such as
-- an OS tag the image's environment sets anyway, is not looked up).
local M = {}

local sorted_names = require("drv.graph").sorted

local TYPES = { string = true, boolean = true, integer = true, list = true }
local SPEC_KEYS = { default = true, type = true, doc = true, choices = true, pattern = true, min = true, build = true,
                    value = true }

local BOOLEANS = { ["true"] = true, ["1"] = true, yes = true, on = true,
                   ["false"] = false, ["0"] = false, no = false, off = false, [""] = false }

local function invalid(name, origin, why)
  return ("option %s (from %s): %s"):format(name, origin, why)
end

local function convert(name, spec, raw, origin)
  local kind = spec.type or "string"
  local function bad(why) return nil, invalid(name, origin, why) end
  if type(raw) ~= "string" then
    if kind == "list" and type(raw) == "table" then return raw end
    if kind == "boolean" and type(raw) == "boolean" then return raw end
    if kind == "integer" and math.type(raw) == "integer" then return raw end
    if kind == "string" and raw == nil then return nil end
    return bad(("%s expected, got %s"):format(kind, type(raw)))
  end
  if kind == "boolean" then
    local v = BOOLEANS[raw:lower()]
    if v == nil then return bad(("'%s' is not a boolean (use true or false)"):format(raw)) end
    return v
  elseif kind == "integer" then
    local v = math.tointeger(tonumber(raw))
    if not v then return bad(("'%s' is not an integer"):format(raw)) end
    return v
  elseif kind == "list" then
    local list = {}
    for item in raw:gmatch("[^%s,]+") do list[#list + 1] = item end
    return list
  end
  if spec.choices then
    for _, c in ipairs(spec.choices) do if c == raw then return raw end end
    return bad(("'%s' is not one of: %s"):format(raw, table.concat(spec.choices, ", ")))
  end
  if spec.pattern and raw ~= "" and not raw:match(spec.pattern) then -- "": not set
    return bad(("'%s' is malformed; expected: %s"):format(raw, spec.doc or spec.pattern))
  end
  return raw
end

--- Check a recipe's option declarations; raises on a mistake.
function M.check_specs(specs, level)
  for name, spec in pairs(specs) do
    if type(name) ~= "string" or not name:match("^[%u_][%u%d_]*$") then
      error(("option name '%s' must be UPPER_CASE"):format(tostring(name)), level + 1)
    end
    if type(spec) ~= "table" then error(("option %s: table expected"):format(name), level + 1) end
    for k in pairs(spec) do
      if not SPEC_KEYS[k] then error(("option %s: unknown field '%s'"):format(name, tostring(k)), level + 1) end
    end
    if spec.type and not TYPES[spec.type] then
      error(("option %s: unknown type '%s'"):format(name, tostring(spec.type)), level + 1)
    end
    if spec.min and spec.type ~= "integer" then error(("option %s: min needs type = \"integer\""):format(name), level + 1) end
    if spec.value and type(spec.value) ~= "function" then
      error(("option %s: value must be a function"):format(name), level + 1)
    end
    if not spec.doc then error(("option %s: needs a doc string"):format(name), level + 1) end
  end
end

local function interpolate(s, values, name)
  if not s:find("${", 1, true) then return s end -- most defaults: no pattern run over them
  return (s:gsub("%${([%w_]+)}", function(ref)
    local v = values[ref]
    if v == nil then error(("option %s refers to ${%s}, which is not set"):format(name, ref), 0) end
    return tostring(v)
  end))
end

--- Split "KEY=VALUE" arguments; other arguments are returned as positional.
function M.parse_args(args)
  local kv, positional = {}, {}
  for _, a in ipairs(args or {}) do
    local k, v = a:match("^([%a_][%w_]*)=(.*)$")
    if k then kv[k] = v else positional[#positional + 1] = a end
  end
  return kv, positional
end


--- Resolve every option: argument, else environment, else default. A default
-- that is a function is called when the option is first read (an error it
-- raises is raised there); every other value is checked here.
-- @tparam table specs declarations
-- @tparam table args `{ KEY = "VALUE" }` from the command line
-- @tparam[opt] function getenv defaults to os.getenv
-- @treturn[1] table values (also records `values._origin[NAME]`)
-- @treturn[2] nil, message
function M.resolve(specs, args, getenv)
  getenv = getenv or os.getenv
  for k in pairs(args) do
    if not specs[k] then
      return nil, ("unknown option %s (known: %s)"):format(k, table.concat(sorted_names(specs), ", "))
    end
  end
  local values, origin, resolving, deferred = {}, {}, {}, {}
  local function get(name)
    if origin[name] then return values[name] end
    if resolving[name] then error(("option %s: its default refers to itself"):format(name), 0) end
    resolving[name] = true
    local spec = specs[name]
    local raw, from = args[name], "argument"
    if raw == nil then raw, from = getenv(name), "environment" end
    if raw == nil then
      raw, from = spec.default, "default"
      if type(raw) == "function" then
        raw = raw(setmetatable({}, { __index = function(_, k) return get(k) end }))
      elseif type(raw) == "string" then
        raw = interpolate(raw, setmetatable({}, { __index = function(_, k) return specs[k] and get(k) end }), name)
      end
    end
    local v, err = convert(name, spec, raw, from)
    if err then error(err, 0) end
    if spec.min and v < spec.min then error(invalid(name, from, ("%d is less than %d"):format(v, spec.min)), 0) end
    if spec.value then v = spec.value(v) end
    values[name], origin[name] = v, from
    return v
  end
  for _, name in ipairs(sorted_names(specs)) do
    if type(specs[name].default) == "function" and args[name] == nil and getenv(name) == nil then
      deferred[name] = true
    else
      local ok, err = pcall(get, name)
      if not ok then return nil, err end
    end
  end
  values._origin = origin
  return setmetatable(values, { __index = function(_, name)
    if not deferred[name] or origin[name] then return nil end
    local ok, v = pcall(get, name)
    if not ok then
      for k in pairs(resolving) do if not origin[k] then resolving[k] = nil end end -- a later read tries again
      v = tostring(v)
      if v:sub(1, #name + 8) ~= "option " .. name .. " " then v = ("option %s: its default failed: %s"):format(name, v) end
      error(v, 0)
    end
    return v
  end })
end

local DOC_COLUMN = 34 -- width of "NAME=value" before its doc

--- Lines documenting the options, for --help of a recipe and the plan: each
-- `NAME=value`, its doc and where the value came from; a value too long for
-- the column gets its doc on the next line, so the two never run together.
function M.describe(specs, values)
  local lines = {}
  for _, name in ipairs(sorted_names(specs)) do
    local ok, v = true, nil
    if values then ok, v = pcall(function() return values[name] end) end -- a default may fail
    local origin = values and values._origin and (ok and values._origin[name] or v)
    if not ok then v = nil end
    if type(v) == "table" then v = table.concat(v, " ") end
    if not values and type(specs[name].default) ~= "function" then v = specs[name].default end
    local setting = name .. "=" .. tostring(v == nil and "" or v)
    local doc = specs[name].doc .. (origin and (" [" .. origin .. "]") or "")
    if #setting > DOC_COLUMN then
      lines[#lines + 1] = "  " .. setting
      setting = ""
    end
    lines[#lines + 1] = ("  %-" .. DOC_COLUMN .. "s %s"):format(setting, doc)
  end
  return lines
end

return M
