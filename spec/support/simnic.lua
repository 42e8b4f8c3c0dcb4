--- The fixture NIC of the guest's network specs: sim_pci devices
-- (spec/fixtures/sim-pci) bound by the simulated mlx5_core, a PF with VFs and,
-- in switchdev mode, their representors.
local fs = require "drv.fs"

local M = {}

M.BUS, M.PF = "sim_pci", "0000:03:00.0"
M.SIMBUS = "/sys/bus/sim_pci"

--- Write `text` to sysfs attribute `path` in place (not atomically, as fs.write would).
function M.sysfs_write(path, text)
  local f = assert(io.open(path, "w"))
  assert(f:write(text))
  assert(f:close())
end

--- The link of sim_pci device `device`, from drv.net socket `sock`, or nil.
function M.link_of(sock, device)
  for _, l in ipairs(assert(sock:links())) do
    if l.bus == M.BUS and l.device == device then return l end
  end
end

--- The representor of `port` ("pf0vf0") on the PF's device (switchdev mode), or nil.
function M.rep_of(sock, port)
  for _, l in ipairs(assert(sock:links())) do
    if l.bus == M.BUS and l.device == M.PF
       and (fs.read("/sys/class/net/" .. l.name .. "/phys_port_name") or ""):match("^%S*") == port then
      return l
    end
  end
end

return M
