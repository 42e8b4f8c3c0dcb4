--- ubuntu-ofed: the Mellanox OFED driver container for Ubuntu.
--
-- Builds the OFED stack for the running kernel (or KVER), installs OFED's net
-- naming udev rules on the host, swaps the inbox RDMA modules for it (the
-- network devices' configuration kept across: drv.netcfg), exposes the
-- container's root at /run/mellanox/drivers and says ready. On stop: not
-- ready, unmounted, the inbox stack back when RESTORE_DRIVER_ON_POD_TERMINATION
-- is true, the udev rules removed.
--
--   drvrun recipes/ubuntu-ofed.lua OFED_SHA256=<sha256 of the bundle>
--   drvrun --plan recipes/ubuntu-ofed.lua
local distro = require "drv.distro"
local fs = require "drv.fs"
local log = require "drv.log"

local KERNEL_TARBALL = "SOURCES/mlnx-ofed-kernel_*.orig.tar.gz"
-- The modules of the stack, as MLNX_OFED's configure names them.
local MODULE_FLAGS = { "--with-core-mod", "--with-user_mad-mod", "--with-user_access-mod", "--with-addr_trans-mod",
                       "--with-mlx5-mod", "--with-ipoib-mod" }

-- Debian splits the kernel headers into an arch tree and a common one: the
-- tree's configure is given both (DKMS names only the first, and fails).
local function configure_args(r)
  r:ensure_headers(r.kver) -- first: a build ahead binds the host's headers where their links point
  local dirs = require("drv.compile").kernel_dirs(r.kver) -- loaded at the build, not at every start
  local args = { "--kernel-version=" .. r.kver, "--kernel-sources=" .. dirs.build, "--with-linux=" .. dirs.source,
                 "--with-linux-obj=" .. dirs.build, "--modules-dir=/lib/modules/" .. r.kver }
  -- No debug info unless asked: the vendor's packages strip it from the
  -- modules they install (strip -g), and generating it costs a fifth of the
  -- compile and ten times the modules' size (mlx5_core: 167 MB).
  args[#args + 1] = r.opt.OFED_DEBUG_INFO and "--with-debug-info" or "--without-debug-info"
  for _, list in ipairs { MODULE_FLAGS, r.opt.OFED_CONFIGURE_FLAGS } do
    for _, flag in ipairs(list) do args[#args + 1] = flag end
  end
  args[#args + 1] = "-j" .. r.opt.BUILD_JOBS
  return args
end

-- The configure's kernel checks are one silent build of a test module per
-- check: how many are done, for its progress lines.
local function checks_done(src)
  return function()
    local all = #(fs.glob(src .. "/compat/modtest/HAVE_*") or {})
    if all == 0 then return nil end
    return ("%d of %d kernel checks"):format(#(fs.glob(src .. "/compat/modtest/HAVE_*/testmod.o") or {}), all)
  end
end

-- What MLNX_OFED installs under /usr/src/ofa_kernel/ARCH/KVER for modules
-- built against it, gathered from the built tree: include/, the config* and
-- compat* files (compat/config.h among them), Module.symvers.
local function stage_ofa_kernel(r, src)
  local dir = src .. ".ofa_kernel"
  fs.remove(dir, { recursive = true, missing_ok = true })
  r:must("stage the headers", fs.mkdir(dir .. "/compat"))
  local files = { "include", "Module.symvers", "compat/config.h" }
  for _, pattern in ipairs { "config*", "compat*" } do
    for _, path in ipairs(fs.glob(src .. "/" .. pattern) or {}) do
      local name = path:match("[^/]+$")
      if fs.stat(path).type == "file" and name ~= "configure" then files[#files + 1] = name end
    end
  end
  for _, name in ipairs(files) do
    if not fs.exists(src .. "/" .. name) then
      r:fail("the built tree has no %s, which modules built against OFED need", name)
    end
    r:copy_tree(src .. "/" .. name, dir .. "/" .. name)
  end
  return dir
end

-- Where an OFED udev file (UDEV_FILES) goes on the host: a rules file to the
-- rules directory, the rest (the VF naming helper they run) to /etc/infiniband.
local function udev_dir(r, path)
  return path:match("%.rules$") and r.opt.UDEV_RULES_DIR or r.opt.UDEV_HELPER_DIR
end

-- The UDEV_FILES of the built tree, kept with the build; nil when it has none.
local function stage_udev(r, src)
  local dir, any = src .. ".udev", false
  fs.remove(dir, { recursive = true, missing_ok = true })
  r:must("stage the udev rules", fs.mkdir(dir))
  for _, path in ipairs(r.opt.UDEV_FILES) do
    if fs.exists(src .. "/" .. path) then
      r:must("stage " .. path, fs.copy(src .. "/" .. path, dir .. "/" .. path:match("[^/]+$"), { sync = false }))
      any = true
    end
  end
  return any and dir or nil
end

-- Refuse before anything changes when the udev directories are not there.
local function check_udev_dirs(r)
  local rules, helper = r.opt.UDEV_RULES_DIR, r.opt.UDEV_HELPER_DIR
  if rules == "" then return end
  if not fs.exists(rules) then
    r:fail("udev rules directory %s does not exist: mount the host's /lib/udev/rules.d there, or set "
           .. "UDEV_RULES_DIR= (empty) to install no udev rules", rules)
  end
  local parent = helper:match("^(.*)/[^/]+$")
  if helper == "" or not fs.exists(parent ~= "" and parent or "/") then
    r:fail("the udev rules run their helper from UDEV_HELPER_DIR, but %s: mount the host's /etc/infiniband "
           .. "(or /etc) there, or set UDEV_RULES_DIR= (empty) to install no udev rules",
           helper == "" and "it is empty" or "the directory above " .. helper .. " does not exist")
  end
end

-- Install OFED's udev files on the host, each journaled (stop, or the next
-- run after a crash, removes it). A file of that name the host has already
-- is its own: left as it is.
local function install_udev(r)
  if r.opt.BUILD_ONLY or r.opt.UDEV_RULES_DIR == "" then return end
  if not r.kept.udev then
    log.warn("udev: the build has none of %s: no udev rules installed", table.concat(r.opt.UDEV_FILES, " "))
    return
  end
  r:must("udev", fs.mkdir(r.opt.UDEV_HELPER_DIR))
  for _, path in ipairs(r.opt.UDEV_FILES) do
    local name = path:match("[^/]+$")
    local from, dest = r.kept.udev .. "/" .. name, udev_dir(r, path) .. "/" .. name
    if not fs.exists(from) then
      log.warn("udev: the build has no %s: not installed", path)
    elseif fs.exists(dest) then
      log.info("udev: %s is there already (the host's own%s): left as it is", dest,
               fs.sha256(dest) == fs.sha256(from) and ", the same as OFED's" or ", not OFED's")
    else
      r:journal_file(dest)
      r:must("udev " .. dest, fs.copy(from, dest))
      log.info("udev: %s installed (removed on stop)", dest)
    end
  end
end

return {
  api = 3,
  name = "ubuntu-ofed",
  version = "25.10-1.7.1.1",
  description = "Mellanox OFED driver container (Ubuntu)",

  options = {
    D_OFED_VERSION = { default = "25.10-1.7.1.1", doc = "OFED version, as on the download page" },
    D_OS = { default = function() return distro.id() end, doc = "OS tag of the bundle, e.g. ubuntu22.04" },
    D_ARCH = { default = function() return distro.arch() end, doc = "CPU architecture, e.g. x86_64" },
    OFED_URL = { doc = "the OFED source bundle (https, http or file URL of any mirror)",
                 default = "https://linux.mellanox.com/public/repo/mlnx_ofed/${D_OFED_VERSION}/SRPMS/"
                           .. "MLNX_OFED_SRC-debian-${D_OFED_VERSION}.tgz" },
    OFED_SHA256 = { default = "", pattern = "^" .. ("%x"):rep(64) .. "$",
                    doc = "sha256 of the bundle (required: sha256sum FILE)" },
    OFED_CONFIGURE_FLAGS = { type = "list", default = "", build = true,
                             doc = "more flags for the kernel tree's configure (e.g. --with-nvmf_host-mod "
                                   .. "--with-srp-mod); the stack's own modules are always configured" },
    OFED_DEBUG_INFO = { type = "boolean", default = false, build = true,
                        doc = "build the modules with debug info (the vendor's packages strip it: strip -g)" },
    UNLOAD_STORAGE_MODULES = { type = "boolean", default = false,
                               doc = "unload loaded storage modules (NVMe-oF, iSER, SRP, NFS-RDMA) for the reload" },
    STORAGE_MODULES = { type = "list", default = "ib_iser ib_isert ib_srp ib_srpt nvme_rdma nvmet_rdma rpcrdma xprtrdma",
                        doc = "storage modules that use the RDMA stack" },
    AUX_MODULES = { type = "list", default = "mlx5_vdpa mlx5_fwctl mlx5_dpll",
                    doc = "auxiliary modules unloaded with the stack" },
    PEER_MEMORY_CLIENTS = { type = "list", default = "nvidia_peermem",
                            doc = "peer-memory clients another driver container loads (the NVIDIA driver's "
                                  .. "nvidia_peermem): unloaded first. A recipe that requires this one (peermem) "
                                  .. "needs no naming: its modules are unloaded first, and it loads them back" },
    BLACKLIST = { type = "list", default = "mlx5_core mlx5_ib ib_umad ib_uverbs ib_ipoib rdma_cm rdma_ucm ib_core ib_cm",
                  doc = "inbox modules blacklisted on the host while the stack is swapped" },
    BLACKLIST_FILE = { default = "/host/run/modprobe.d/drvrun-ubuntu-ofed.conf",
                       doc = "the temporary host blacklist, only during the reload (empty: none); under the "
                             .. "host's /run/modprobe.d, which modprobe reads, so that a reboot cannot keep it" },
    UDEV_RULES_DIR = { default = "/host/lib/udev/rules.d",
                       doc = "the host's udev rules directory: OFED's net naming rules (82-net-setup-link.rules) "
                             .. "are installed there while the driver runs, removed on stop (empty: none installed)" },
    UDEV_HELPER_DIR = { default = "/host/etc/infiniband",
                        doc = "the host's /etc/infiniband, where those rules run OFED's VF naming helper from "
                              .. "(vf-net-link-name.sh; installed with them)" },
    UDEV_FILES = { type = "list", default = "ofed_scripts/82-net-setup-link.rules ofed_scripts/vf-net-link-name.sh",
                   build = true,
                   doc = "OFED's udev files kept from the kernel tree's build and installed: *.rules into "
                         .. "UDEV_RULES_DIR, the others into UDEV_HELPER_DIR (e.g. add "
                         .. "ofed_scripts/83-mlnx-sf-name.rules; part of the build's key)" },
    EXPOSE_PATH = { default = "/run/mellanox/drivers", doc = "where the container root is exposed (rbind)" },
    READY_FILES = { type = "list", default = "/.driver-ready ${EXPOSE_PATH}/.driver-ready",
                    doc = "files written when the driver is ready" },
  },

  -- The modules the stack loads, in place of the inbox ones of the same names;
  -- what needs what comes from the build. The rest the build produces is
  -- installed, not loaded: the dummy modules that take the place of inbox RDMA
  -- drivers OFED's ib_core does not support (efa, irdma, mlx4_ib...), fwctl.
  stack = { "mlx_compat", "ib_core", "mlxdevm", "ib_cm", "iw_cm", "ib_uverbs", "ib_umad", "rdma_cm", "rdma_ucm",
            "mlx5_core", "mlx5_ib", "ib_ipoib" },

  sources = { bundle = { url = "${OFED_URL}", sha256 = "${OFED_SHA256}" } },

  expose = "${EXPOSE_PATH}",
  devices = "/dev/infiniband", -- the stack's device files: a process holding one blocks the reload, named
  network = { pin_vf_macs = { "0x15b3" } }, -- Mellanox VFs get an admin MAC before their rebind (their RDMA GUID)

  -- Refuse before changing anything: no checksum, no udev directories, or storage modules use the stack.
  prepare = function(r)
    if r.opt.OFED_SHA256 == "" then
      r:fail("OFED_SHA256 is not set: give the sha256 of %s (sha256sum FILE), as OFED_SHA256=... or in the "
             .. "environment", r.opt.OFED_URL)
    end
    if r.opt.BUILD_ONLY then return end
    check_udev_dirs(r)
    if r.opt.UNLOAD_STORAGE_MODULES then return end
    local busy = r:loaded(r.opt.STORAGE_MODULES)
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
    add(r.opt.PEER_MEMORY_CLIENTS, "a peer-memory client of ib_core, which is being replaced "
                                   .. "(its own container loads it back against the new stack)")
    if r.opt.UNLOAD_STORAGE_MODULES then add(r.opt.STORAGE_MODULES, "a storage module (UNLOAD_STORAGE_MODULES=true)") end
    return also, why
  end,

  blacklist = function(r) return r.opt.BLACKLIST end,

  -- The bundle's kernel tree (SOURCES/mlnx-ofed-kernel_VERSION.orig.tar.gz),
  -- configured for KVER with the modules of the stack, then built with its make.
  build = function(r)
    local bundle = r:extract(r.sources.bundle, { strip = 1, only = KERNEL_TARBALL })
    local tarball = fs.glob(bundle .. "/" .. KERNEL_TARBALL)[1]
    if not tarball then
      r:fail("%s has no %s: is it an MLNX_OFED_SRC bundle?", r.sources.bundle, KERNEL_TARBALL)
    end
    local src = r:extract(tarball, { strip = 1 })
    r:configure { src = src, args = configure_args(r), progress = checks_done(src) }
    local res = r:make { src = src }
    res.keep = { ofa_kernel = stage_ofa_kernel(r, src), udev = stage_udev(r, src) }
    return res
  end,

  -- Headers, config and Module.symvers for modules built against OFED (peer
  -- memory), under usr/src/ofa_kernel/ARCH/KVER with a relative `default` link,
  -- so the link still resolves when this root is seen from the host or another
  -- container; OFED's udev rules on the host, before the reload makes the
  -- network devices they name. A build-only run (ahead for the next kernel)
  -- leaves its headers beside the running one's, where a peer-memory build for
  -- that kernel looks (ARCH/KVER), and an existing `default` as it is.
  install = function(r)
    install_udev(r)
    local base = r:path("/usr/src/ofa_kernel")
    r:install_dir(("%s/%s/%s"):format(base, r.opt.D_ARCH, r.kver), function(dir)
      r:copy_tree(r.kept.ofa_kernel, dir)
    end)
    local default = base .. "/default"
    if r.opt.BUILD_ONLY and fs.exists(default) then return end -- a build-only run keeps the running one's
    r:must("install headers", fs.symlink(("%s/%s"):format(r.opt.D_ARCH, r.kver), default, { replace = true }))
  end,
}
