--- peermem: the GPUDirect peer-memory client, for RDMA straight to GPU memory.
--
-- Waits for the OFED driver container (its ready file under OFED_ROOT) and the
-- NVIDIA driver container (nv-p2p.h and the loaded nvidia module under
-- NVIDIA_ROOT), builds nv_peer_mem against both (their headers and symbol
-- sets), checks its symbol CRCs against the loaded ib_core and nvidia, loads
-- it and says ready. With PEERMEM_MODULE=nvidia_peermem it loads the module the
-- NVIDIA driver ships instead of building one. On stop: not ready, unloaded.
--
--   drvrun recipes/peermem.lua PEERMEM_SOURCE=/usr/src/nv_peer_memory.tar.gz
--   drvrun recipes/peermem.lua D_NV_PEER_MEM_BRANCH=1.1-0 PEERMEM_SHA256=<sha256 of the archive>
--   drvrun recipes/peermem.lua PEERMEM_MODULE=nvidia_peermem
local distro = require "drv.distro"
local log = require "drv.log"
local symvers = require "drv.symvers"
local peermem = require "drv.peermem"
local fs = require "drv.fs"

local function is_url(s) return s:match("^%a[%w+.-]*://") ~= nil end

local function find_nvidia(r)
  return peermem.find_nvidia(r.opt.NVIDIA_ROOT, r.kver, nil, r.opt.BUILD_ONLY)
end

-- The modules the client resolves its symbols from: the OFED stack as its ready file names it
-- (in OFED's root), and nvidia (in NVIDIA's).
local function providers(r)
  local modules = {}
  for _, m in ipairs(r.requires.ofed.modules) do modules[#modules + 1] = { name = m.name, root = r.requires.ofed.root } end
  modules[#modules + 1] = { name = "nvidia", root = r.nvidia.root }
  local exports, missing = peermem.loaded_exports(modules, r.kver)
  for _, why in ipairs(missing) do log.warn("load: cannot check symbol CRCs against %s (the kernel still checks them)", why) end
  return exports
end

return {
  api = 3,
  name = "peermem",
  version = "1.1",
  description = "GPUDirect RDMA peer-memory client (nv_peer_mem, or the NVIDIA driver's nvidia_peermem)",

  options = {
    OFED_ROOT = { default = "/run/mellanox/drivers", doc = "the OFED driver container's root (exposed by it)" },
    NVIDIA_ROOT = { type = "list", default = "/run/nvidia/driver /run/nvidia/drivers",
                    doc = "the NVIDIA driver container's root: the first of these that exists" },
    PEERMEM_MODULE = { default = "nv_peer_mem", choices = { "nv_peer_mem", "nvidia_peermem" },
                       doc = "build nv_peer_mem, or load the nvidia_peermem module the NVIDIA driver ships" },
    D_NV_PEER_MEM_BRANCH = { default = "master", doc = "nv_peer_memory tag or branch: names the source archive" },
    PEERMEM_SOURCE = { default = "https://github.com/Mellanox/nv_peer_memory/archive/${D_NV_PEER_MEM_BRANCH}.tar.gz",
                       doc = "nv_peer_memory source: an archive URL, a local archive or a local directory" },
    PEERMEM_SHA256 = { default = "", pattern = "^" .. ("%x"):rep(64) .. "$",
                       doc = "sha256 of the source archive (required for an http(s) PEERMEM_SOURCE)" },
    D_ARCH = { default = function() return distro.arch() end, doc = "CPU architecture, e.g. x86_64" },
  },

  -- OFED's stack loaded and ready, its root (headers, Module.symvers) where OFED_ROOT says:
  -- waited for before anything else; an OFED reload unloads this recipe's module first.
  requires = { ofed = { recipe = "ubuntu-ofed", root = "${OFED_ROOT}" } },

  stack = function(r) return { r.opt.PEERMEM_MODULE } end,

  sources = function(r)
    local src = r.opt.PEERMEM_SOURCE
    if r.opt.PEERMEM_MODULE ~= "nv_peer_mem" then return {} end
    if is_url(src) then return { peermem = { url = src, sha256 = "${PEERMEM_SHA256}" } } end
    return { peermem = { path = src } }
  end,

  -- OFED's headers (it is ready: required; a build-only run ahead of a reboot waits for
  -- OFED's build ahead to leave them for the kernel), and NVIDIA's driver with its headers.
  await = function(r)
    r.ofed = r:wait_for("OFED's headers for " .. r.kver .. " in " .. r.opt.OFED_ROOT, function()
      return peermem.ofed_headers(r.requires.ofed.root, r.kver, r.opt.D_ARCH)
    end)
    r.nvidia = r:wait_for("NVIDIA driver in " .. table.concat(r.opt.NVIDIA_ROOT, " or "), function()
      return find_nvidia(r)
    end)
    log.info("await: OFED headers %s, NVIDIA %s (%s)", r.ofed.ofa_kernel, r.nvidia.version, r.nvidia.ko)
    -- what the build depends on, by content: OFED's ABI and headers, the nvidia module
    r:build_input(r.ofed.symvers, r:must("read " .. r.ofed.symvers, symvers.abi(r.ofed.symvers)))
    r:build_input(r.ofed.ofa_kernel .. "/include")
    r:build_input(r.nvidia.ko)
    if r.opt.PEERMEM_MODULE == "nvidia_peermem" then
      local dirs = peermem.module_dirs(r.nvidia.root, r.kver)
      r.shipped = symvers.module_files("nvidia_peermem", dirs)[1]
      if not r.shipped then r:fail("no nvidia-peermem.ko in %s: this NVIDIA driver does not ship it", dirs[1]) end
      r:build_input(r.shipped)
    end
  end,

  prepare = function(r)
    local src = r.opt.PEERMEM_SOURCE
    if r.opt.PEERMEM_MODULE == "nv_peer_mem" and src:match("^https?://") and r.opt.PEERMEM_SHA256 == "" then
      r:fail("PEERMEM_SHA256 is required to download %s: set it to the archive's sha256 (sha256sum FILE), "
             .. "or set PEERMEM_SOURCE to a local archive or directory", src)
    end
  end,

  build = function(r)
    if r.shipped then return { modules = { r:module_file(r.shipped) } } end
    -- As nv_peer_memory's Makefile does before its kbuild: nv-p2p.h of the NVIDIA
    -- driver into the tree, the nvidia module's exports as a symvers file.
    local src = r:extract(r.sources.peermem, { strip = 1 })
    r:must("copy nv-p2p.h", fs.copy(r.nvidia.include .. "/nv-p2p.h", src .. "/nv-p2p.h"))
    local nv_symvers = src .. "/nvidia.symvers"
    r:must("write " .. nv_symvers, symvers.write(nv_symvers, r.nvidia.ko))
    return r:kbuild {
      src = src,
      extra_symbols = { r.ofed.symvers, nv_symvers },
      -- V=1: the build log in the cache shows each compiler command, with the OFED headers it used
      make_args = { "OFA_KERNEL=" .. r.ofed.ofa_kernel, "NVIDIA=" .. r.nvidia.include, "KVER=" .. r.kver, "V=1" },
    }
  end,

  -- Under the host-wide lock (the library has checked OFED is still ready as it was): the
  -- module must agree with what the loaded stack and nvidia export.
  before_load = function(r)
    local exports = providers(r)
    for _, m in ipairs(r.built) do
      local ok, bad = symvers.check(m.path, exports)
      if not ok then
        r:fail("%s does not match the loaded modules: %s. It was built against %s, which is not the Module.symvers "
               .. "of the loaded stack: make OFED_ROOT the root of the OFED container that loaded it (or restart "
               .. "that container), then restart this one to rebuild", m.name, table.concat(bad, "; "), r.ofed.symvers)
      end
    end
  end,
}
