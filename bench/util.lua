--- bench/util.lua: what the benchmark scripts share: medians, timing of
-- commands, result rows, the table and its JSON.
--
-- A row is `{ name, value, unit, baseline, ratio, target, pass }`: value and
-- baseline are medians of the contender and of what it is compared with (the
-- same unit), ratio is the comparison the target is stated in, target is text
-- ("<= 0.85", ">= 3", "<= 150 ms"), pass is a boolean (nil for a row that only
-- reports a contender).
local M = {}

local proc = require "drv.proc"
local sys = require "drv.sys"
local fs = require "drv.fs"
local archive = require "drv.archive"
local stack = require "drv.stack"
local graph = require "drv.graph"

function M.median(list)
  local s = {}
  for i, v in ipairs(list) do s[i] = v end
  table.sort(s)
  local n = #s
  if n == 0 then return nil end
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

--- Run argv to completion; seconds of wall time and the result. Raises when it cannot start.
function M.time(argv, opts)
  local t0 = sys.monotonic()
  local res, err = proc.run(argv, opts or { stdout = "null", stderr = "null" })
  local dt = sys.monotonic() - t0
  if not res then error(table.concat(argv, " ") .. ": " .. err, 2) end
  return dt, res
end

--- Run argv; raise with its output when it fails.
function M.must(argv, opts)
  opts = opts or {}
  opts.stderr = opts.stderr or "stdout"
  local res, err = proc.run(argv, opts)
  if not res then error(table.concat(argv, " ") .. ": " .. err, 2) end
  if res.status ~= 0 then
    error(("%s: exit %s\n%s"):format(table.concat(argv, " "), tostring(res.status or res.signal),
      res.stdout or ""), 2)
  end
  return res
end

--- The load averages, as /proc/loadavg gives them ("1.20 0.98 0.87").
function M.load()
  return (fs.read("/proc/loadavg") or ""):match("^(%S+ %S+ %S+)") or "?"
end

function M.say(fmt, ...)
  io.stderr:write("bench: ", fmt:format(...), "\n")
  io.stderr:flush()
end

--- A row that only reports a contender's median.
function M.info(name, value, unit)
  return { name = name, value = value, unit = unit }
end

--- A row with a target on a ratio. `ratio` is computed by the caller (speed-up
-- or fraction, as the target says); `op` is "<=" or ">=".
function M.target(name, value, unit, baseline, ratio, op, limit)
  local pass
  if ratio then pass = (op == "<=" and ratio <= limit) or (op == ">=" and ratio >= limit) end
  return { name = name, value = value, unit = unit, baseline = baseline, ratio = ratio,
           target = ("%s %g"):format(op, limit), pass = pass or false }
end

--- A row that compares a contender with a baseline, with no target.
function M.compare(name, value, unit, baseline, ratio)
  return { name = name, value = value, unit = unit, baseline = baseline, ratio = ratio }
end

--- A row with a target on the value itself (ratio = value / limit).
function M.absolute(name, value, unit, op, limit)
  local pass = value ~= nil and ((op == "<=" and value <= limit) or (op == ">=" and value >= limit))
  return { name = name, value = value, unit = unit, ratio = value and limit ~= 0 and value / limit or nil,
           target = ("%s %g %s"):format(op, limit, unit), pass = pass or false }
end

--- A row that says why something is not measured (not a failure: there is nothing to measure).
function M.note(name, text)
  return { name = name, note = text }
end

--- A row for a target that could not be measured.
function M.missing(name, unit, target, why)
  return { name = name, unit = unit, target = target, pass = false, error = why }
end

local function num(v, unit)
  if v == nil then return "-" end
  if math.type(v) == "integer" then return tostring(v) end
  if unit == "s" then return ("%.3f"):format(v) end
  if unit == "ms" then return ("%.1f"):format(v) end
  return ("%.3g"):format(v)
end

--- The table, for people.
function M.format(rows)
  local lines = {}
  local w = 8
  for _, r in ipairs(rows) do w = math.max(w, #r.name) end
  local fmt = "%s  %10s %-5s %10s %8s  %-12s %s" -- the name padded by hand: string.format's widths stop at 99
  local function pad(name) return name .. (" "):rep(w - #name) end
  lines[1] = fmt:format(pad("benchmark"), "value", "unit", "baseline", "ratio", "target", "result")
  lines[2] = ("-"):rep(#lines[1] + 6)
  for _, r in ipairs(rows) do
    local result = r.pass == nil and "" or (r.pass and "PASS" or "FAIL")
    if r.error then result = result .. " (" .. r.error .. ")" end
    if r.note then result = r.note end
    lines[#lines + 1] = fmt:format(pad(r.name), num(r.value, r.unit), r.unit or "", num(r.baseline, r.unit),
      r.ratio and ("%.2f"):format(r.ratio) or "-", r.target or "", result)
  end
  return table.concat(lines, "\n") .. "\n"
end

local ESC = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

local function json(v)
  local t = type(v)
  if v == nil then return "null" end
  if t == "boolean" then return tostring(v) end
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if math.type(v) == "integer" then return tostring(v) end
    return ("%.6g"):format(v)
  end
  return '"' .. tostring(v):gsub('[%c"\\]', function(c) return ESC[c] or ("\\u%04x"):format(c:byte()) end) .. '"'
end

local FIELDS = { "name", "value", "unit", "baseline", "ratio", "target", "pass", "note", "part", "date" }

--- The rows as a JSON array of objects (fields in a fixed order; `error` when set).
function M.json(rows)
  local out = {}
  for _, r in ipairs(rows) do
    local parts = {}
    for _, k in ipairs(FIELDS) do parts[#parts + 1] = json(k) .. ": " .. json(r[k]) end
    if r.error then parts[#parts + 1] = '"error": ' .. json(r.error) end
    out[#out + 1] = "  {" .. table.concat(parts, ", ") .. "}"
  end
  return "[\n" .. table.concat(out, ",\n") .. "\n]\n"
end

local KERNEL_TARBALL = "SOURCES/mlnx-ofed-kernel_*.orig.tar.gz"

--- The kernel tree of an OFED bundle in the vendor's layout (`KERNEL_TARBALL`),
-- extracted afresh into `dir`; returns `dir`.
function M.kernel_tree(bundle, dir)
  local outer = dir .. ".bundle"
  for _, d in ipairs({ dir, outer }) do assert(fs.remove(d, { recursive = true, missing_ok = true })) end
  assert(fs.mkdir(outer))
  assert(archive.extract(bundle, outer, { strip = 1, only = KERNEL_TARBALL }))
  local tarball = assert(fs.glob(outer .. "/" .. KERNEL_TARBALL)[1], bundle .. " has no " .. KERNEL_TARBALL)
  assert(fs.mkdir(dir))
  assert(archive.extract(tarball, dir, { strip = 1 }))
  assert(fs.remove(outer, { recursive = true }))
  return dir
end

--- The latest build of a recipe in a build cache (tools/fill-cache filled it):
-- `{ dir, modules = manifest entries }`.
function M.cached_build(cache_dir, recipe, kver)
  local builds = ("%s/%s/%s/builds"):format(cache_dir, recipe, kver)
  local id = assert((fs.read(builds .. "/recent") or ""):match("%x+"), "no build in " .. builds .. ": run tools/fill-cache")
  local dir = builds .. "/" .. id
  local manifest = assert(loadfile(dir .. "/manifest.lua", "t", {}))()
  return { dir = dir, modules = manifest }
end

--- A recipe's stack as built: `{ names, deps = { [name] = deps in the stack }, order = every module
-- built, the stack's and the others' (installed only), dependencies first }`.
function M.built_stack(names, modules)
  local deps = assert(stack.from_build(names, modules))
  local all, built = {}, {}
  for _, m in ipairs(modules) do built[stack.module_name(m.name)] = m end
  for name, m in pairs(built) do
    all[name] = {}
    for _, d in ipairs(m.depends or {}) do
      if built[stack.module_name(d)] then all[name][#all[name] + 1] = stack.module_name(d) end
    end
  end
  return { names = names, deps = deps, order = graph.flatten(assert(graph.levels(all))) }
end

--- Rows as Lua source (the guest hands its rows to the host this way).
function M.serialize(rows)
  local out = { "return {" }
  for _, r in ipairs(rows) do
    local parts = {}
    for _, k in ipairs({ "name", "value", "unit", "baseline", "ratio", "target", "pass", "error", "note", "part", "date" }) do
      local v = r[k]
      if v ~= nil then
        parts[#parts + 1] = ("%s = %s"):format(k, type(v) == "string" and ("%q"):format(v) or
          (math.type(v) == "float" and ("%.17g"):format(v) or tostring(v)))
      end
    end
    out[#out + 1] = "  { " .. table.concat(parts, ", ") .. " },"
  end
  out[#out + 1] = "}"
  return table.concat(out, "\n") .. "\n"
end

return M
