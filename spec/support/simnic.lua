--- The fixture NIC of the guest's network specs: sim_pci devices
-- (spec/fixtures/sim-pci) bound by the simulated mlx5_core, a PF with VFs and,
-- in switchdev mode, their representors; each PF cabled to its peer
-- (simpeerID, the bus's netdev at the cable's far end), which a spec moves into
-- a network namespace of its own to be the host there.
local fs = require "drv.fs"
local proc = require "drv.proc"

local M = {}

M.BUS, M.PF = "sim_pci", "0000:03:00.0"
M.SIMBUS = "/sys/bus/sim_pci"

--- Write `text` to sysfs attribute `path` in place (not atomically, as fs.write would).
function M.sysfs_write(path, text)
  local f = assert(io.open(path, "w"))
  assert(f:write(text))
  assert(f:close())
end

--- Run ip(8) with `...`; its output (raises when it fails).
function M.ip(...)
  local r = assert(proc.run({ "ip", ... }))
  assert(r.status == 0, "ip " .. table.concat({ ... }, " ") .. ": " .. r.stderr)
  return r.stdout
end

--- Load the kernel's own modules `names` (8021q, bonding, bridge...) with their dependencies.
function M.load_kernel_modules(names)
  local ctx = assert(require("drv.kmod").new())
  for _, n in ipairs(names) do assert(ctx:insert(n)) end
end

--- A network namespace of its own (held by a process, as spec/support/ns.lua makes them: no
-- /run/netns mount, which a recipe's rbind of / and its recursive unmount would take with them)
-- holding the peer of PF ID, with the address `cidr` (and `more` { { vlan = 100, cidr = "..." }... }:
-- VLANs of the peer), up: the host at the far end of the PF's cable. `:run(code)` runs drvrun -e
-- CODE there (its output); `:ping(address, timeout)` from there, drv.net.ping's results as text;
-- `:close()` ends the namespace (the peer goes back to the guest's).
function M.peer(name, id, cidr, more)
  local netns = require("spec.support.ns").netns()
  local link = "simpeer" .. id
  M.ip("link", "set", link, "netns", netns.path:match("^/proc/(%d+)/"))
  netns.ip("addr", "add", cidr, "dev", link)
  netns.ip("link", "set", link, "up")
  for _, v in ipairs(more or {}) do
    local vlan = ("%s.%d"):format(link, v.vlan)
    netns.ip("link", "add", "link", link, "name", vlan, "type", "vlan", "id", tostring(v.vlan))
    netns.ip("addr", "add", v.cidr, "dev", vlan)
    netns.ip("link", "set", vlan, "up")
  end
  local peer = { name = name, link = link, path = netns.path }
  function peer.run(code)
    local r = assert(proc.run({ "nsenter", "--net=" .. netns.path, os.getenv("DRVRUN"), "-e", code }))
    assert(r.status == 0, r.stderr)
    return r.stdout
  end
  function peer.ping(address, timeout)
    return (peer.run(("print(require('drv.net').ping(%q, %g))"):format(address, timeout or 10)):gsub("\n$", ""))
  end
  peer.close = netns.close
  return peer
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

--- Configure the PF `pf` (its link from link_of) as the network specs do: VF 0
-- and VF 1 given MACs and settings, the PF up with MTU 9000, an IPv4 and an
-- IPv6 address and a route, and VFs 0 and 1 rebound so that they take their MACs
-- (their RDMA GUID with them, on real hardware). The VFs must exist.
function M.configure_pf(sock, pf)
  local net = require "drv.net"
  assert(sock:set_vf(pf.name, 0, { mac = "02:aa:00:00:00:01", link_state = "enable", trust = true }))
  assert(sock:set_vf(pf.name, 1, { mac = "02:aa:00:00:00:02", vlan = 10, qos = 3, spoofchk = true }))
  assert(sock:set_link(pf.name, { up = true, mtu = 9000 }))
  assert(sock:add_address(pf.name, "10.20.0.1/24"))
  assert(sock:add_address(pf.name, "fd00:20::1/64"))
  assert(sock:add_route { dst = "10.21.0.0/16", gateway = "10.20.0.254", dev = pf.name })
  for _, vf in ipairs({ "0000:03:00.1", "0000:03:00.2" }) do
    local driver = assert(net.rebind(M.BUS, vf))
    assert(driver == "mlx5_core", vf .. " rebound to " .. driver .. ", not mlx5_core")
  end
end

return M
