--- Start and stop spec/support/httpd.py, the test HTTP(S) server, from specs.
--
-- @usage
-- local httpd = require "spec.support.httpd"
-- local server
-- setup(function() server = httpd.start(root) end)
-- teardown(function() server:stop() end)
-- local url = server:url("file.bin")   --> "http://127.0.0.1:PORT/file.bin"
local M = {}

local io, os, string = io, os, string
local assert, error, setmetatable, tonumber = assert, error, setmetatable, tonumber

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
M.script = here .. "httpd.py"

local function quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end
M.quote = quote

local Server = {}
Server.__index = Server

--- The URL of `path` (no leading slash) on this server.
function Server:url(path)
  return ("%s://127.0.0.1:%d/%s"):format(self.scheme, self.port, path or "")
end

--- Stop the server and reap it; safe to call twice.
function Server:stop()
  if not self.pipe then return end
  os.execute("kill " .. self.pid .. " 2>/dev/null")
  self.pipe:close()
  self.pipe = nil
end

--- Start the server on ROOT; opts.tls = { cert = PATH, key = PATH } serves https.
-- Raises when python3 or the script fails to start.
function M.start(root, opts)
  opts = opts or {}
  local cmd = "exec python3 " .. quote(M.script) .. " " .. quote(root)
  if opts.tls then
    cmd = cmd .. " --tls " .. quote(opts.tls.cert) .. " " .. quote(opts.tls.key)
  end
  local pipe = assert(io.popen(cmd, "r"))
  local port, pid = tonumber(pipe:read("l")), tonumber(pipe:read("l"))
  if not port or not pid then
    pipe:close()
    error("httpd.lua: cannot start " .. cmd, 2)
  end
  return setmetatable({ pipe = pipe, port = port, pid = pid,
                        scheme = opts.tls and "https" or "http" }, Server)
end

--- Requests for NAME and body bytes of NAME the server wrote, as two integers.
-- Read with python3's urllib, so a broken drv.fetch cannot hide a count.
local STATS_PY = "import ssl, sys, urllib.request as u; " ..
  "sys.stdout.write(u.urlopen(sys.argv[1], context=ssl._create_unverified_context()).read().decode())"

function Server:stats(name)
  local p = assert(io.popen("python3 -c " .. quote(STATS_PY) .. " " .. quote(self:url("stats/" .. name))))
  local out = p:read("a")
  p:close()
  local req, bytes = out:match("^(%d+) (%d+)")
  if not req then error("httpd.lua: bad stats reply: " .. string.format("%q", out), 2) end
  return tonumber(req), tonumber(bytes)
end

return M
