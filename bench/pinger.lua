--- bench/pinger.lua ADDRESS OUT STOP: send an ICMP echo request to ADDRESS every 10 ms (each waits
-- 20 ms for its reply) until the file STOP exists; append the monotonic time of each reply to OUT,
-- one line each, as it comes. Run by bench/guest.lua in the peer's network namespace, through the
-- simulated NIC's cable, to see when traffic stops and starts again.
local net = require "drv.net"
local fs = require "drv.fs"
local sys = require "drv.sys"

local address, out, stop = arg[1], arg[2], arg[3]
assert(address and out and stop, "usage: bench/pinger.lua ADDRESS OUT STOP")
local INTERVAL, WAIT = 0.01, 0.02
local f = assert(io.open(out, "w"))
f:setvbuf("line")
while not fs.exists(stop) do
  local t = sys.monotonic()
  local rtt = net.ping(address, WAIT)
  if rtt then f:write(("%.6f\n"):format(t + rtt)) end
  sys.sleep(math.max(0, t + INTERVAL - sys.monotonic()))
end
f:close()
