--- The real vendor sources (../shared/vendor/README.md): the directory make
-- passes as VENDOR (the Makefile's VENDOR, ../shared/vendor by default).
local fs = require "drv.fs"

local M = {}

M.DIR = os.getenv("VENDOR") or "../shared/vendor"
M.OFED_BUNDLE = "MLNX_OFED_SRC-debian-25.10-1.7.1.1.tgz"
M.OFED_SHA256 = "3e42df1e2081b7ccb602c5c15fb757687b2480d9a140141b9741f245348d79c0"
M.PEERMEM_SOURCE = "nv_peer_memory-1.3-0.tar.gz"

--- The absolute path of vendor file `name`, or nil when it is missing.
function M.path(name)
  return fs.realpath(M.DIR .. "/" .. name)
end

--- The absolute path of vendor file `name`; raises, naming it and VENDOR, when it is missing.
function M.need(name)
  return M.path(name) or error(("%s/%s is missing (set VENDOR=DIR to the vendor sources)"):format(M.DIR, name), 2)
end

return M
