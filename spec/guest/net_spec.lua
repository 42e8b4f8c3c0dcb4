-- guest-timeout: 600 (the boot took 34 s at load 2, 171 s at load 16 here)
-- Network continuity across the driver reload, on the guest's real kernel: the
-- fixture NIC (sim_pci devices bound by the simulated mlx5_core) configured,
-- its state saved, the stack swapped by hand for another build, the state
-- restored (drv.netstate over drv.net; no recipe).
local fs = require "drv.fs"
local kmod = require "drv.kmod"
local net = require "drv.net"
local netstate = require "drv.netstate"
local graph = require "drv.graph"
local stack = require "drv.stack"
local sys = require "drv.sys"
local guest = require "spec.support.guest"
local ofed = require "spec.support.ofed"
local simnic = require "spec.support.simnic"

local BUS, PF, SIMBUS = simnic.BUS, simnic.PF, simnic.SIMBUS
local sysfs_write, link_of, rep_of = simnic.sysfs_write, simnic.link_of, simnic.rep_of

-- The built stack in `dir` (built/sim-ofed or built/sim-ofed-next): deps, paths, srcversions.
local function build_of(dir)
  local deps, paths, srcversions = {}, {}, {}
  for _, p in ipairs(fs.glob(guest.built .. "/" .. dir .. "/src/*/*.ko")) do
    local info = assert(kmod.modinfo(p))
    paths[info.name] = p
    deps[info.name] = info.depends
    srcversions[info.name] = info.srcversion
  end
  return deps, paths, srcversions
end

local function contains(list, item)
  for _, x in ipairs(list) do if x == item then return true end end
  return false
end

-- The saved state of a device minus what may differ across the reload (its name).
local function comparable(d)
  local c = {}
  for k, v in pairs(d) do if k ~= "name" then c[k] = v end end
  table.sort(c.addresses, function(a, b) return a.address < b.address end)
  return c
end

describe("network state across the driver reload", function()
  local sock

  setup(function()
    guest.unload_all()
    assert(kmod.insert_many { { name = "sim_pci", path = guest.built .. "/sim-pci/sim_pci.ko" } })
    sysfs_write(SIMBUS .. "/new_device", "3")
    sock = assert(net.open())
  end)

  teardown(function()
    if sock then sock:close() end
    guest.unload_all()
    if fs.exists(SIMBUS) then
      sysfs_write(SIMBUS .. "/del_device", "3")
      assert(kmod.remove_many { "sim_pci" })
    end
  end)

  it("is saved, survives a reload to another build of the stack, and is restored", function()
    local old_deps, old_paths = build_of("sim-ofed")
    assert(stack.load(assert(graph.levels(old_deps)), old_paths))
    local pf = assert(link_of(sock, PF), "the NIC driver made a netdev for the device")
    assert.same({ "mlx5_core", "down", 1500, 0, 4 }, { pf.driver, pf.admin, pf.mtu, pf.numvfs, pf.totalvfs })

    -- eswitch mode before VFs (the driver refuses it after), then VFs and their config
    assert.is_true(sock:set_eswitch(BUS, PF, "switchdev"))
    assert.is_true(net.set_numvfs(BUS, PF, 2))
    local _, busy = sock:set_eswitch(BUS, PF, "legacy")
    assert.equal("sim_pci/0000:03:00.0: cannot set the eswitch mode to legacy: Device or resource busy "
                 .. "(kernel: cannot change the eswitch mode while VFs are enabled)", busy)
    simnic.configure_pf(sock, pf)
    local vf0 = assert(link_of(sock, "0000:03:00.1"), "VF 0 has a netdev")
    assert.equal("02:aa:00:00:00:01", vf0.mac, "a rebound VF takes its admin MAC")
    assert.is_true(sock:set_link(vf0.name, { mtu = 4000, up = true }))
    -- switchdev mode: a representor per VF, on the PF's device (an OVS bridge's port, say)
    local rep0 = assert(rep_of(sock, "pf0vf0"), "VF 0's representor")
    assert.truthy(rep_of(sock, "pf0vf1"), "VF 1's representor")
    assert.equal("p0", (fs.read("/sys/class/net/" .. pf.name .. "/phys_port_name") or ""):match("^%S*"))
    assert.is_true(sock:set_link(rep0.name, { mtu = 9000, up = true }))
    assert.same({ 2, nil }, { rep0.numvfs, rep0.vfs }, "a representor has its PF's VF count, not its VF list")

    local saved = netstate.save(sock, ofed.STACK)
    assert.equal(5, #saved.devices, "the PF, its two VFs and their representors")
    local file = os.tmpname()
    assert(netstate.write(file, saved))
    assert.same(saved, assert(netstate.read(file)), "the state reads back from its file")
    local pf_saved = saved.devices[1]
    assert.same({ "switchdev", 2, 9000, "up" }, { pf_saved.eswitch, pf_saved.numvfs, pf_saved.mtu, pf_saved.admin })
    assert.same({ PF, "pf0vf0", 9000, "up" }, { saved.devices[2].device, saved.devices[2].port, saved.devices[2].mtu,
                                              saved.devices[2].admin }, "a representor, keyed by its port")
    assert.same({ "pf0vf1", "down" }, { saved.devices[3].port, saved.devices[3].admin })
    assert.same({ "0000:03:00.1", PF }, { saved.devices[4].device, saved.devices[4].physfn })
    assert.same({ "02:aa:00:00:00:01", "enable", true }, { pf_saved.vfs[1].mac, pf_saved.vfs[1].link_state,
                                                          pf_saved.vfs[1].trust })

    -- the reload, by hand: unload the stack, load the other build
    local new_deps, new_paths, new_srcversions = build_of("sim-ofed-next")
    local plan = stack.plan(graph.sorted(new_deps), stack.snapshot(assert(kmod.new())), { deps = new_deps })
    assert.same({}, plan.blockers)
    assert(stack.unload(plan.unload))
    assert.is_nil(link_of(sock, PF), "unloading the driver destroyed the netdevs")
    assert(stack.load(plan.load, new_paths))
    assert.is_true(stack.verify(assert(kmod.new()), new_srcversions), "the other build is loaded")

    local t0 = sys.monotonic()
    local back = assert(netstate.wait(sock, saved))
    print(("    devices back %.3f s after the load"):format(sys.monotonic() - t0))
    local fresh = back[BUS .. "/" .. PF]
    assert.same({ "down", 1500, 0 }, { fresh.admin, fresh.mtu, fresh.numvfs }, "the new driver's defaults")
    assert.equal("legacy", sock:eswitch(BUS, PF))
    assert.same({}, assert(sock:addresses(fresh.name)))
    assert.is_nil(rep_of(sock, "pf0vf0"), "no representors without VFs")

    t0 = sys.monotonic()
    local report = netstate.restore(sock, assert(netstate.read(file)))
    print(("    restored in %.3f s: %d steps"):format(sys.monotonic() - t0, #report.restored))
    assert.same({}, report.failed)
    local pfname = ("%s (%s/%s)"):format(fresh.name, BUS, PF)
    for _, step in ipairs { pfname .. ": eswitch mode switchdev", pfname .. ": 2 VFs",
                            pfname .. ": VF 0 mac 02:aa:00:00:00:01 link-state enable",
                            pfname .. ": VF 1 mac 02:aa:00:00:00:02 vlan 10 link-state auto",
                            BUS .. "/" .. PF .. ": VF 0 (0000:03:00.1) rebound to mlx5_core",
                            pfname .. ": mtu 9000", pfname .. ": address 10.20.0.1/24",
                            pfname .. ": address fd00:20::1/64", pfname .. ": up",
                            pfname .. ": route 10.21.0.0/16 via 10.20.0.254" } do
      assert.is_true(contains(report.restored, step), step .. " in:\n" .. table.concat(report.restored, "\n"))
    end

    local now = netstate.save(sock, ofed.STACK)
    assert.equal(#saved.devices, #now.devices)
    for i, d in ipairs(saved.devices) do
      assert.same(comparable(d), comparable(now.devices[i]), d.device)
    end
    assert.equal("02:aa:00:00:00:01", assert(link_of(sock, "0000:03:00.1")).mac,
                 "the rebound VF took the admin MAC its PF gave it")
    assert.equal("02:aa:00:00:00:02", assert(link_of(sock, "0000:03:00.2")).mac)
    local rep_label = ("%s (%s/%s#pf0vf0)"):format(assert(rep_of(sock, "pf0vf0")).name, BUS, PF)
    for _, step in ipairs { rep_label .. ": mtu 9000", rep_label .. ": up" } do
      assert.is_true(contains(report.restored, step), step .. " in:\n" .. table.concat(report.restored, "\n"))
    end

    assert.same({ restored = {}, failed = {} }, netstate.restore(sock, saved), "a second restore has nothing to do")
    os.remove(file)
  end)

  it("says which devices did not come back", function()
    local saved = { version = netstate.VERSION, routes = {}, devices = {
      { bus = BUS, device = "0000:09:00.0", name = "eth9", vfs = {}, addresses = {}, routes = {} } } }
    local t0 = sys.monotonic()
    local ok, err = netstate.wait(sock, saved, { timeout = 0.5 })
    assert.is_nil(ok)
    assert.equal("1 network device did not come back within 0.5 s after the load: sim_pci/0000:09:00.0 (was eth9)", err)
    assert.is_true(sys.monotonic() - t0 >= 0.5)
  end)

  it("guards against a reload that would take the default route or a named address with it", function()
    local deps, paths = build_of("sim-ofed")
    if not link_of(sock, PF) then assert(stack.load(assert(graph.levels(deps)), paths)) end
    local pf = assert(link_of(sock, PF))
    assert.is_true(sock:set_link(pf.name, { up = true }))
    sock:add_address(pf.name, "10.20.0.1/24")
    sock:add_route { dst = "10.21.0.0/16", gateway = "10.20.0.254", dev = pf.name }
    local label = ("%s (%s/%s)"):format(pf.name, BUS, PF)

    assert.is_true(netstate.guard(netstate.save(sock, ofed.STACK), { "127.0.0.1", "10.30.0.1" }),
                   "neither the default route (none) nor those addresses use the stack")
    local ok, why = netstate.guard(netstate.save(sock, ofed.STACK), { "10.21.3.4" })
    assert.is_false(ok)
    assert.equal(("address 10.21.3.4 is reached through %s, a device of the stack (route 10.21.0.0/16)"):format(label), why)
    ok, why = netstate.guard(netstate.save(sock, ofed.STACK), { "10.20.0.1" })
    assert.is_false(ok)
    assert.equal(("address 10.20.0.1 is on %s, a device of the stack"):format(label), why)

    assert.is_true(sock:add_route { dst = "default", gateway = "10.20.0.254", dev = pf.name })
    ok, why = netstate.guard(netstate.save(sock, ofed.STACK))
    assert.is_false(ok)
    assert.equal(("the default route (via 10.20.0.254) goes through %s, a device of the stack"):format(label), why)
    assert.is_true(netstate.guard(netstate.save(sock, { "ib_core" })), "not when the NIC driver is not in the stack")
  end)
end)

-- Devices stacked on the stack's, and its devices' places in others: the kernel's own 8021q,
-- macvlan, bonding, bridge and vrf. Unloading the NIC driver destroys the VLANs and macvlans on
-- its devices and takes them out of their bond, bridge and VRF; the restore makes them again and
-- puts them back, and the peers at the far end of the PFs' cables are answered again.
describe("devices stacked on the stack's, across the driver reload", function()
  local sock, peer3, peer4
  local ip = simnic.ip

  setup(function()
    guest.unload_all()
    simnic.load_kernel_modules { "8021q", "macvlan", "bonding", "bridge", "vrf" }
    assert(kmod.insert_many { { name = "sim_pci", path = guest.built .. "/sim-pci/sim_pci.ko" } })
    for _, id in ipairs { "3", "4", "5" } do sysfs_write(SIMBUS .. "/new_device", id) end
    local deps, paths = build_of("sim-ofed")
    assert(stack.load(assert(graph.levels(deps)), paths))
    sock = assert(net.open())
  end)

  teardown(function()
    for _, p in ipairs { peer3, peer4 } do p.close() end
    for _, l in ipairs { "bond0", "br0", "vrf0" } do require("drv.proc").run({ "ip", "link", "del", l }) end
    if sock then sock:close() end
    guest.unload_all()
    for _, id in ipairs { "3", "4", "5" } do sysfs_write(SIMBUS .. "/del_device", id) end
    assert(kmod.remove_many { "sim_pci" })
  end)

  local function answered(peer, address)
    local reply = peer.ping(address, 20)
    assert(tonumber(reply), ("%s from %s: %s"):format(address, peer.name, reply))
  end

  -- The saved state minus what a reload may change: the stack devices' names.
  local function comparable_state(state)
    local c = { devices = {}, uppers = state.uppers }
    for i, d in ipairs(state.devices) do
      c.devices[i] = {}
      for k, v in pairs(d) do if k ~= "name" then c.devices[i][k] = v end end
    end
    return c
  end

  it("are made again or rejoin their bond, bridge and VRF, with their addresses, and carry traffic again", function()
    local p3, p4, p5 = assert(link_of(sock, PF)).name, assert(link_of(sock, "0000:04:00.0")).name,
                       assert(link_of(sock, "0000:05:00.0")).name
    -- PF 3: an address, a VLAN with one, a macvlan with one, and a VLAN that is a bridge's port
    ip("addr", "add", "10.20.0.1/24", "dev", p3)
    ip("link", "set", p3, "up")
    ip("link", "add", "link", p3, "name", "vlan100", "type", "vlan", "id", "100")
    ip("addr", "add", "10.30.0.1/24", "dev", "vlan100")
    ip("link", "set", "vlan100", "up")
    ip("link", "add", "link", p3, "name", "mv0", "address", "02:6d:00:00:00:01", "type", "macvlan", "mode", "bridge")
    ip("addr", "add", "10.40.0.1/24", "dev", "mv0")
    ip("link", "set", "mv0", "up")
    ip("link", "add", "br0", "type", "bridge")
    ip("addr", "add", "10.50.0.1/24", "dev", "br0")
    ip("link", "set", "br0", "up")
    ip("link", "add", "link", p3, "name", "vlan200", "type", "vlan", "id", "200")
    ip("link", "set", "vlan200", "master", "br0")
    ip("link", "set", "vlan200", "up")
    -- PF 4: the port of an active-backup bond, which has the address and a default route
    ip("link", "add", "bond0", "type", "bond", "mode", "active-backup", "miimon", "100")
    ip("link", "set", p4, "master", "bond0")
    ip("addr", "add", "10.60.0.1/24", "dev", "bond0")
    ip("link", "set", "bond0", "up")
    ip("route", "add", "default", "via", "10.60.0.254", "dev", "bond0")
    -- PF 5: a VRF's port, with an address and a route in the VRF's table
    ip("link", "add", "vrf0", "type", "vrf", "table", "10")
    ip("link", "set", "vrf0", "up")
    ip("link", "set", p5, "master", "vrf0")
    ip("addr", "add", "10.70.0.1/24", "dev", p5)
    ip("link", "set", p5, "up")
    ip("route", "add", "10.71.0.0/16", "via", "10.70.0.254", "dev", p5, "table", "10")
    -- the hosts at the far end of PF 3's and PF 4's cables
    peer3 = simnic.peer("peer3", 3, "10.20.0.254/24", { { vlan = 100, cidr = "10.30.0.254/24" } })
    peer4 = simnic.peer("peer4", 4, "10.60.0.254/24")
    answered(peer3, "10.20.0.1")
    answered(peer3, "10.30.0.1")
    answered(peer4, "10.60.0.1")

    local saved = netstate.save(sock, ofed.STACK)
    for _, d in ipairs(saved.devices) do print("    saved " .. netstate.describe(d)) end
    for _, u in ipairs(saved.uppers) do print("    saved " .. netstate.describe_upper(u)) end
    local key3 = BUS .. "/" .. PF
    assert.same({ "vlan100 (vlan 100 on " .. key3 .. "): up, mtu 1500, 10.30.0.1/24",
                  "mv0 (macvlan (bridge) on " .. key3 .. "): up, mtu 1500, 10.40.0.1/24",
                  "vlan200 (vlan 200 on " .. key3 .. "): up, mtu 1500, port of br0 (bridge)" },
                { netstate.describe_upper(saved.uppers[1]), netstate.describe_upper(saved.uppers[2]),
                  netstate.describe_upper(saved.uppers[3]) })
    assert.same({ "bond0", "bond", {} }, { saved.devices[2].master, saved.devices[2].master_kind,
                                           saved.devices[2].addresses }, "the bond's address stays on the bond")
    assert.same({ "vrf0", "vrf", { { dst = "10.71.0.0/16", gateway = "10.70.0.254", metric = 0, family = "inet",
                                     table = 10 } } },
                { saved.devices[3].master, saved.devices[3].master_kind, saved.devices[3].routes })
    local ok, why, through = netstate.guard(saved)
    assert.is_false(ok)
    assert.equal(("the default route (via 10.60.0.254) goes through bond0 (a bond of %s (%s/0000:04:00.0)), which "
                  .. "goes down with the stack"):format(p4, BUS), why)
    assert.same({ BUS .. "/0000:04:00.0" }, through)
    ok, why, through = netstate.guard(saved, { "10.30.0.1" })
    assert.is_false(ok)
    assert.equal(("%s; address 10.30.0.1 is on vlan100 (vlan 100 on %s), which goes down with the stack"):format(
      select(2, netstate.guard(saved)), key3), why)
    assert.same({ key3, BUS .. "/0000:04:00.0" }, through)

    local new_deps, new_paths = build_of("sim-ofed-next")
    local plan = stack.plan(graph.sorted(new_deps), stack.snapshot(assert(kmod.new())), { deps = new_deps })
    assert(stack.unload(plan.unload))
    assert.is_nil(sock:link("vlan100"), "the VLAN went with its device")
    assert.is_nil(sock:link("mv0"))
    assert(stack.load(plan.load, new_paths))
    assert(netstate.wait(sock, saved))
    local t0 = sys.monotonic()
    local report = netstate.restore(sock, saved)
    print(("    restored in %.3f s: %d steps"):format(sys.monotonic() - t0, #report.restored))
    for _, line in ipairs(report.restored) do print("    | " .. line) end
    assert.same({}, report.failed)
    local n3, n4, n5 = assert(link_of(sock, PF)).name, assert(link_of(sock, "0000:04:00.0")).name,
                       assert(link_of(sock, "0000:05:00.0")).name
    for _, step in ipairs {
      ("vlan100 (vlan 100 on %s): made on %s"):format(key3, n3), "vlan100 (vlan 100 on " .. key3 .. "): address 10.30.0.1/24",
      ("mv0 (macvlan (bridge) on %s): made on %s"):format(key3, n3),
      ("vlan200 (vlan 200 on %s): port of br0 (bridge)"):format(key3),
      ("%s (%s/0000:04:00.0): port of bond0 (bond)"):format(n4, BUS),
      ("%s (%s/0000:05:00.0): port of vrf0 (vrf)"):format(n5, BUS),
      ("%s (%s/0000:05:00.0): route 10.71.0.0/16 via 10.70.0.254 table 10"):format(n5, BUS),
    } do
      assert.is_true(contains(report.restored, step), step .. " in:\n" .. table.concat(report.restored, "\n"))
    end
    assert.same(comparable_state(saved), comparable_state(netstate.save(sock, ofed.STACK)))
    assert.equal("02:6d:00:00:00:01", assert(sock:link("mv0")).mac, "the macvlan has its own MAC again")
    assert.equal(n4, (fs.read("/sys/class/net/bond0/bonding/active_slave") or ""):match("%S+"))
    answered(peer3, "10.20.0.1")
    answered(peer3, "10.30.0.1")
    answered(peer4, "10.60.0.1")
    assert.same({ restored = {}, failed = {} }, netstate.restore(sock, saved), "a second restore has nothing to do")
  end)
end)
