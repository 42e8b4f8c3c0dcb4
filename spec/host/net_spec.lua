-- drv.net against the machine's kernel, in a network namespace of its own
-- (veth pairs, addresses, routes, MTU); checked against ip(8) run there.
local net = require "drv.net"
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
    raises("nothing to set: give 'up' and/or 'mtu'", s.set_link, s, "va", {})
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
