--- dkms: any DKMS source tree as a driver container.
--
-- DKMS_SOURCE is a tree as DKMS keeps it in /usr/src/NAME-VERSION; its dkms.conf is read as
-- DKMS reads it (drv.dkms: sourced by bash for the kernel). The run is the package's:
-- PACKAGE_NAME and PACKAGE_VERSION name its lock, journal, build cache, ready file and
-- install directory. Its stack is the BUILT_MODULE_NAME[]s: a copy of the tree is built with
-- kbuild for the running kernel (or KVER), each module taken where BUILT_MODULE_LOCATION[]
-- says, installed in updates/NAME/ by its own name (the plan shows DEST_MODULE_LOCATION and
-- DEST_MODULE_NAME; Debian's DKMS ignores the location too, for updates/dkms/) and loaded
-- with MODULE_PARAMS, the kernel's modules it needs first (v4l2loopback: videodev). A kernel
-- that BUILD_EXCLUSIVE_KERNEL, _ARCH or _CONFIG excludes is refused before anything changes.
-- Not run, as the log and the plan say: MAKE[] and CLEAN (kbuild builds the tree, as DKMS
-- does for a dkms.conf without MAKE), PATCH[], PRE_BUILD, POST_BUILD, PRE_INSTALL,
-- POST_INSTALL, BUILD_DEPENDS. A host's, not a container's, and ignored: AUTOINSTALL, STRIP,
-- REMAKE_INITRD, MODULES_CONF, NO_WEAK_MODULES, signing.
--
--   drvrun recipes/dkms.lua DKMS_SOURCE=/usr/src/v4l2loopback-0.12.7
--   drvrun --plan recipes/dkms.lua DKMS_SOURCE=/usr/src/v4l2loopback-0.12.7 MODULE_PARAMS=v4l2loopback.devices=2
local dkms = require "drv.dkms"

-- The tree's dkms.conf, read once a run, for its kernel.
local function conf(r)
  r.conf = r.conf or r:must("DKMS_SOURCE", dkms.read(r.opt.DKMS_SOURCE, r.kver))
  return r.conf
end

return {
  api = 3,
  name = function(r) return conf(r).name end,
  version = function(r) return conf(r).version end,
  description = "a DKMS source tree (/usr/src/NAME-VERSION with its dkms.conf) built and loaded",

  options = {
    DKMS_SOURCE = { default = "", doc = "the DKMS source tree: a directory with a dkms.conf (/usr/src/NAME-VERSION)" },
    MODULE_PARAMS = { default = "", doc = "module parameters, as on the kernel's command line: "
                                          .. "v4l2loopback.devices=2 v4l2loopback.video_nr=7,8" },
  },

  stack = function(r) return conf(r).stack end,
  sources = { tree = { path = "${DKMS_SOURCE}" } },

  plan = function(r, say)
    for _, line in ipairs(dkms.describe(conf(r), r.kver)) do say("dkms: %s", line) end
  end,

  prepare = function(r)
    dkms.log(conf(r), r.kver)
    r:must("dkms.conf", dkms.buildable(conf(r)))
    r.params = r:must("MODULE_PARAMS", dkms.params(r.opt.MODULE_PARAMS, r.stack))
  end,

  build = function(r)
    r:ensure_headers(r.kver) -- then read again: a dkms.conf may test them (v4l2loopback's reads .config)
    r:must("dkms.conf", dkms.buildable(dkms.read(r.opt.DKMS_SOURCE, r.kver)))
    local tree = r:extract(r.sources.tree)
    return { modules = r:must("build", dkms.built(conf(r), tree, r:kbuild({ src = tree }).modules)) }
  end,

  module_options = function(r) return r.params end,
}
