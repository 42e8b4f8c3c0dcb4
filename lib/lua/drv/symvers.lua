--- drv.symvers: symbol CRCs. Module.symvers files, the file of a loaded
-- module, and whether a built module agrees with the modules it will link
-- against, asked before the kernel is (which would only say "disagrees about
-- version of symbol").
--
-- @usage
-- local symvers = require "drv.symvers"
-- local ko = assert(symvers.loaded_file(kmod.new(), "ib_core", { "/run/mellanox/drivers/lib/modules/" .. kver }))
-- local ok, bad = symvers.check("nv_peer_mem.ko", { ib_core = kmod.symbols(ko) })
local M = {}

local kmod = require "drv.kmod"
local fs = require "drv.fs"
local graph = require "drv.graph"
local compile = require "drv.compile"


--- Read a Module.symvers file.
-- @treturn[1] table `{ [symbol] = { crc = n, module = "path" } }`
-- @treturn[2] nil, message, errno
function M.read(path)
  local text, err, errno = fs.read(path)
  if not text then return nil, err, errno end
  local syms = {}
  for crc, sym, module in text:gmatch("0x(%x+)\t([^\t\n]+)\t([^\t\n]*)[^\n]*") do
    syms[sym] = { crc = tonumber(crc, 16), module = module }
  end
  return syms
end

--- What a Module.symvers says of the ABI, as text to key a build with: each
-- symbol and its CRC, sorted; not the paths of the modules that export them
-- (a build of the same sources elsewhere exports the same ABI).
-- @treturn[1] string
-- @treturn[2] nil, message, errno
function M.abi(path)
  local syms, err, errno = M.read(path)
  if not syms then return nil, err, errno end
  local lines = {}
  for _, sym in ipairs(graph.sorted(syms)) do lines[#lines + 1] = ("%08x %s"):format(syms[sym].crc, sym) end
  return table.concat(lines, "\n")
end

--- Write a Module.symvers for `module` (its .ko file) exporting `exports`
-- (`{ [symbol] = crc }`; default: what the file exports, `kmod.symbols(module)`),
-- for `KBUILD_EXTRA_SYMBOLS`. The module column is its path without `.ko`, as
-- kbuild writes it: modpost names the dependency of what links against it after that column.
-- @treturn[1] true
-- @treturn[2] nil, message, errno
function M.write(path, module, exports)
  if not exports then
    local err, errno
    exports, err, errno = kmod.symbols(module)
    if not exports then return nil, err, errno end
  end
  module = module:gsub("%.ko%.?%w*$", "")
  local lines = {}
  for _, sym in ipairs(graph.sorted(exports)) do
    lines[#lines + 1] = ("0x%08x\t%s\t%s\tEXPORT_SYMBOL\t"):format(exports[sym], sym, module)
  end
  return fs.write(path, table.concat(lines, "\n") .. "\n")
end

local function module_name(s) return (s:gsub("-", "_")) end

--- The .ko files below each of `dirs`, by module name (`-` and `_` alike):
-- `{ [name] = { paths } }`. One walk, for many lookups.
function M.files_by_name(dirs)
  local by = {}
  for _, dir in ipairs(dirs) do
    if fs.exists(dir) then
      for _, path in ipairs(compile.find_files(dir, "%.ko")) do
        local base = path:match("([^/]+)%.ko[%.%w]*$")
        if base then
          local n = module_name(base)
          by[n] = by[n] or {}
          by[n][#by[n] + 1] = path
        end
      end
    end
  end
  return by
end

--- The .ko files named `name` (`-` and `_` alike) below each of `dirs`.
function M.module_files(name, dirs)
  return M.files_by_name(dirs)[module_name(name)] or {}
end

-- Where a module file may be, cheapest first: the modules directories'
-- indexes, then a walk of each directory.
local function candidates(ctx, name, dirs)
  return coroutine.wrap(function()
    local info = ctx:info(name)
    if info and info.path then coroutine.yield(info.path) end
    for _, dir in ipairs(dirs) do
      local c = fs.exists(dir .. "/modules.dep.bin") and kmod.new { dirname = dir }
      local i = c and c:info(name)
      if i and i.path then coroutine.yield(i.path) end
    end
    for _, path in ipairs(M.module_files(name, dirs)) do coroutine.yield(path) end
  end)
end

--- The file of the loaded module `name`: the one of `ctx`'s modules directory
-- or below `dirs` whose srcversion is the loaded one.
-- @treturn[1] string path
-- @treturn[2] nil, message, errno
function M.loaded_file(ctx, name, dirs)
  dirs = dirs or {}
  local live = ctx:state(name)
  if not live then return nil, name .. " is not loaded", "ENOENT" end
  if not live.srcversion then return nil, name .. " has no srcversion: its file cannot be told apart", "EINVAL" end
  for path in candidates(ctx, name, dirs) do
    local mi = kmod.modinfo(path)
    if mi and mi.srcversion == live.srcversion then return path end
  end
  return nil, ("the file of the loaded %s (srcversion %s) is not in %s"):format(name, live.srcversion,
    table.concat({ ctx:dirname(), table.unpack(dirs) }, ", ")), 2
end

--- Check the CRCs module `path` was built against with what `providers` export.
-- @tparam string path a .ko
-- @tparam table providers `{ [module name] = { [symbol] = crc } }`
-- @treturn[1] true
-- @treturn[2] nil, `{ "symbol (built against 0x..., ib_core exports 0x...)"... }`
function M.check(path, providers)
  local wanted, err, errno = kmod.versions(path)
  if not wanted then return nil, { err }, errno end
  local bad = {}
  for _, sym in ipairs(graph.sorted(wanted)) do
    for _, module in ipairs(graph.sorted(providers)) do
      local crc = providers[module][sym]
      if crc and crc ~= wanted[sym] then
        bad[#bad + 1] = ("%s (built against 0x%08x, the loaded %s exports 0x%08x)"):format(sym, wanted[sym], module, crc)
      end
    end
  end
  if #bad > 0 then return nil, bad, "EINVAL" end
  return true
end

return M
