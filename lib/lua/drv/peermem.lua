--- drv.peermem: find what a GPUDirect peer-memory client is built and loaded
-- against: the OFED driver container's root (its ofa_kernel headers and
-- Module.symvers) and the NVIDIA driver container's root (nv-p2p.h and the
-- loaded nvidia module's file), and what the loaded modules export. Each
-- finder returns `nil, reason` while the thing is not there yet, so a recipe
-- can wait for it with `r:wait_for`.
local M = {}

local fs = require "drv.fs"
local kernels = require "drv.kernels"
local kmod = require "drv.kmod"
local symvers = require "drv.symvers"

--- The ofa_kernel directories to try, in order (as nv_peer_memory's Makefile does).
function M.ofa_kernel_candidates(root, arch, kver)
  local base = root .. "/usr/src/ofa_kernel"
  return { ("%s/%s/%s"):format(base, arch, kver), ("%s/%s"):format(base, kver), base .. "/default" }
end

--- The modules directories of a driver container's root for `kver`.
function M.module_dirs(root, kver)
  return { ("%s/lib/modules/%s"):format(root, kver) }
end

--- OFED's headers and Module.symvers in its container's `root`, for kernel `kver` on `arch`
-- (the recipe requires OFED: the library has waited for its ready file already).
-- @treturn[1] table `{ root, ofa_kernel (headers dir), symvers (its Module.symvers) }`
-- @treturn[2] nil, reason
function M.ofed_headers(root, kver, arch)
  local candidates = M.ofa_kernel_candidates(root, arch, kver)
  for _, dir in ipairs(candidates) do
    if fs.exists(dir .. "/Module.symvers") then
      local real = fs.realpath(dir)
      return { root = root, ofa_kernel = real, symvers = real .. "/Module.symvers" }
    end
  end
  return nil, ("no Module.symvers in %s (OFED_ROOT must be the OFED driver container's root)")
    :format(table.concat(candidates, ", "))
end

--- What loaded modules export, from their files in their containers' roots (the kernel
-- resolves a client's symbols from them): `{ [module] = { [symbol] = crc } }`, and the
-- modules whose file was not found, each with why.
-- @tparam table modules `{ { name, root }... }`
-- @tparam string kver
-- @tparam[opt] userdata ctx a drv.kmod context (default: a new one)
function M.loaded_exports(modules, kver, ctx)
  ctx = ctx or assert(kmod.new())
  local providers, missing = {}, {}
  for _, m in ipairs(modules) do
    local ko, err = symvers.loaded_file(ctx, m.name, M.module_dirs(m.root, kver))
    local exports = ko and kmod.symbols(ko)
    if exports then providers[m.name] = exports else missing[#missing + 1] = ("%s: %s"):format(m.name, err) end
  end
  return providers, missing
end

local function newest(paths)
  table.sort(paths, function(a, b)
    local c = kernels.compare(a:match("nvidia%-([%d%.]+)") or "", b:match("nvidia%-([%d%.]+)") or "")
    if c ~= 0 then return c < 0 end
    return a < b
  end)
  return paths[#paths]
end

--- The first of `roots` that exists, or nil and a reason naming them all.
function M.first_root(roots, what)
  for _, root in ipairs(roots) do
    if fs.exists(root) then return root end
  end
  return nil, ("none of %s exists: mount the %s container's root there"):format(table.concat(roots, ", "), what)
end

-- The nvidia module's file: the loaded one's, or with `build_only` the one in the root.
local function nvidia_ko(root, kver, ctx, build_only)
  if build_only then
    local ko = symvers.module_files("nvidia", M.module_dirs(root, kver))[1]
    if not ko then return nil, ("no nvidia module in %s/lib/modules/%s"):format(root, kver) end
    return ko
  end
  ctx = ctx or kmod.new()
  if not ctx:state("nvidia") then return nil, "the nvidia module is not loaded (the NVIDIA driver container loads it)" end
  return symvers.loaded_file(ctx, "nvidia", M.module_dirs(root, kver))
end

--- NVIDIA in the first of `roots` that exists, its driver loaded (with
-- `build_only`, installed), for kernel `kver`.
-- @treturn[1] table `{ root, version, src (usr/src/nvidia-VERSION), include (the dir of nv-p2p.h),
--   ko (the loaded nvidia module's file) }`
-- @treturn[2] nil, reason
function M.find_nvidia(roots, kver, ctx, build_only)
  local root, err = M.first_root(roots, "NVIDIA driver")
  if not root then return nil, err end
  local header = newest(fs.glob(root .. "/usr/src/nvidia-*/nvidia/nv-p2p.h") or {})
  if not header then
    return nil, ("no %s/usr/src/nvidia-*/nvidia/nv-p2p.h: the NVIDIA driver is not installed there (yet)"):format(root)
  end
  local ko, kerr = nvidia_ko(root, kver, ctx, build_only)
  if not ko then return nil, kerr end
  local include = header:match("^(.*)/[^/]+$")
  local src = include:match("^(.*)/[^/]+$")
  return { root = root, version = src:match("nvidia%-([^/]+)$"), src = src, include = include, ko = ko }
end

return M
