-- The kernels installed here. `newest` is the one `make fixtures` and tools/fill-cache build
-- for, and spec/vm/run boots by default; the machine may have others (the upgrade spec boots
-- the guest on an older one: Makefile's DEB_TEST).
local kernels = require "drv.kernels"

local M = {}

M.installed = kernels.installed("/lib/modules")
M.newest = assert(M.installed[#M.installed], "no kernel with its modules in /lib/modules")

return M
