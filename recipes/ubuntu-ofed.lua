--- ubuntu-ofed: the Mellanox OFED driver container for Ubuntu.
--
-- Builds the OFED stack for the running kernel (or KVER), swaps the inbox RDMA
-- modules for it, exposes the container's root at /run/mellanox/drivers and
-- says ready. On stop: not ready, unmounted, and the inbox stack is back when
-- RESTORE_DRIVER_ON_POD_TERMINATION is true.
--
--   drvrun recipes/ubuntu-ofed.lua OFED_SHA256=<sha256 of the bundle>
--   drvrun --plan recipes/ubuntu-ofed.lua
local distro = require "drv.distro"
local fs = require "drv.fs"

local function loaded(r, names)
  local live, found = {}, {}
  for _, m in ipairs(r:kmod():loaded()) do live[m.name] = true end
  for _, n in ipairs(names) do
    if live[n] then found[#found + 1] = n end
  end
  return found
end

return {
  name = "ubuntu-ofed",
  version = "5.9-0.5.6.0",
  description = "Mellanox OFED driver container (Ubuntu)",

  options = {
    D_OFED_VERSION = { default = "5.9-0.5.6.0", doc = "OFED version, as on the download page" },
    D_OS = { default = function() return distro.id() end, doc = "OS tag of the bundle, e.g. ubuntu22.04" },
    D_ARCH = { default = function() return distro.arch() end, doc = "CPU architecture, e.g. x86_64" },
    OFED_URL = { doc = "the OFED source bundle (https, http or file URL of any mirror)",
                 default = "https://linux.mellanox.com/public/repo/mlnx_ofed/${D_OFED_VERSION}/SRPMS/"
                           .. "MLNX_OFED_SRC-debian-${D_OFED_VERSION}.tgz" },
    OFED_SHA256 = { default = "", pattern = "^" .. ("%x"):rep(64) .. "$",
                    doc = "sha256 of the bundle (required: sha256sum FILE)" },
    UNLOAD_STORAGE_MODULES = { type = "boolean", default = false,
                               doc = "unload loaded storage modules (NVMe-oF, iSER, SRP, NFS-RDMA) for the reload" },
    STORAGE_MODULES = { type = "list", default = "ib_iser ib_isert ib_srp ib_srpt nvme_rdma nvmet_rdma rpcrdma xprtrdma",
                        doc = "storage modules that use the RDMA stack" },
    AUX_MODULES = { type = "list", default = "mlx5_vdpa mlx5_fwctl mlx5_dpll",
                    doc = "auxiliary modules unloaded with the stack" },
    PEERMEM_MODULES = { type = "list", default = "nv_peer_mem nvidia_peermem",
                        doc = "peer-memory clients: unloaded first (a peermem recipe loads them back)" },
    RESTORE_DRIVER_ON_POD_TERMINATION = { type = "boolean", default = true,
                                          doc = "on stop, unload OFED and load the inbox stack back" },
    BLACKLIST = { type = "list", default = "mlx5_core mlx5_ib ib_umad ib_uverbs ib_ipoib rdma_cm rdma_ucm ib_core ib_cm",
                  doc = "inbox modules blacklisted on the host while the stack is swapped" },
    BLACKLIST_FILE = { default = "/host/etc/modprobe.d/blacklist-ofed-modules.conf",
                       doc = "the temporary host blacklist, only during the reload (empty: none)" },
    EXPOSE_PATH = { default = "/run/mellanox/drivers", doc = "where the container root is exposed (rbind)" },
    READY_FILES = { type = "list", default = "/.driver-ready ${EXPOSE_PATH}/.driver-ready",
                    doc = "files written when the driver is ready" },
  },

  -- The stack the bundle provides: module = { the modules it needs }.
  stack = {
    mlx_compat = {},
    ib_core = { "mlx_compat" },
    ib_uverbs = { "ib_core", "mlx_compat" },
    ib_umad = { "ib_core", "mlx_compat" },
    ib_cm = { "ib_core", "mlx_compat" },
    iw_cm = { "ib_core", "mlx_compat" },
    rdma_cm = { "ib_cm", "iw_cm", "ib_core", "mlx_compat" },
    rdma_ucm = { "rdma_cm", "ib_uverbs", "ib_core", "mlx_compat" },
    ib_ipoib = { "ib_cm", "ib_core", "mlx_compat" },
    mlx5_core = { "mlx_compat" },
    mlx5_ib = { "mlx5_core", "ib_core", "ib_uverbs", "mlx_compat" },
  },

  sources = { bundle = { url = "${OFED_URL}", sha256 = "${OFED_SHA256}" } },

  expose = "${EXPOSE_PATH}",

  -- Refuse before changing anything: no checksum, or storage modules use the stack.
  prepare = function(r)
    if r.opt.OFED_SHA256 == "" then
      r:fail("OFED_SHA256 is not set: give the sha256 of %s (sha256sum FILE), as OFED_SHA256=... or in the "
             .. "environment", r.opt.OFED_URL)
    end
    if r.opt.UNLOAD_STORAGE_MODULES or r.opt.BUILD_ONLY then return end
    local busy = loaded(r, r.opt.STORAGE_MODULES)
    if #busy > 0 then
      r:fail("storage modules are loaded and use the RDMA stack: %s. Unload them, or set "
             .. "UNLOAD_STORAGE_MODULES=true to let the reload unload them", table.concat(busy, ", "))
    end
  end,

  -- Modules unloaded with the stack, and why (the log says it when it happens).
  unload_also = function(r)
    local also, why = {}, {}
    local function add(list, reason)
      for _, n in ipairs(list) do also[#also + 1], why[n] = n, reason end
    end
    add(r.opt.AUX_MODULES, "an auxiliary module of the stack")
    add(r.opt.PEERMEM_MODULES, "a peer-memory client of ib_core, which is being replaced "
                               .. "(its own container loads it back against the new stack)")
    if r.opt.UNLOAD_STORAGE_MODULES then add(r.opt.STORAGE_MODULES, "a storage module (UNLOAD_STORAGE_MODULES=true)") end
    return also, why
  end,

  blacklist = function(r) return r.opt.BLACKLIST end,

  build = function(r)
    local src = r:extract(r.sources.bundle, { strip = 1 })
    local res = r:kbuild { src = src }
    res.keep = { include = src .. "/include", ["Module.symvers"] = src .. "/Module.symvers" }
    return res
  end,

  -- Headers and Module.symvers for modules built against OFED (peer memory),
  -- under usr/src/ofa_kernel/ARCH/KVER with a relative `default` link, so the
  -- link still resolves when this root is seen from the host or another container.
  install = function(r)
    local base = r:path("/usr/src/ofa_kernel")
    r:install_dir(("%s/%s/%s"):format(base, r.opt.D_ARCH, r.kver), function(dir)
      r:copy_tree(r.kept.include, dir .. "/include")
      r:must("install headers", fs.copy(r.kept["Module.symvers"], dir .. "/Module.symvers"))
    end)
    r:must("install headers", fs.symlink(("%s/%s"):format(r.opt.D_ARCH, r.kver), base .. "/default", { replace = true }))
  end,
}
