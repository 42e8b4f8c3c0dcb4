-- The kernels installed here. `release` is the one the specs build for: the
-- newest installed (/lib/modules/K), as the Makefile, tools/fill-cache and spec/vm/run pick
-- it (`sort -V | tail -n 1`); `installed` lists those with their modules' index, oldest first
-- (the upgrade spec boots the guest on an older one too: Makefile's UPGRADE_KVER).
local fs = require "drv.fs"
local kernels = require "drv.kernels"

-- Release strings compared as `sort -V` does: runs of digits by number, the rest by text.
local function version_less(a, b)
  local ia, ib = 1, 1
  while ia <= #a and ib <= #b do
    local na, nb = a:match("^%d+", ia), b:match("^%d+", ib)
    if na and nb then
      if tonumber(na) ~= tonumber(nb) then return tonumber(na) < tonumber(nb) end
      ia, ib = ia + #na, ib + #nb
    else
      local ca, cb = a:sub(ia, ia), b:sub(ib, ib)
      if ca ~= cb then return ca < cb end
      ia, ib = ia + 1, ib + 1
    end
  end
  return #a - ia < #b - ib
end

local releases = assert(fs.dir("/lib/modules"))
table.sort(releases, version_less)
local installed = kernels.installed("/lib/modules")
table.sort(installed, version_less)
return { release = releases[#releases], installed = installed,
         version_less = version_less }
