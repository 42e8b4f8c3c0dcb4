-- drv.reach in a network namespace of its own (spec/support/ns.lua): loopback
-- answers, an address on a link with nobody there does not, a TCP port answers
-- accepted or refused; a target is tried again until it answers or the time is up.
local reach = require "drv.reach"
local proc = require "drv.proc"
local ns = require "spec.support.ns"

-- drvrun -e CODE in the namespace; its stdout.
local function run_in(netns, code)
  local r = assert(proc.run({ "nsenter", "--net=" .. netns.path, os.getenv("DRVRUN"), "-e", code }))
  assert.equal(0, r.status, r.stderr)
  return r.stdout
end

describe("drv.reach", function()
  it("parses ADDRESS, ADDRESS:PORT and [ADDRESS]:PORT, and says what is neither", function()
    assert.same({ text = "10.0.0.1", address = "10.0.0.1" }, reach.parse("10.0.0.1"))
    assert.same({ text = "10.0.0.1:6443", address = "10.0.0.1", port = 6443 }, reach.parse("10.0.0.1:6443"))
    assert.same({ text = "[fd00::1]:443", address = "fd00::1", port = 443 }, reach.parse("[fd00::1]:443"))
    assert.same({ text = "fd00::1", address = "fd00::1" }, reach.parse("fd00::1"))
    assert.same({ nil, "'api.example:443' is not an IPv4 or IPv6 address, nor one with a TCP port "
                       .. "(10.0.0.1:6443, [fd00::1]:6443)" }, { reach.parse("api.example:443") })
    assert.same({ nil, "'10.0.0.1:0': the port is not one of 1-65535" }, { reach.parse("10.0.0.1:0") })
    assert.is_nil(reach.parse("fd00::1:443:x"))
  end)

  describe("check", function()
    local netns

    before_each(function()
      netns = ns.netns()
      netns.ip("link", "set", "lo", "up")
      netns.ip("link", "add", "name", "va", "type", "veth", "peer", "name", "vb")
      netns.ip("addr", "add", "10.9.0.1/24", "dev", "va")
      netns.ip("link", "set", "va", "up")
      netns.ip("link", "set", "vb", "up")
    end)

    after_each(function() netns.close() end)

    it("says what did not answer, and why, and how soon the others did", function()
      local out = run_in(netns, [[
        local reach = require "drv.reach"
        local sys = require "drv.sys"
        local t0 = sys.monotonic()
        local dead, answered = reach.check({ "127.0.0.1", "10.9.0.7", "::1", "127.0.0.1:9", "10.9.0.8:80" },
                                           { timeout = 0.6, try_timeout = 0.2, interval = 0.1 })
        local took = sys.monotonic() - t0
        for _, d in ipairs(dead) do print(d.target .. " | " .. d.why) end
        local names = {}
        for t, s in pairs(answered) do names[#names + 1] = t .. (s < 0.6 and " soon" or " late") end
        table.sort(names)
        print(table.concat(names, ", "))
        print(took >= 0.6 and took < 10 and "bounded" or ("took " .. took))
      ]])
      assert.equal("10.9.0.7 | 10.9.0.7: no echo reply within 0.2 s\n"
                   .. "10.9.0.8:80 | 10.9.0.8 port 80: no answer within 0.2 s\n"
                   .. "127.0.0.1 soon, 127.0.0.1:9 soon, ::1 soon\n"
                   .. "bounded\n", out, "a refused connection is an answer")
    end)

    it("tries again until a target answers", function()
      local out = run_in(netns, [[
        local reach = require "drv.reach"
        local proc = require "drv.proc"
        -- 10.9.0.9 appears on the namespace's own link half a second from now
        local p = assert(proc.spawn({ "sh", "-c", "sleep 0.5; ip addr add 10.9.0.9/24 dev vb" }))
        local dead, answered = reach.check({ "10.9.0.9" }, { timeout = 20, try_timeout = 0.2, interval = 0.1 })
        assert(p:wait(10))
        print(#dead, answered["10.9.0.9"] >= 0.4 and answered["10.9.0.9"] < 15)
      ]])
      assert.equal("0\ttrue\n", out)
    end)

    it("tries each once when there is no time", function()
      local out = run_in(netns, [[
        local dead, answered = require("drv.reach").check({ "127.0.0.1", "10.9.0.7" }, { timeout = 0 })
        print(#dead, dead[1].target, answered["127.0.0.1"] ~= nil)
      ]])
      assert.equal("1\t10.9.0.7\ttrue\n", out)
    end)
  end)

  it("raises on a target that is none", function()
    local ok, err = pcall(reach.check, { "api.example" })
    assert.is_false(ok)
    assert.matches("'api.example' is not an IPv4 or IPv6 address", err, nil, true)
  end)
end)
