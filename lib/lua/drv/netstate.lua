--- drv.netstate: the network state a NIC driver reload resets, saved before
-- the unload and restored after the load.
--
-- Unloading the NIC driver destroys its network devices; the new one makes
-- them afresh with defaults (down, MTU 1500, no address, no VFs, legacy
-- eswitch). `save` records, for every link whose driver is a module of the
-- stack, what it had: admin state, MTU, addresses, routes, eswitch mode,
-- sriov_numvfs and each VF's config, the bond, bridge or VRF it is a port of,
-- and the devices stacked on it that go with it (VLANs, macvlans, and theirs),
-- as plain data (`write`/`read` keep it in a file, so a run that dies between
-- unload and restore leaves it for the next). Devices are matched across the
-- reload by their bus address (a switchdev representor, on its PF's device,
-- also by its port name): the netdev names may change; a VLAN or macvlan is
-- made again with its own name on its device's new link. `wait` waits for them
-- to come back, `restore` puts back what the reload reset, in the order the
-- kernel needs it, and `guard` says beforehand whether the reload would cut
-- the node off (through a device of the stack, or one that goes down with it).
local M = {}

local fs = require "drv.fs"
local journal = require "drv.journal"
local net = require "drv.net"
local sys = require "drv.sys"

local SYSBUS = "/sys/bus"
local ZERO_MAC = "00:00:00:00:00:00"
local LOCAL_TABLE = 255
M.VERSION = 1

-- Links that unloading their lower device's driver destroys: what restore makes again, and what
-- it cannot (said when saved).
local RECREATED = { vlan = true, macvlan = true }
local LOST_WITH_LOWER = { ipvlan = true, ipvtap = true, macvtap = true, macsec = true }
-- Kinds of ports that never carry the node's traffic off it (a bond or bridge with only these
-- besides the stack's devices goes down with them).
local LOCAL_ONLY = { veth = true, tun = true, dummy = true, ifb = true, vcan = true }
-- Masters a port joins only while down (the kernel refuses an up one).
local ENSLAVE_DOWN = { bond = true, team = true }
-- Masters that take their ports back themselves when they come back (ovs-vswitchd re-adds a port
-- by its name; IFLA_MASTER cannot make one an Open vSwitch port).
local REJOINED_BY_MASTER = { openvswitch = true }

local function set_of(list)
  local set = {}
  for k, v in pairs(list) do
    if type(k) == "number" then set[v] = true else set[k] = true end
  end
  return set
end

local function key(bus, device, port) return bus .. "/" .. device .. (port and "#" .. port or "") end

-- A saved device's key: its bus address, and a representor's port ("pci/0000:03:00.0#pf0vf1").
local function dkey(d) return key(d.bus, d.device, d.port) end

-- A saved device as logs name it: "eth0 (pci/0000:03:00.0)" (by its link now, when given).
local function label(d, link)
  return ("%s (%s)"):format(link and link.name or d.name, dkey(d))
end

-- The port of a representor (switchdev mode: "pf0vf1", "pf0sf2"), nil for any other link: a
-- representor is on its PF's bus device, the PF's own link with port p0 or none.
local function rep_port(name)
  local port = (fs.read("/sys/class/net/" .. name .. "/phys_port_name") or ""):match("^%s*(%S+)")
  if port and not port:match("^p%d+$") then return port end
end

local function basename(path) return path and path:match("([^/]+)$") end

-- The PF's bus address of a VF device, nil for any other.
local function physfn_of(bus, device)
  return basename(fs.readlink(("%s/%s/devices/%s/physfn"):format(SYSBUS, bus, device)))
end

-- The VF device addresses of a PF, by VF index (0-based).
local function virtfns_of(bus, device)
  local vfs = {}
  for _, path in ipairs(fs.glob(("%s/%s/devices/%s/virtfn*"):format(SYSBUS, bus, device)) or {}) do
    vfs[tonumber(path:match("virtfn(%d+)$"))] = basename(fs.readlink(path))
  end
  return vfs
end

local function of_stack(link, modules)
  return link.device and (modules[link.driver or ""] or modules[link.module or ""])
end

local function kept_address(a)
  return not a.dynamic and a.scope ~= "link" and a.scope ~= "host"
end

-- What a link has configured of its own: admin state, MTU, addresses, routes (of every table
-- but the local one), the master it is a port of.
local function own_config(d, link, addresses, routes, links_by_name)
  d.admin, d.mtu, d.mac, d.addresses, d.routes = link.admin, link.mtu, link.mac, {}, {}
  if link.master then
    d.master = link.master
    d.master_kind = links_by_name[link.master] and links_by_name[link.master].kind
  end
  for _, a in ipairs(addresses) do
    if a.dev == link.name and kept_address(a) then
      d.addresses[#d.addresses + 1] = { family = a.family, address = a.address, prefix = a.prefix }
    end
  end
  for _, r in ipairs(routes) do
    if r.dev == link.name and r.protocol ~= "kernel" and r.table ~= LOCAL_TABLE then
      d.routes[#d.routes + 1] = { dst = r.dst, gateway = r.gateway, metric = r.metric, family = r.family,
                                  table = r.table ~= 254 and r.table or nil }
    end
  end
  return d
end

local function saved_device(sock, link, addresses, routes, links_by_name)
  local d = own_config({ bus = link.bus, device = link.device, port = rep_port(link.name), name = link.name,
                         driver = link.driver or link.module, physfn = physfn_of(link.bus, link.device), vfs = {} },
                       link, addresses, routes, links_by_name)
  if not d.port then -- a representor's VF count and config are its PF's
    d.numvfs = link.numvfs
    d.eswitch = not d.physfn and sock:eswitch(link.bus, link.device) or nil
    for _, vf in ipairs(link.vfs or {}) do d.vfs[#d.vfs + 1] = vf end
  end
  return d
end

-- The VLANs and macvlans on the stack's devices (and on those), lower devices first, each with
-- its lower device (`lower_key` a stack device's key, else `lower` an upper's name) and `root`,
-- the key of the stack device under them; and the links that go with them, which restore
-- cannot make again ("ipvl0 (ipvlan on eth0)").
local function uppers_of(devices, links, addresses, routes, links_by_name)
  local on, uppers, lost = {}, {}, {}
  for _, d in ipairs(devices) do on[d.name] = { key = dkey(d), root = dkey(d) } end
  local found = true
  while found do
    found = false
    for _, link in ipairs(links) do
      local under = link.lower and on[link.lower]
      if under and not on[link.name] and RECREATED[link.kind or ""] then
        uppers[#uppers + 1] = own_config({ name = link.name, kind = link.kind, lower = not under.key and link.lower or nil,
          lower_key = under.key, root = under.root, vlan_id = link.vlan_id, vlan_protocol = link.vlan_protocol,
          macvlan_mode = link.macvlan_mode }, link, addresses, routes, links_by_name)
        on[link.name], found = { root = under.root }, true
      elseif under and not on[link.name] and LOST_WITH_LOWER[link.kind or ""] then
        lost[#lost + 1] = ("%s (%s on %s)"):format(link.name, link.kind, link.lower)
        on[link.name] = { root = under.root }
      end
    end
  end
  return uppers, lost
end

-- What a saved upper is, for logs: "vlan 100 on sim_pci/0000:03:00.0", "macvlan (bridge) on eth0.100".
local function upper_what(u)
  local what = u.kind == "vlan" and ("vlan %d%s"):format(u.vlan_id or 0, u.vlan_protocol == "802.1ad" and " (802.1ad)" or "")
    or ("%s%s"):format(u.kind, u.macvlan_mode and " (" .. u.macvlan_mode .. ")" or "")
  return ("%s on %s"):format(what, u.lower_key or u.lower)
end

-- The links the reload takes down (for the guard): the stack's devices (`own`), the uppers, and the
-- masters all of whose ports that carry traffic off the node go down with it.
-- `{ [name] = { what = "bond0 (a bond of eth2 (pci/...))", keys = { the stack's devices under it }, own } }`.
local function going_with(devices, uppers, links, links_by_name)
  local going = {}
  for _, d in ipairs(devices) do going[d.name] = { what = label(d), keys = { dkey(d) }, own = true } end
  for _, u in ipairs(uppers) do
    going[u.name] = { what = ("%s (%s)"):format(u.name, upper_what(u)), keys = { u.root } }
  end
  local ports = {}
  for _, link in ipairs(links) do
    if link.master then
      ports[link.master] = ports[link.master] or {}
      table.insert(ports[link.master], link)
    end
  end
  local found = true
  while found do
    found = false
    for master, list in pairs(ports) do
      local on, keys, stays = {}, {}, false
      for _, port in ipairs(list) do
        if going[port.name] then
          on[#on + 1] = going[port.name].what
          for _, k in ipairs(going[port.name].keys) do keys[#keys + 1] = k end
        elseif not LOCAL_ONLY[port.kind or ""] then
          stays = true
        end
      end
      if not going[master] and #on > 0 and not stays then
        local kind = links_by_name[master] and links_by_name[master].kind or "master"
        going[master] = { what = ("%s (a %s of %s)"):format(master, kind, table.concat(on, ", ")), keys = keys }
        found = true
      end
    end
  end
  return going
end

local function must(what, v, err)
  if v == nil then error(("netstate: cannot read the %s: %s"):format(what, err), 3) end
  return v
end

--- Record the network state of every device of the stack, and of the devices stacked on them.
-- @param sock a `drv.net.open()` socket
-- @tparam table modules the stack's module names (a list or a set): a link is the stack's when its
--   driver (ETHTOOL_GDRVINFO) or its bus device's driver module is one of them
-- @treturn table `{ version, devices = { { bus, device, port (a representor's), name, driver, admin, mtu,
--   mac, numvfs, physfn, eswitch, addresses, routes, vfs, master, master_kind }... },
--   uppers = { { name, kind = "vlan"|"macvlan", lower_key (a device's key) or lower (an upper's name),
--   root, vlan_id, vlan_protocol, macvlan_mode, admin, mtu, mac, addresses, routes, master,
--   master_kind }... } (lower devices first), lost = { "ipvl0 (ipvlan on eth0)"... } (destroyed with
--   a device of the stack, not made again), routes = the main table, going = { [name] = { what,
--   keys } } (what goes down with the stack; both for guard) }` (one link per bus device and
--   representor port: the first, by ifindex); raises when the kernel cannot be read
function M.save(sock, modules)
  modules = set_of(modules)
  local links = must("links", sock:links())
  local addresses = must("addresses", sock:addresses())
  local routes = must("routes", sock:routes { table = 0 })
  local links_by_name = {}
  for _, link in ipairs(links) do links_by_name[link.name] = link end
  local state, seen = { version = M.VERSION, devices = {}, routes = {} }, {}
  for _, link in ipairs(links) do
    local d = of_stack(link, modules) and saved_device(sock, link, addresses, routes, links_by_name)
    if d and not seen[dkey(d)] then -- one link per key: the first made (an IPoIB child shares its parent's)
      seen[dkey(d)] = true
      state.devices[#state.devices + 1] = d
    end
  end
  table.sort(state.devices, function(a, b) return dkey(a) < dkey(b) end)
  state.uppers, state.lost = uppers_of(state.devices, links, addresses, routes, links_by_name)
  state.going = going_with(state.devices, state.uppers, links, links_by_name)
  for _, r in ipairs(routes) do
    if r.table == 254 then
      state.routes[#state.routes + 1] = { dst = r.dst, gateway = r.gateway, dev = r.dev, family = r.family,
                                          metric = r.metric }
    end
  end
  return state
end

--- Keep `state` in the file at `path` (atomically).
function M.write(path, state)
  return fs.write(path, journal.encode(state))
end

--- The state `write` kept at `path`; nil, message when there is none or it is not one.
function M.read(path)
  local text, err, errno = fs.read(path)
  if not text then return nil, err, errno end
  local state, derr = journal.decode(text, path)
  if type(state) ~= "table" or state.version ~= M.VERSION then
    return nil, ("%s: not a saved network state (%s)"):format(path, derr or "version " .. tostring(state and state.version))
  end
  return state
end

--- A saved device's bus address as the state files key it: "pci/0000:03:00.0".
function M.device_key(d)
  return dkey(d)
end

--- `state` with the devices saved in `over` in place of its own of the same bus address, and
-- those of `over` it lacks (e.g. what a run killed mid-reload saved of devices that are gone now);
-- likewise its uppers, by name (over's first: they were made on the devices as they were then).
function M.merge(state, over)
  local theirs = {}
  for _, d in ipairs(over.devices) do theirs[dkey(d)] = d end
  local merged = { version = M.VERSION, routes = state.routes, going = state.going, lost = state.lost, devices = {},
                   uppers = {} }
  for _, d in ipairs(state.devices) do
    local k = dkey(d)
    merged.devices[#merged.devices + 1] = theirs[k] or d
    theirs[k] = nil
  end
  for _, d in ipairs(over.devices) do
    if theirs[dkey(d)] then merged.devices[#merged.devices + 1] = d end
  end
  table.sort(merged.devices, function(a, b) return dkey(a) < dkey(b) end)
  local named = {}
  for _, list in ipairs { over.uppers or {}, state.uppers or {} } do
    for _, u in ipairs(list) do
      if not named[u.name] then merged.uppers[#merged.uppers + 1], named[u.name] = u, true end
    end
  end
  return merged
end

local function plural(n, what) return ("%d %s%s"):format(n, what, n == 1 and "" or "s") end

-- The parts of a line describing what a device or upper has of its own.
local function own_parts(d)
  local parts = { d.admin or "?", "mtu " .. tostring(d.mtu) }
  for _, a in ipairs(d.addresses) do parts[#parts + 1] = ("%s/%d"):format(a.address, a.prefix) end
  if #d.routes > 0 then parts[#parts + 1] = plural(#d.routes, "route") end
  if d.master then parts[#parts + 1] = ("port of %s%s"):format(d.master, d.master_kind and " (" .. d.master_kind .. ")" or "") end
  return parts
end

--- One line saying what a saved upper (a VLAN or macvlan on a device of the stack) has configured:
-- "eth0.100 (vlan 100 on pci/0000:03:00.0): up, mtu 1500, 10.30.0.1/24, port of br0 (bridge)".
function M.describe_upper(u)
  return ("%s (%s): %s"):format(u.name, upper_what(u), table.concat(own_parts(u), ", "))
end

--- One line saying what a saved device has configured, for logs and the plan:
-- "eth0 (pci/0000:03:00.0, mlx5_core): up, mtu 9000, 10.0.0.1/24, 1 route, eswitch switchdev, 2 VFs".
function M.describe(d)
  local parts = own_parts(d)
  if d.eswitch then parts[#parts + 1] = "eswitch " .. d.eswitch end
  if (d.numvfs or 0) > 0 then
    local macs = {}
    for _, vf in ipairs(d.vfs) do if vf.mac and vf.mac ~= ZERO_MAC then macs[#macs + 1] = vf.mac end end
    parts[#parts + 1] = plural(d.numvfs, "VF") .. (#macs > 0 and " (macs " .. table.concat(macs, " ") .. ")" or "")
  end
  if d.physfn then parts[#parts + 1] = "VF of " .. d.physfn end
  if d.port then parts[#parts + 1] = "representor" end
  return ("%s (%s%s): %s"):format(d.name, dkey(d), d.driver and ", " .. d.driver or "",
                                  table.concat(parts, ", "))
end

-- The links of the stack's devices now: `{ ["bus/device"] = link }`.
local function links_by_device(sock)
  local found = {}
  for _, link in ipairs(must("links", sock:links())) do
    local k = link.device and key(link.bus, link.device, rep_port(link.name))
    if k and not found[k] then found[k] = link end
  end
  return found
end

local function missing_devices(sock, devices)
  local now, missing = links_by_device(sock), {}
  for _, d in ipairs(devices) do
    if not now[dkey(d)] then missing[#missing + 1] = ("%s (was %s)"):format(dkey(d), d.name) end
  end
  return missing, now
end

local function wait_for(sock, devices, timeout, what)
  local deadline = sys.monotonic() + timeout
  while true do
    local missing, now = missing_devices(sock, devices)
    if #missing == 0 then return now end
    if sys.monotonic() >= deadline then
      return nil, ("%d network device%s did not come back within %g s %s: %s"):format(#missing,
        #missing > 1 and "s" or "", timeout, what, table.concat(missing, ", "))
    end
    sys.sleep(0.1)
  end
end

local function pfs_of(state)
  local pfs = {}
  for _, d in ipairs(state.devices) do if not d.physfn and not d.port then pfs[#pfs + 1] = d end end
  return pfs
end

--- Wait until every saved device (but the VFs, which restore makes) has a link again.
-- @tparam table opts `{ timeout = 60 }` seconds
-- @treturn[1] table `{ ["bus/device"] = link }` the links now
-- @treturn[2] nil, "N network devices did not come back within T s after the load: bus/dev (was eth0), ..."
function M.wait(sock, state, opts)
  return wait_for(sock, pfs_of(state), (opts or {}).timeout or 60, "after the load")
end

-- One restore step: run fn, and file its outcome under `what`.
local function step(report, what, ok, err)
  if ok then
    report.restored[#report.restored + 1] = what
  else
    report.failed[#report.failed + 1] = what .. ": " .. tostring(err)
  end
  return ok
end

local VF_FIELDS = { "mac", "vlan", "qos", "spoofchk", "trust", "link_state" }

local function same_vf(a, b)
  if not b then return false end
  for _, f in ipairs(VF_FIELDS) do if a[f] ~= b[f] then return false end end
  return true
end

-- The PCI vendor id of a device ("0x15b3"), nil on a bus without one.
local function vendor_of(bus, device)
  return (fs.read(("%s/%s/devices/%s/vendor"):format(SYSBUS, bus, device)) or ""):match("^%s*(%S+)")
end

-- Each VF of the PF with no admin MAC is given its own current MAC as one
-- (the seed's step for a Mellanox NIC: the rebind that follows then generates
-- the VF's RDMA GUID from it). True when it gave one.
local function pin_vf_macs(sock, report, d, link)
  local pf = must("link " .. link.name, sock:link(link.name))
  local now, virtfns, pinned = links_by_device(sock), virtfns_of(d.bus, d.device), false
  for _, vf in ipairs(pf.vfs or {}) do
    local vf_link = virtfns[vf.vf] and now[key(d.bus, virtfns[vf.vf])]
    if vf.mac == ZERO_MAC and vf_link and vf_link.mac and vf_link.mac ~= ZERO_MAC then
      local what = ("%s: VF %d mac %s (its own, so that its RDMA GUID is generated from it)"):format(
        label(d, link), vf.vf, vf_link.mac)
      pinned = step(report, what, sock:set_vf(link.name, vf.vf, { mac = vf_link.mac })) or pinned
    end
  end
  return pinned
end

-- The PF's eswitch mode, VF count and VF config (and, for a PF of a vendor in
-- `pin`, the VFs' MACs pinned); true when it changed the VFs.
local function restore_sriov(sock, report, d, link, pin)
  local name, changed = label(d, link), false
  if d.eswitch and sock:eswitch(d.bus, d.device) ~= d.eswitch then
    step(report, ("%s: eswitch mode %s"):format(name, d.eswitch), sock:set_eswitch(d.bus, d.device, d.eswitch))
  end
  if (d.numvfs or 0) > 0 and link.numvfs ~= d.numvfs then
    if (link.numvfs or 0) > 0 then net.set_numvfs(d.bus, d.device, 0) end
    if not step(report, ("%s: %d VFs"):format(name, d.numvfs), net.set_numvfs(d.bus, d.device, d.numvfs)) then
      return false
    end
    changed = true
    link = assert(sock:link(link.name))
  end
  local current = {}
  for _, vf in ipairs(link.vfs or {}) do current[vf.vf] = vf end
  for _, vf in ipairs(d.vfs) do
    if not same_vf(vf, current[vf.vf]) then
      local mac = vf.mac ~= ZERO_MAC and vf.mac or nil
      local what = ("%s: VF %d%s%s%s"):format(name, vf.vf, mac and " mac " .. mac or "",
        vf.vlan and vf.vlan > 0 and " vlan " .. vf.vlan or "", vf.link_state and " link-state " .. vf.link_state or "")
      changed = step(report, what, sock:set_vf(link.name, vf.vf, { mac = mac, vlan = vf.vlan, qos = vf.qos,
        spoofchk = vf.spoofchk, trust = vf.trust, link_state = vf.link_state })) or changed
    end
  end
  if pin[vendor_of(d.bus, d.device) or ""] then changed = pin_vf_macs(sock, report, d, link) or changed end
  return changed
end

-- Unbind and bind each VF of the PF from its driver: the VF takes what its PF
-- now says of it (its admin MAC; on real hardware its RDMA GUID), as
-- Mellanox/ofed-docker does after a reload.
local function rebind_vfs(report, d)
  for i, vf in pairs(virtfns_of(d.bus, d.device)) do
    local driver, err = net.rebind(d.bus, vf)
    step(report, ("%s: VF %d (%s) rebound%s"):format(key(d.bus, d.device), i, vf, driver and " to " .. driver or ""),
         driver, err)
  end
end

-- The MTU and addresses of a device or upper, on its link now; `name` labels it. True when it
-- gave it an address.
local function restore_config(sock, report, d, link, name)
  local added = false
  if link.mtu ~= d.mtu then
    step(report, ("%s: mtu %d"):format(name, d.mtu), sock:set_link(link.name, { mtu = d.mtu }))
  end
  for _, a in ipairs(d.addresses) do
    local cidr = ("%s/%d"):format(a.address, a.prefix)
    local ok, err, errno = sock:add_address(link.name, cidr)
    if ok or errno ~= "EEXIST" then added = step(report, ("%s: address %s"):format(name, cidr), ok, err) or added end
  end
  return added
end

local function upper_label(u) return ("%s (%s)"):format(u.name, upper_what(u)) end

-- A VLAN or macvlan made again on its lower device's link now (`lower`), with its MTU (and a
-- macvlan's own MAC); its link, or nil. One of its name, kind and device is taken as it is.
local function restore_upper(sock, report, u, lower)
  local have = sock:link(u.name)
  if have and have.kind == u.kind and have.lower == lower.name then return have end
  if have then
    step(report, upper_label(u), nil, ("a %s link %s is there"):format(have.kind or "", u.name))
    return nil
  end
  local ok, err = sock:add_link { name = u.name, kind = u.kind, lower = lower.name, id = u.vlan_id,
                                  protocol = u.vlan_protocol, mode = u.macvlan_mode, mtu = u.mtu,
                                  mac = u.kind == "macvlan" and u.mac or nil }
  step(report, ("%s: made on %s"):format(upper_label(u), lower.name), ok, err)
  return ok and sock:link(u.name) or nil
end

-- Its master again: the bond, bridge or VRF it was a port of (a bond's port joins while down).
local function restore_master(sock, report, d, link, name)
  if not d.master or link.master == d.master or REJOINED_BY_MASTER[d.master_kind or ""] then return end
  if link.admin == "up" and ENSLAVE_DOWN[d.master_kind or ""] then sock:set_link(link.name, { up = false }) end
  step(report, ("%s: port of %s%s"):format(name, d.master, d.master_kind and " (" .. d.master_kind .. ")" or ""),
       sock:set_link(link.name, { master = d.master }))
end

-- Up again; true when it brought it up.
local function restore_up(sock, report, d, link, name)
  local now = d.admin == "up" and sock:link(link.name)
  return now and now.admin ~= "up" and step(report, ("%s: up"):format(name), sock:set_link(link.name, { up = true }))
end

-- A gratuitous ARP for each IPv4 address of an Ethernet link the restore brought up or gave
-- addresses to: its neighbours dropped their entry for it when their side of the link went down,
-- and learn it again now instead of at their resolution's next try (up to a second later).
-- From this process's network namespace.
local function announce(report, d, link, name)
  if d.admin ~= "up" or #(link.mac or "") ~= 17 then return end -- an IPoIB link's address is 20 bytes
  for _, a in ipairs(d.addresses) do
    if a.family == "inet" then
      step(report, ("%s: announced %s (gratuitous ARP)"):format(name, a.address), net.announce(link.name, a.address))
    end
  end
end

local function restore_routes(sock, report, d, link, name)
  for _, r in ipairs(d.routes) do
    local ok, err, errno = sock:add_route { dst = r.dst, gateway = r.gateway, dev = link.name, metric = r.metric,
                                            table = r.table }
    if ok or errno ~= "EEXIST" then
      step(report, ("%s: route %s%s%s"):format(name, r.dst, r.gateway and " via " .. r.gateway or "",
                                              r.table and " table " .. r.table or ""), ok, err)
    end
  end
end

-- The uppers made again on their devices' links `now`, lower devices first; added to `items`.
local function restore_uppers(sock, report, state, now, items)
  local made = {}
  for _, u in ipairs(state.uppers or {}) do
    local lower = u.lower_key and now[u.lower_key] or made[u.lower]
    local link = lower and restore_upper(sock, report, u, lower)
    if not lower then step(report, upper_label(u), nil, "its device is not there") end
    if link then
      local added = restore_config(sock, report, u, link, upper_label(u))
      made[u.name] = link
      items[#items + 1] = { d = u, link = link, name = upper_label(u), changed = added }
    end
  end
end

--- Put back what the reload reset: per PF its eswitch mode, then sriov_numvfs, then each VF's
-- config, then (for a PF whose PCI vendor is in opts.pin_vf_macs) each VF without an admin MAC
-- given its current MAC as one, then (when any of that changed, and opts.rebind is not false) each
-- VF rebound; then per device (the VFs' and the representors' once their links are back) its MTU
-- and addresses; then the VLANs and macvlans on them, made again, lower devices first, with
-- theirs; then each back into its bond, bridge or VRF; then each up; then each IPv4 address of a
-- link it brought up or gave addresses to announced (a gratuitous ARP); routes last (a gateway may
-- be on another device). What is already as saved is left as it is.
-- @tparam table opts `{ rebind = true, timeout = 60 (for the VFs' links), pin_vf_macs = { "0x15b3" } }`
-- @treturn table `{ restored = { "eth0 (pci/0000:03:00.0): mtu 9000"... },
--   failed = { "eth0 (pci/...): address 10.0.0.1/24: <reason>"... } }`
function M.restore(sock, state, opts)
  opts = opts or {}
  local report, pin = { restored = {}, failed = {} }, set_of(opts.pin_vf_macs or {})
  local now = links_by_device(sock)
  for _, d in ipairs(pfs_of(state)) do
    local link = now[dkey(d)]
    if not link then
      step(report, label(d), nil, "the device did not come back")
    elseif restore_sriov(sock, report, d, link, pin) and opts.rebind ~= false then
      rebind_vfs(report, d)
    end
  end
  local vfs = {} -- and representors: made with the VFs
  for _, d in ipairs(state.devices) do if d.physfn or d.port then vfs[#vfs + 1] = d end end
  local _, err = wait_for(sock, vfs, opts.timeout or 60, "after their PF's sriov_numvfs was restored")
  if err then report.failed[#report.failed + 1] = err end
  now = links_by_device(sock)
  local items = {}
  for _, d in ipairs(state.devices) do
    local link = now[dkey(d)]
    if link then
      local added = restore_config(sock, report, d, link, label(d, link))
      items[#items + 1] = { d = d, link = link, name = label(d, link), changed = added }
    end
  end
  restore_uppers(sock, report, state, now, items)
  for _, it in ipairs(items) do restore_master(sock, report, it.d, it.link, it.name) end
  for _, it in ipairs(items) do it.changed = restore_up(sock, report, it.d, it.link, it.name) or it.changed end
  for _, it in ipairs(items) do if it.changed then announce(report, it.d, it.link, it.name) end end
  for _, it in ipairs(items) do restore_routes(sock, report, it.d, it.link, it.name) end
  return report
end

-- ---- guard ------------------------------------------------------------------------

-- An IPv4 or IPv6 address as a string of bytes (nil if it is neither).
local function bytes_of(text)
  local a, b, c, d = text:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if a then
    local octets = { tonumber(a), tonumber(b), tonumber(c), tonumber(d) }
    for _, o in ipairs(octets) do if o > 255 then return nil end end
    return string.char(table.unpack(octets))
  end
  if not text:find(":", 1, true) then return nil end
  local head, tail = text:match("^(.-)::(.*)$")
  local groups = {}
  for g in (head or text):gmatch("[^:]+") do groups[#groups + 1] = g end
  local after = {}
  for g in (tail or ""):gmatch("[^:]+") do after[#after + 1] = g end
  for _ = 1, head and 8 - #groups - #after or 0 do groups[#groups + 1] = "0" end -- "::" stands for the zeros
  for _, g in ipairs(after) do groups[#groups + 1] = g end
  if #groups ~= 8 then return nil end
  local out = {}
  for _, g in ipairs(groups) do
    local n = #g <= 4 and g:match("^%x+$") and tonumber(g, 16)
    if not n then return nil end
    out[#out + 1] = string.char(n >> 8, n & 255)
  end
  return table.concat(out)
end

local function in_prefix(addr, network, prefix)
  if #addr ~= #network then return false end
  local full, rest = prefix // 8, prefix % 8
  if addr:sub(1, full) ~= network:sub(1, full) then return false end
  if rest == 0 then return true end
  local mask = (0xff << (8 - rest)) & 0xff
  return addr:byte(full + 1) & mask == network:byte(full + 1) & mask
end

-- The route of the main table that reaches addr (longest prefix, then lowest metric).
local function route_to(routes, addr)
  local best, best_len
  for _, r in ipairs(routes) do
    local prefix_bytes, len
    if r.dst == "default" then
      prefix_bytes, len = (r.family == "inet6") and ("\0"):rep(16) or ("\0"):rep(4), 0
    else
      local a, p = r.dst:match("^(.-)/(%d+)$")
      prefix_bytes, len = bytes_of(a or ""), tonumber(p)
    end
    if prefix_bytes and in_prefix(addr, prefix_bytes, len) and (not best or len > best_len
        or (len == best_len and (r.metric or 0) < (best.metric or 0))) then
      best, best_len = r, len
    end
  end
  return best
end

--- The gateways of the default routes through what goes down with the stack (the guard's
-- "default route" reasons): `{ "10.0.0.254"... }`.
function M.uplink_gateways(state)
  local going, gateways = {}, {}
  for _, d in ipairs(state.devices) do going[d.name] = true end
  for name in pairs(state.going or {}) do going[name] = true end
  for _, r in ipairs(state.routes) do
    if r.dst == "default" and r.gateway and going[r.dev] then gateways[#gateways + 1] = r.gateway end
  end
  return gateways
end

--- Is `text` an IPv4 or IPv6 address (as guard takes them)?
function M.is_address(text)
  return type(text) == "string" and bytes_of(text) ~= nil
end

--- Would the reload cut the node off? True when neither the default route nor a route to one of
-- `addresses` (e.g. the API server's, or the management network's) goes through a device of the
-- stack, nor is one of them on such a device.
-- @tparam table state from save
-- @tparam[opt] table addresses `{ "10.0.0.1", "fd00::1" }`
-- @treturn[1] true
-- @treturn[2] false, "the default route (via 10.0.0.254) goes through eth0 (pci/0000:03:00.0), a device
--   of the stack; address 10.0.5.1 is reached through ...", and the devices named: `{ "pci/0000:03:00.0" }`
function M.guard(state, addresses)
  local going, reasons, through = {}, {}, {}
  for name, g in pairs(state.going or {}) do going[name] = g end
  for _, d in ipairs(state.devices) do
    going[d.name] = going[d.name] or { what = label(d), keys = { dkey(d) }, own = true }
  end
  local function reason(g, fmt, ...)
    reasons[#reasons + 1] = fmt:format(...)
    for _, k in ipairs(g.keys) do through[k] = true end
  end
  local function a_device(g) return g.own and "a device of the stack" or "which goes down with the stack" end
  for _, r in ipairs(state.routes) do
    local g = r.dst == "default" and going[r.dev]
    if g then
      reason(g, "the default route%s goes through %s, %s", r.gateway and " (via " .. r.gateway .. ")" or "", g.what,
             a_device(g))
    end
  end
  local owners = {}
  for _, list in ipairs { state.devices, state.uppers or {} } do
    for _, d in ipairs(list) do owners[#owners + 1] = d end
  end
  for _, text in ipairs(addresses or {}) do
    local addr = bytes_of(text) or error(("netstate.guard: '%s' is not an IPv4 or IPv6 address"):format(text), 2)
    local own
    for _, d in ipairs(owners) do
      for _, a in ipairs(d.addresses) do if bytes_of(a.address) == addr then own = going[d.name] end end
    end
    local r = route_to(state.routes, addr)
    if own then
      reason(own, "address %s is on %s, %s", text, own.what, a_device(own))
    elseif r and going[r.dev] then
      reason(going[r.dev], "address %s is reached through %s, %s (route %s)", text, going[r.dev].what,
             a_device(going[r.dev]), r.dst)
    end
  end
  if #reasons > 0 then
    local devices = {}
    for k in pairs(through) do devices[#devices + 1] = k end
    table.sort(devices)
    return false, table.concat(reasons, "; "), devices
  end
  return true
end

return M
