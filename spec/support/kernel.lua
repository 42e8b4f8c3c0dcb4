-- The kernel the specs build for: the newest one installed (/lib/modules/K), as the Makefile,
-- tools/fill-cache and spec/vm/run pick it (`sort -V | tail -n 1`); a machine may have several.
local fs = require "drv.fs"

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
return { release = releases[#releases], version_less = version_less }
