-- Start spec/support/httpd.py serving a directory on 127.0.0.1 for the
-- duration of a spec; stop it (and reap it) afterwards.
local proc = require "drv.proc"
local fs = require "drv.fs"

local M = {}
M.__index = M

--- Serve `dir`; returns a server with `url(path)`, `stats()` and `stop()`.
function M.start(dir)
  local portfile = os.tmpname()
  local p = assert(proc.spawn({ "sh", "-c", 'exec python3 "$0" "$1" > "$2"', "spec/support/httpd.py", dir, portfile },
                              { stderr = "inherit" }))
  local port
  for _ = 1, 1200 do -- python starts slowly under software emulation
    port = (fs.read(portfile) or ""):match("^(%d+)\n")
    if port then break end
    require("drv.sys").sleep(0.025)
  end
  os.remove(portfile)
  assert(port, "the test HTTP server did not start")
  return setmetatable({ process = p, port = tonumber(port), dir = dir }, M)
end

function M:url(path)
  return ("http://127.0.0.1:%d/%s"):format(self.port, path)
end

--- Bytes sent per request path so far.
function M:stats()
  local tmp = os.tmpname()
  local ok = require("drv.fetch").get(self:url("stats"), tmp, { quiet = true, retries = 0 })
  assert(ok, "cannot read the server's stats")
  local text = fs.read(tmp)
  os.remove(tmp)
  local stats = {}
  for path, n in text:gmatch('"([^"]+)": (%d+)') do stats[path] = tonumber(n) end
  return stats
end

function M:stop()
  if self.process then
    self.process:kill("KILL")
    self.process:wait()
    self.process = nil
  end
end

return M
