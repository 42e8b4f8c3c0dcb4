--- drv.log: one line per event, for people (`text`) or for log collectors (`json`).
--
-- Level and format come from `drvrun --log-level/--log-format` (or
-- DRVRUN_LOG_LEVEL/DRVRUN_LOG_FORMAT). Lines go to stderr, so a recipe's
-- stdout stays free for what it prints on purpose (a plan, a table).
--
-- @usage
-- local log = require "drv.log"
-- log.info("loaded %s", name)
-- log.event("info", "phase done", { phase = "build", seconds = 1.5 })
local M = {}

local config = require "drv.config"
local sys = require "drv.sys"
local os, table = os, table
local pairs, next, tostring, type, select = pairs, next, tostring, type, select

local LEVELS = { error = 1, warn = 2, info = 3, debug = 4 }

M.level = config.log_level or "info"
M.format = config.log_format or "text"
-- Fields every line carries, from DRVRUN_LOG_FIELDS="name=value ..." (a build ahead's lines
-- carry the kernel it builds for: ahead=K).
M.fields = {}
for k, v in (os.getenv("DRVRUN_LOG_FIELDS") or ""):gmatch("([%w_]+)=(%S+)") do M.fields[k] = v end
-- Where lines go: anything with :write and :flush (a file); stderr, a line
-- in one write(2), by default.
M.out = { write = function(_, s) return sys.write(2, s) end, flush = function() end }

--- Set the level ("error", "warn", "info", "debug").
function M.set_level(level)
  if not LEVELS[level] then
    error(("unknown log level '%s' (error, warn, info or debug)"):format(tostring(level)), 2)
  end
  M.level = level
end

--- True when messages at `level` are printed.
function M.enabled(level)
  return LEVELS[level] <= LEVELS[M.level]
end

local ESCAPES = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ESCAPES[c] or ("\\u%04x"):format(c:byte())
  end) .. '"'
end

-- A duration in whole milliseconds; nil out of durations' range (negative, huge, NaN).
local function millis(s)
  if s >= 0 and s < 1e12 then return math.floor(s * 1000 + 0.5) end
end

local function fixed3(ms) return ("%d.%03d"):format(ms // 1000, ms % 1000) end

--- Seconds (a duration) to the millisecond, `1.500`, like ("%.3f"):format(s)
-- but by integer arithmetic: a restart's log lines then never run the C
-- library's floating-point printf, which costs a fresh process in an emulated
-- guest more than all of its lifecycle's Lua code.
function M.seconds(s)
  local ms = millis(s)
  return ms and fixed3(ms) or ("%.3f"):format(s)
end

-- tostring(v), with a float of at most three decimals (a duration) written
-- the same way without the C library's float printf (see M.seconds).
local function number_text(v)
  local ms = math.type(v) == "float" and millis(v)
  if not ms or ms / 1000 ~= v then return tostring(v) end
  local text = fixed3(ms):gsub("0+$", "")
  return text:sub(-1) == "." and text .. "0" or text
end

local function json_value(v)
  local t = type(v)
  if t == "number" then return number_text(v) end
  if t == "boolean" then return tostring(v) end
  return json_string(tostring(v))
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

local last_time, last_stamp

--- `t` (seconds since the epoch, default now) as UTC, `2026-12-01T15:44:44Z`
-- (drv.sys.utc: os.date would load the time zone to write a UTC time).
function M.timestamp(t)
  t = t or os.time()
  if t ~= last_time then last_time, last_stamp = t, sys.utc(t) end
  return last_stamp
end
local timestamp = M.timestamp

local function format_json(level, msg, fields)
  local parts = { '"time":' .. json_string(timestamp()), '"level":' .. json_string(level),
                  '"msg":' .. json_string(msg) }
  for _, k in pairs(sorted_keys(fields)) do
    parts[#parts + 1] = json_string(tostring(k)) .. ":" .. json_value(fields[k])
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function format_text(level, msg, fields)
  local parts = { timestamp(), level:upper(), msg }
  for _, k in pairs(sorted_keys(fields)) do
    local v = fields[k]
    v = type(v) == "number" and number_text(v) or tostring(v)
    if v:find("[%s\"]") then v = json_string(v) end
    parts[#parts + 1] = k .. "=" .. v
  end
  return table.concat(parts, " ")
end

--- Log `msg` with structured `fields` (a flat table, may be nil).
function M.event(level, msg, fields)
  if not LEVELS[level] then error("unknown log level '" .. tostring(level) .. "'", 2) end
  if not M.enabled(level) then return end
  fields = fields or {}
  if next(M.fields) then
    local all = {}
    for k, v in pairs(M.fields) do all[k] = v end
    for k, v in pairs(fields) do all[k] = v end
    fields = all
  end
  local line = (M.format == "json" and format_json or format_text)(level, msg, fields)
  -- one write(2) a line: stderr is unbuffered, and each write wakes the reader
  -- (the container runtime's log pipe)
  M.out:write(line .. "\n")
  M.out:flush()
end

local function logger(level)
  return function(fmt, ...)
    if not M.enabled(level) then return end
    local msg = select("#", ...) > 0 and fmt:format(...) or fmt
    M.event(level, msg)
  end
end

M.error = logger("error")
M.warn = logger("warn")
M.info = logger("info")
M.debug = logger("debug")

return M
