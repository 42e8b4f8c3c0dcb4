--- drv.reach: do addresses answer? "ADDRESS" answers an ICMP echo request,
-- "ADDRESS:PORT" ("[ADDRESS]:PORT" for IPv6) a TCP connection: accepted, or
-- refused (a reset is an answer too: the network carried it both ways). Each
-- is tried again until it answers or the time is up, so that a link still
-- coming up, a neighbour not yet resolved or a bond still failing over get
-- their time. Over drv.net.ping and drv.net.connect.
local M = {}

local net = require "drv.net"
local sys = require "drv.sys"

local function is_address(text)
  return require("drv.netstate").is_address(text)
end

--- A target parsed: `{ text, address, port }` (port nil: an ICMP echo); nil, why when it is none.
function M.parse(text)
  if type(text) ~= "string" then return nil, ("'%s' is not an address"):format(tostring(text)) end
  local address, port = text:match("^%[(.+)%]:(%d+)$")
  if not address then address, port = text:match("^([%d.]+):(%d+)$") end
  address = address or text
  if not is_address(address) then
    return nil, ("'%s' is not an IPv4 or IPv6 address, nor one with a TCP port (10.0.0.1:6443, [fd00::1]:6443)"):format(text)
  end
  port = tonumber(port)
  if port and (port < 1 or port > 65535) then return nil, ("'%s': the port is not one of 1-65535"):format(text) end
  return { text = text, address = address, port = port }
end

--- Try a parsed target once, waiting at most `timeout` seconds: true, or nil, why.
function M.try(target, timeout)
  if not target.port then
    local ok, err = net.ping(target.address, timeout)
    return ok and true, err
  end
  local ok, err, errno = net.connect(target.address, target.port, timeout)
  return (ok or errno == "ECONNREFUSED") and true, err
end

--- Which of `targets` do not answer within `opts.timeout` seconds. Each is tried (a try waits at
-- most `opts.try_timeout`) and, until it answers, tried again `opts.interval` seconds after the
-- round before, until the time is up: at least once, and a round started in time tries each
-- target that has not answered with its full try_timeout.
-- @tparam table targets `{ "10.0.0.1", "10.0.0.2:6443", "[fd00::1]:6443" }`; raises on one that is
--   none (`parse`)
-- @tparam[opt] table opts `{ timeout = 10, try_timeout = 1, interval = 0.25 }`
-- @treturn table `{ { target = "10.0.0.2:6443", why = "10.0.0.2 port 6443: no answer within 1 s" }... }`,
--   in the order given; empty when all answered
-- @treturn table `{ ["10.0.0.1"] = seconds from the start of the check to its answer }`
function M.check(targets, opts)
  opts = opts or {}
  local t0 = sys.monotonic()
  local deadline, each, interval = t0 + (opts.timeout or 10), opts.try_timeout or 1, opts.interval or 0.25
  local pending, answered, why = {}, {}, {}
  for _, text in ipairs(targets) do
    pending[#pending + 1] = assert(M.parse(text))
  end
  while #pending > 0 do
    local round, left = sys.monotonic(), {}
    for _, t in ipairs(pending) do
      local ok, err = M.try(t, each)
      if ok then answered[t.text] = sys.monotonic() - t0 else left[#left + 1], why[t.text] = t, err end
    end
    pending = left
    if #pending == 0 or sys.monotonic() >= deadline then break end
    sys.sleep(math.max(0, math.min(interval - (sys.monotonic() - round), deadline - sys.monotonic())))
  end
  local dead = {}
  for _, t in ipairs(pending) do dead[#dead + 1] = { target = t.text, why = why[t.text] } end
  return dead, answered
end

return M
