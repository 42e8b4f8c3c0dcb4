-- drv.net against the machine's kernel, in a network namespace of its own
-- (veth pairs, addresses, routes, MTU); checked against ip(8) run there.
local net = require "drv.net"
local proc = require "drv.proc"
local httpd = require "spec.support.httpd"
local ns = require "spec.support.ns"

describe("drv.net", function()
  local netns, s

  before_each(function()
    netns = ns.netns()
    netns.ip("link", "add", "name", "va", "type", "veth", "peer", "name", "vb")
    s = assert(net.open { netns = netns.path })
  end)

  after_each(function()
    s:close()
    netns.close()
  end)

  local function link_named(links, name)
    for _, l in ipairs(links) do if l.name == name then return l end end
  end

  it("lists the namespace's links with their state, MTU, MAC and driver", function()
    local links = assert(s:links())
    assert.same({ "lo", "vb", "va" }, { links[1].name, links[2].name, links[3].name })
    local va = link_named(links, "va")
    local shown = netns.ip("-o", "link", "show", "va")
    assert.equal(tonumber(shown:match("^(%d+):")), va.ifindex)
    assert.equal(shown:match("link/ether (%x%x:%x%x:%x%x:%x%x:%x%x:%x%x)"), va.mac)
    assert.same({ 1500, "down", "down", "veth", "veth" }, { va.mtu, va.admin, va.oper, va.kind, va.driver })
    assert.is_nil(va.device, "a veth has no bus device")
    assert.is_nil(va.vfs, "nor VFs")
    assert.equal("lo", link_named(links, "lo").name)
    assert.equal(65536, link_named(links, "lo").mtu)
  end)

  it("sets a link up and its MTU, as ip sees it", function()
    assert.is_true(s:set_link("va", { mtu = 9000 }))
    assert.is_true(s:set_link("vb", { up = true, mtu = 9000 }))
    assert.is_true(s:set_link("va", { up = true }))
    local shown = netns.ip("-o", "link", "show", "va")
    assert.matches(" mtu 9000 ", shown)
    assert.matches("<[^>]*UP[^>]*>", shown)
    local va = assert(s:link("va"))
    assert.same({ 9000, "up", "up" }, { va.mtu, va.admin, va.oper }, "both ends up: the carrier is on")
    assert.is_true(s:set_link("va", { up = false }))
    assert.equal("down", assert(s:link("va")).admin)
  end)

  it("adds IPv4 and IPv6 addresses and lists them with their prefix", function()
    assert.is_true(s:add_address("va", "10.9.0.1/24"))
    assert.is_true(s:add_address("va", "fd00:9::1/64"))
    assert.matches("inet 10%.9%.0%.1/24 ", netns.ip("-o", "addr", "show", "va"))
    assert.matches("inet6 fd00:9::1/64 ", netns.ip("-o", "addr", "show", "va"))
    local got = {}
    for _, a in ipairs(assert(s:addresses("va"))) do
      got[#got + 1] = ("%s %s %s/%d %s"):format(a.dev, a.family, a.address, a.prefix, a.scope)
      assert.is_false(a.dynamic, a.address)
    end
    table.sort(got)
    assert.same({ "va inet 10.9.0.1/24 global", "va inet6 fd00:9::1/64 global" }, got)
    assert.same({}, assert(s:addresses("vb")))
    local ok, err, errno = s:add_address("va", "10.9.0.1/24")
    assert.is_nil(ok)
    assert.equal("va: cannot add address 10.9.0.1/24: File exists (kernel: ipv4: Address already assigned)", err)
    assert.equal("EEXIST", errno)
  end)

  it("adds routes (a default via a gateway, a prefix on a device) and lists the main table", function()
    assert.is_true(s:add_address("va", "10.9.0.1/24"))
    assert.is_true(s:set_link("vb", { up = true }))
    assert.is_true(s:set_link("va", { up = true }))
    assert.is_true(s:add_route { dst = "default", gateway = "10.9.0.254", dev = "va" })
    assert.is_true(s:add_route { dst = "10.77.0.0/16", dev = "va", metric = 50 })
    assert.is_true(s:add_route { dst = "10.78.0.0/16", gateway = "10.9.0.253" })
    local shown = netns.ip("route", "show")
    assert.matches("default via 10%.9%.0%.254 dev va", shown)
    assert.matches("10%.77%.0%.0/16 dev va [^\n]*metric 50", shown)
    local got = {}
    for _, r in ipairs(assert(s:routes())) do
      if r.family == "inet" then
        got[#got + 1] = ("%s %s %s %s"):format(r.dst, r.gateway or "-", r.dev, r.protocol)
      end
    end
    table.sort(got)
    assert.same({ "10.77.0.0/16 - va static", "10.78.0.0/16 10.9.0.253 va static", "10.9.0.0/24 - va kernel",
                  "default 10.9.0.254 va static" }, got)
    local local_table = assert(s:routes { table = 255 })
    assert.is_true(#local_table > 0)
    for _, r in ipairs(local_table) do assert.equal(255, r.table) end
  end)

  it("adds a macvlan on a link, with its mode, MAC and MTU, and lists it on its lower device", function()
    assert.is_true(s:add_link { name = "mv0", kind = "macvlan", lower = "va", mode = "bridge",
                                mac = "02:11:22:33:44:55", mtu = 1400 })
    assert.is_true(s:add_link { name = "mv1", kind = "macvlan", lower = "va" })
    local shown = netns.ip("-d", "-o", "link", "show", "mv0")
    assert.matches("^%d+: mv0@va: ", shown)
    assert.matches(" macvlan mode bridge ", shown)
    local mv0, mv1 = assert(s:link("mv0")), link_named(assert(s:links()), "mv1")
    assert.same({ "macvlan", "va", "bridge", "02:11:22:33:44:55", 1400 },
                { mv0.kind, mv0.lower, mv0.macvlan_mode, mv0.mac, mv0.mtu })
    assert.same({ "va", "vepa" }, { mv1.lower, mv1.macvlan_mode }, "the kernel's default mode")
    assert.is_nil(mv0.vlan_id)
    assert.equal("vb", assert(s:link("va")).lower, "a veth's link is its peer")
  end)

  it("makes a link a bridge's port, and no port again", function()
    netns.ip("link", "add", "br0", "type", "bridge")
    assert.is_true(s:set_link("vb", { master = "br0" }))
    assert.matches(" master br0 ", netns.ip("-o", "link", "show", "vb"))
    assert.equal("br0", assert(s:link("vb")).master)
    assert.equal("br0", link_named(assert(s:links()), "vb").master)
    assert.is_true(s:set_link("vb", { master = false, up = true }))
    local vb = assert(s:link("vb"))
    assert.same({ nil, "up" }, { vb.master, vb.admin })
    assert.is_nil(netns.ip("-o", "link", "show", "vb"):find(" master ", 1, true))
  end)

  -- drvrun -e CODE run in the namespace; its stdout (CODE prints what it found).
  local function in_netns(code)
    local r = assert(proc.run({ "nsenter", "--net=" .. netns.path, os.getenv("DRVRUN"), "-e", code }))
    assert.equal(0, r.status, r.stderr)
    return r.stdout
  end

  it("pings an address: its echo reply's time, or no reply within the timeout, or why not", function()
    netns.ip("link", "set", "lo", "up")
    netns.ip("addr", "add", "10.9.0.1/24", "dev", "va")
    netns.ip("link", "set", "va", "up")
    netns.ip("link", "set", "vb", "up")
    local out = in_netns([[
      local net = require "drv.net"
      local function say(...)
        local t = table.pack(...)
        for i = 1, t.n do t[i] = tostring(t[i]) end
        print(table.concat(t, "|"))
      end
      say(math.type(net.ping("127.0.0.1", 5)), net.ping("127.0.0.1", 5) < 5)
      say(math.type(net.ping("::1", 5)))
      say(net.ping("10.9.0.7", 0.2))
      say(net.ping("10.99.0.7", 0.2))
      local f = assert(io.open("/proc/sys/net/ipv4/ping_group_range", "w")) -- a datagram ICMP socket now
      f:write("0 2147483647\n")
      f:close()
      say(math.type(net.ping("127.0.0.1", 5)))
      say(net.ping("10.9.0.7", 0.2))
    ]])
    assert.equal(table.concat({ "float|true", "float", "nil|10.9.0.7: no echo reply within 0.2 s|ETIMEDOUT",
      "nil|10.99.0.7: cannot send an echo request: Network is unreachable|ENETUNREACH", "float",
      "nil|10.9.0.7: no echo reply within 0.2 s|ETIMEDOUT" }, "\n") .. "\n", out)
  end)

  it("connects to a TCP port: the time it took, or refused, or no answer within the timeout", function()
    local server = httpd.start("spec")
    local took = net.connect("127.0.0.1", server.port, 10)
    server:stop()
    assert.equal("float", math.type(took))
    netns.ip("link", "set", "lo", "up")
    netns.ip("addr", "add", "10.9.0.1/24", "dev", "va")
    netns.ip("link", "set", "va", "up")
    local out = in_netns([[
      local net = require "drv.net"
      print((select(2, net.connect("127.0.0.1", 9, 5))), select(3, net.connect("::1", 9, 5)))
      print((select(2, net.connect("10.9.0.7", 80, 0.2))))
    ]])
    assert.equal("127.0.0.1 port 9: cannot connect: Connection refused\tECONNREFUSED\n"
                 .. "10.9.0.7 port 80: no answer within 0.2 s\n", out)
  end)

  it("announces an address: a neighbour in another namespace points its entry at the link", function()
    local other = ns.netns()
    finally(other.close)
    netns.ip("link", "set", "vb", "netns", other.path:match("^/proc/(%d+)/"))
    netns.ip("addr", "add", "10.9.0.1/24", "dev", "va")
    netns.ip("link", "set", "va", "up")
    other.ip("addr", "add", "10.9.0.2/24", "dev", "vb")
    other.ip("link", "set", "vb", "up")
    other.ip("neigh", "add", "10.9.0.1", "lladdr", "02:00:00:00:00:99", "dev", "vb", "nud", "stale")
    local mac = assert(s:link("va")).mac
    assert.equal("true\nnope: cannot announce 10.9.0.1: no such device\tENODEV\n"
                 .. "lo: cannot announce 127.0.0.1: not an Ethernet link\tEOPNOTSUPP\n",
                 in_netns([[
                   local net = require "drv.net"
                   print(net.announce("va", "10.9.0.1"))
                   print(select(2, net.announce("nope", "10.9.0.1")))
                   print(select(2, net.announce("lo", "127.0.0.1")))
                 ]]))
    local deadline = require("drv.sys").monotonic() + 10
    while not other.ip("neigh", "show", "dev", "vb"):find(mac, 1, true) and require("drv.sys").monotonic() < deadline do
      require("drv.sys").sleep(0.05)
    end
    assert.matches("10%.9%.0%.1 lladdr " .. mac, other.ip("neigh", "show", "dev", "vb"))
  end)

  describe("fails naming the device and what failed", function()
    local function fails(errno, message, ...)
      local ok, err, code = ...
      assert.is_nil(ok)
      assert.equal(message, err)
      assert.equal(errno, code)
    end

    it("no such device", function()
      fails("ENODEV", "nope: cannot read the link: no such device", s:link("nope"))
      fails("ENODEV", "nope: cannot set the link (mtu 1400): no such device", s:set_link("nope", { mtu = 1400 }))
      fails("ENODEV", "nope: cannot add address 10.0.0.1/8: no such device", s:add_address("nope", "10.0.0.1/8"))
      fails("ENODEV", "nope: cannot read the addresses: no such device", s:addresses("nope"))
      fails("ENODEV", "nope: cannot add a route to default: no such device",
            s:add_route { dst = "default", dev = "nope" })
      fails("ENODEV", "nope: cannot set VF 0: no such device", s:set_vf("nope", 0, { mac = "02:00:00:00:00:01" }))
      fails("ENODEV", "nope: cannot add mv0 on it: no such device",
            s:add_link { name = "mv0", kind = "macvlan", lower = "nope" })
      fails("ENODEV", "nobr: cannot make va its port: no such device", s:set_link("va", { master = "nobr" }))
    end)

    it("a link that exists, a port refused by its master", function()
      fails("EEXIST", "vb: cannot add a macvlan link on va: File exists",
            s:add_link { name = "vb", kind = "macvlan", lower = "va" })
      netns.ip("link", "add", "br0", "type", "bridge")
      assert.is_true(s:add_link { name = "mv0", kind = "macvlan", lower = "va" })
      fails("EBUSY", "va: cannot set the link (master br0): Device or resource busy", s:set_link("va", { master = "br0" }))
    end)

    it("an MTU out of the device's range, with the kernel's reason", function()
      fails("EINVAL", "va: cannot set the link (up, mtu 70000): Invalid argument (kernel: mtu greater than device maximum)",
            s:set_link("va", { up = true, mtu = 70000 }))
      fails("EINVAL", "va: cannot set the link (mtu 10): Invalid argument (kernel: mtu less than device minimum)",
            s:set_link("va", { mtu = 10 }))
      assert.matches(" mtu 1500 ", netns.ip("-o", "link", "show", "va"), "nothing changed")
      assert.equal("down", assert(s:link("va")).admin, "not even the admin state of the same request")
    end)

    it("a gateway that is not reachable, VFs on a device without any, SR-IOV on no device", function()
      fails("ENETUNREACH", "cannot add a route to default: Network is unreachable (kernel: Nexthop has invalid gateway)",
            s:add_route { dst = "default", gateway = "10.200.0.1" })
      fails("EOPNOTSUPP", "va: cannot set VF 0: Operation not supported",
            s:set_vf("va", 0, { mac = "02:00:00:00:00:01", link_state = "enable" }))
      fails("ENOENT", "pci/0000:ff:1f.7: cannot set sriov_numvfs to 2: no such device, or it has no SR-IOV",
            net.set_numvfs("pci", "0000:ff:1f.7", 2))
      fails("ENODEV", "pci/0000:ff:1f.7: cannot rebind: no such device, or no driver bound",
            net.rebind("pci", "0000:ff:1f.7"))
    end)

    it("a devlink device that does not exist (or no devlink in the kernel)", function()
      local ok, err, errno = s:eswitch("pci", "0000:ff:1f.7")
      assert.is_nil(ok)
      if errno == "EOPNOTSUPP" then
        assert.matches("^devlink: this kernel has no devlink %(", err)
      else
        assert.equal("ENODEV", errno)
        assert.matches("^pci/0000:ff:1f%.7: cannot read the eswitch mode: No such device %(kernel: ", err)
      end
      local _, err2, errno2 = s:set_eswitch("pci", "0000:ff:1f.7", "switchdev")
      assert.equal(errno, errno2)
      if errno2 == "ENODEV" then
        assert.matches("^pci/0000:ff:1f%.7: cannot set the eswitch mode to switchdev: ", err2)
      end
    end)

    it("a network namespace that does not exist", function()
      fails("ENOENT", "netns /nonexistent/ns: cannot enter: No such file or directory",
            net.open { netns = "/nonexistent/ns" })
    end)
  end)

  it("raises on programming errors", function()
    local function raises(pattern, f, ...)
      local ok, err = pcall(f, ...)
      assert.is_false(ok)
      assert.matches(pattern, err)
    end
    raises("nothing to set: give 'up', 'mtu' and/or 'master'", s.set_link, s, "va", {})
    raises("field 'master': a link's name, or false for none", s.set_link, s, "va", { master = true })
    raises("field 'kind': \"vlan\" or \"macvlan\" expected", s.add_link, s, { name = "x", kind = "bond", lower = "va" })
    raises("field 'name': a link name %(1%-15 characters", s.add_link, s, { name = ("x"):rep(16), kind = "vlan" })
    raises("field 'lower': the link to add it on expected", s.add_link, s, { name = "x", kind = "vlan", id = 1 })
    raises("field 'id': a VLAN id %(0%-4094%) expected", s.add_link, s, { name = "x", kind = "vlan", lower = "va" })
    raises("field 'protocol': 802.1Q or 802.1ad expected, got 'qinq'", s.add_link, s,
           { name = "x", kind = "vlan", lower = "va", id = 5, protocol = "qinq" })
    raises("field 'mode': a macvlan mode expected, got 'hub'", s.add_link, s,
           { name = "x", kind = "macvlan", lower = "va", mode = "hub" })
    raises("an IPv4 or IPv6 address expected, got 'host.example'", net.ping, "host.example", 1)
    raises("a timeout in seconds %(0%-86400%) expected", net.ping, "127.0.0.1", -1)
    raises("a TCP port %(1%-65535%) expected", net.connect, "127.0.0.1", 0, 1)
    raises("an IPv4 address expected, got 'fd00::1'", net.announce, "va", "fd00::1")
    raises("field 'mac': a MAC address expected, got 'zz'", s.set_vf, s, "va", 0, { mac = "zz" })
    raises("field 'link_state': invalid value 'on'", s.set_vf, s, "va", 0, { link_state = "on" })
    raises("address: an IPv4 or IPv6 address expected, got 'x'", s.add_address, s, "va", "x")
    raises("a route needs a 'gateway', a 'dev' or both", s.add_route, s, { dst = "default" })
    raises("fields 'dst' and 'gateway': not of one address family", s.add_route, s,
           { dst = "fd00::/64", gateway = "10.0.0.1" })
    raises("invalid option 'promiscuous'", s.set_eswitch, s, "pci", "x", "promiscuous")
    raises("a device name expected, got '../x'", net.set_numvfs, "pci", "../x", 1)
    s:close()
    s:close()
    raises("socket is closed", s.links, s)
    assert.equal("drv.net.socket (closed)", tostring(s))
  end)

  it("closes with <close> and sees only its own namespace", function()
    do
      local here <close> = assert(net.open())
      assert.is_nil(link_named(assert(here:links()), "va"), "va is not in the test's own namespace")
      assert.matches("^drv%.net%.socket %(", tostring(here))
    end
  end)
end)
