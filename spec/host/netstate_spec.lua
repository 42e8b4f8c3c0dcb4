-- drv.netstate's pure parts on the host: the guard's route lookup and the
-- state file (save/wait/restore run on the fixture NIC: spec/guest/net_spec.lua).
local netstate = require "drv.netstate"
local fs = require "drv.fs"

local function state(routes, addresses)
  return { version = netstate.VERSION, routes = routes, devices = {
    { bus = "pci", device = "0000:03:00.0", name = "ens1", addresses = addresses or {}, routes = {}, vfs = {} } } }
end

describe("drv.netstate", function()
  describe("guard", function()
    local routes = {
      { dst = "default", gateway = "192.0.2.1", dev = "eth0", family = "inet", metric = 0 },
      { dst = "10.0.0.0/8", gateway = "192.0.2.9", dev = "eth0", family = "inet", metric = 0 },
      { dst = "10.20.0.0/16", dev = "ens1", family = "inet", metric = 0 },
      { dst = "10.20.30.0/24", dev = "eth0", family = "inet", metric = 0 },
      { dst = "fd00:20::/64", dev = "ens1", family = "inet6", metric = 256 },
      { dst = "fd00::/16", dev = "eth0", family = "inet6", metric = 256 },
    }

    it("takes the longest prefix, IPv4 and IPv6", function()
      assert.is_true(netstate.guard(state(routes), { "10.1.2.3", "10.20.30.4", "fd00:21::1", "192.0.2.7", "::1" }))
      assert.same({ false, "address 10.20.1.1 is reached through ens1 (pci/0000:03:00.0), a device of the stack "
                           .. "(route 10.20.0.0/16)", { "pci/0000:03:00.0" } },
                  { netstate.guard(state(routes), { "10.20.1.1" }) })
      assert.same({ false, "address fd00:20:0:0::ab is reached through ens1 (pci/0000:03:00.0), a device of the "
                           .. "stack (route fd00:20::/64)", { "pci/0000:03:00.0" } },
                  { netstate.guard(state(routes), { "fd00:20:0:0::ab" }) })
    end)

    it("names the default route and an address on a stack device, all of them", function()
      local r = { { dst = "default", gateway = "10.20.0.1", dev = "ens1", family = "inet", metric = 0 } }
      local ok, why, devices = netstate.guard(state(r, { { family = "inet", address = "10.20.0.5", prefix = 16 } }),
                                              { "10.20.0.5" })
      assert.is_false(ok)
      assert.equal("the default route (via 10.20.0.1) goes through ens1 (pci/0000:03:00.0), a device of the stack; "
                   .. "address 10.20.0.5 is on ens1 (pci/0000:03:00.0), a device of the stack", why)
      assert.same({ "pci/0000:03:00.0" }, devices, "each device named once")
    end)

    it("tells addresses from what is not one", function()
      for _, a in ipairs { "10.0.0.1", "255.255.255.255", "fd00::1", "::1", "fe80:0:0:0:1:2:3:4" } do
        assert.is_true(netstate.is_address(a), a)
      end
      for _, a in ipairs { "10.0.0.256", "300.1.1.1", "10.0.0", "api.example", "fd00::g", "fd00::12345", "fd00::-1",
                           "1:2:3", "", 7 } do
        assert.is_false(netstate.is_address(a), tostring(a))
      end
    end)

    it("prefers the lower metric between routes of one prefix", function()
      local r = { { dst = "default", dev = "eth0", family = "inet", metric = 100 },
                  { dst = "10.0.0.0/8", dev = "ens1", family = "inet", metric = 200 },
                  { dst = "10.0.0.0/8", dev = "eth0", family = "inet", metric = 100 } }
      assert.is_true(netstate.guard(state(r), { "10.9.9.9" }))
    end)

    it("names a device that goes down with the stack: an upper of one, a bond of them only", function()
      local s = state({ { dst = "default", gateway = "10.60.0.254", dev = "bond0", family = "inet", metric = 0 },
                        { dst = "10.30.0.0/24", dev = "ens1.100", family = "inet", metric = 0 },
                        { dst = "10.80.0.0/24", dev = "bond1", family = "inet", metric = 0 } })
      s.uppers = { { name = "ens1.100", kind = "vlan", vlan_id = 100, lower_key = "pci/0000:03:00.0",
                     root = "pci/0000:03:00.0", addresses = { { family = "inet", address = "10.30.0.1", prefix = 24 } },
                     routes = {} } }
      s.going = { bond0 = { what = "bond0 (a bond of ens2 (pci/0000:04:00.0))", keys = { "pci/0000:04:00.0" } },
                  ["ens1.100"] = { what = "ens1.100 (vlan 100 on pci/0000:03:00.0)", keys = { "pci/0000:03:00.0" } } }
      assert.same({ false, "the default route (via 10.60.0.254) goes through bond0 (a bond of ens2 (pci/0000:04:00.0)), "
                           .. "which goes down with the stack; address 10.30.0.1 is on ens1.100 (vlan 100 on "
                           .. "pci/0000:03:00.0), which goes down with the stack",
                    { "pci/0000:03:00.0", "pci/0000:04:00.0" } },
                  { netstate.guard(s, { "10.30.0.1", "10.80.0.7" }) })
      s.routes[1].dev = "eth0"
      assert.same({ false, "address 10.30.0.9 is reached through ens1.100 (vlan 100 on pci/0000:03:00.0), which goes "
                           .. "down with the stack (route 10.30.0.0/24)", { "pci/0000:03:00.0" } },
                  { netstate.guard(s, { "10.30.0.9" }) })
      assert.is_true(netstate.guard(s, { "10.80.0.7" }), "bond1 stays: not all of its ports are the stack's")
    end)

    it("raises on what is not an address", function()
      local ok, err = pcall(netstate.guard, state(routes), { "api.example" })
      assert.is_false(ok)
      assert.matches("netstate.guard: 'api.example' is not an IPv4 or IPv6 address", err, nil, true)
    end)
  end)

  describe("merge and describe", function()
    local function device(dev, name, extra)
      local d = { bus = "pci", device = dev, name = name, driver = "mlx5_core", admin = "down", mtu = 1500,
                  addresses = {}, routes = {}, vfs = {} }
      for k, v in pairs(extra or {}) do d[k] = v end
      return d
    end

    it("takes what an earlier save holds in place of the devices now, and adds the ones that are gone", function()
      local now = { version = netstate.VERSION, routes = { "now" },
                    devices = { device("0000:03:00.0", "eth3"), device("0000:04:00.0", "eth4") } }
      local before = { version = netstate.VERSION, routes = { "before" },
                       devices = { device("0000:05:00.0", "eth5", { mtu = 9000 }),
                                   device("0000:03:00.0", "eth3", { admin = "up", mtu = 9000 }) } }
      local merged = netstate.merge(now, before)
      assert.same({ "now" }, merged.routes, "the routes are the ones now (for the guard)")
      assert.same({ "pci/0000:03:00.0", "pci/0000:04:00.0", "pci/0000:05:00.0" },
                  { netstate.device_key(merged.devices[1]), netstate.device_key(merged.devices[2]),
                    netstate.device_key(merged.devices[3]) })
      assert.same({ "up", 9000 }, { merged.devices[1].admin, merged.devices[1].mtu })
      assert.equal(now.devices[2], merged.devices[2])
      assert.equal(9000, merged.devices[3].mtu)
    end)

    it("says what a device has configured in one line", function()
      local pf = device("0000:03:00.0", "eth3", { admin = "up", mtu = 9000, eswitch = "switchdev", numvfs = 2,
        addresses = { { family = "inet", address = "10.0.0.1", prefix = 24 } },
        routes = { { dst = "10.1.0.0/16" }, { dst = "default" } },
        vfs = { { vf = 0, mac = "02:00:00:00:00:01" }, { vf = 1, mac = "00:00:00:00:00:00" } } })
      assert.equal("eth3 (pci/0000:03:00.0, mlx5_core): up, mtu 9000, 10.0.0.1/24, 2 routes, eswitch switchdev, "
                   .. "2 VFs (macs 02:00:00:00:00:01)", netstate.describe(pf))
      assert.equal("eth4 (pci/0000:03:00.1, mlx5_core): down, mtu 1500, VF of 0000:03:00.0",
                   netstate.describe(device("0000:03:00.1", "eth4", { physfn = "0000:03:00.0" })))
      local rep = device("0000:03:00.0", "eth5", { port = "pf0vf1", admin = "up" })
      assert.equal("eth5 (pci/0000:03:00.0#pf0vf1, mlx5_core): up, mtu 1500, representor", netstate.describe(rep))
      assert.equal("pci/0000:03:00.0#pf0vf1", netstate.device_key(rep), "a representor is keyed apart from its PF")
      assert.equal("eth6 (pci/0000:06:00.0, mlx5_core): up, mtu 1500, port of bond0 (bond)",
                   netstate.describe(device("0000:06:00.0", "eth6", { admin = "up", master = "bond0",
                                                                      master_kind = "bond" })))
    end)

    it("says what an upper is and has in one line", function()
      local function upper(extra)
        local u = { name = "ens1.100", kind = "vlan", vlan_id = 100, vlan_protocol = "802.1Q", lower_key = "pci/0000:03:00.0",
                    admin = "up", mtu = 1500, addresses = { { family = "inet", address = "10.30.0.1", prefix = 24 } },
                    routes = {} }
        for k, v in pairs(extra or {}) do u[k] = v end
        return u
      end
      assert.equal("ens1.100 (vlan 100 on pci/0000:03:00.0): up, mtu 1500, 10.30.0.1/24", netstate.describe_upper(upper()))
      assert.equal("q.7 (vlan 7 (802.1ad) on ens1.100): down, mtu 1496, port of br0 (bridge)",
                   netstate.describe_upper(upper { name = "q.7", vlan_id = 7, vlan_protocol = "802.1ad", lower_key = false,
                                                   lower = "ens1.100", admin = "down", mtu = 1496, addresses = {},
                                                   master = "br0", master_kind = "bridge" }))
      assert.equal("mv0 (macvlan (bridge) on pci/0000:03:00.0): up, mtu 1500, 10.30.0.1/24",
                   netstate.describe_upper(upper { name = "mv0", kind = "macvlan", macvlan_mode = "bridge" }))
    end)

    it("merges uppers by name, an earlier save's first", function()
      local function with(uppers) return { version = netstate.VERSION, routes = {}, devices = {}, uppers = uppers } end
      local merged = netstate.merge(with { { name = "a", mtu = 1 }, { name = "b", mtu = 1 } },
                                    with { { name = "b", mtu = 2 }, { name = "c", mtu = 2 } })
      assert.same({ { name = "b", mtu = 2 }, { name = "c", mtu = 2 }, { name = "a", mtu = 1 } }, merged.uppers)
      assert.same({}, netstate.merge(with(nil), with(nil)).uppers, "a state saved without uppers has none")
    end)
  end)

  describe("state files", function()
    it("read back what write kept, and refuse anything else", function()
      local dir = assert(fs.tmpdir("netstate"))
      local s = state({ { dst = "default", gateway = "10.20.0.1", dev = "ens1", family = "inet", metric = 0 } })
      assert(netstate.write(dir .. "/state", s))
      assert.same(s, assert(netstate.read(dir .. "/state")))
      assert(fs.write(dir .. "/other", "return { version = 99 }\n"))
      assert.same({ nil, dir .. "/other: not a saved network state (version 99)" }, { netstate.read(dir .. "/other") })
      assert(fs.write(dir .. "/junk", "not lua"))
      local none, err = netstate.read(dir .. "/junk")
      assert.is_nil(none)
      assert.matches("^" .. dir:gsub("%p", "%%%0") .. "/junk: not a saved network state %(", err)
      assert.is_nil((netstate.read(dir .. "/missing")))
      fs.remove(dir, { recursive = true })
    end)
  end)
end)
