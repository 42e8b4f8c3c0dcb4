-- Module signing in specs: test keys made with openssl, as an operator makes
-- them (doc/secure-boot.md), and copies of the fixture modules `make fixtures`
-- built to sign.
local M = {}

local sh = require "spec.support.sh"
local fs = require "drv.fs"

M.KVER = (function() -- the newest kernel with its signer: the one the fixtures are built for
  local installed = require("spec.support.kernel").installed
  for i = #installed, 1, -1 do
    if fs.exists("/lib/modules/" .. installed[i] .. "/build/scripts/sign-file") then return installed[i] end
  end
end)()

M.FIXTURES = "build/fixtures/built/sim-ofed/src"

--- A new RSA key and self-signed code-signing certificate `name` in `dir`:
-- `{ key = dir/name.key, cert = dir/name.crt (PEM), der = dir/name.der }`.
-- `o.subject` sets the whole subject ("/O=…/CN=…").
function M.keypair(dir, name, o)
  o = o or {}
  local file = dir .. "/" .. name:gsub("%W+", "-")
  local k = { key = file .. ".key", cert = file .. ".crt", der = file .. ".der" }
  local res = sh.run(("(openssl req -new -x509 -newkey rsa:2048 -nodes -days 3650 -keyout %s -out %s -subj %s "
                      .. "-addext extendedKeyUsage=codeSigning && openssl x509 -in %s -outform DER -out %s)")
    :format(sh.quote(k.key), sh.quote(k.cert), sh.quote(o.subject or "/CN=" .. name), sh.quote(k.cert), sh.quote(k.der)))
  assert(res.status == 0, res.stderr)
  return k
end

--- Copies of fixture modules (`names`) in `dir`: `{ { name, path, sha256 }... }`.
function M.modules(dir, names)
  local mods = {}
  for _, n in ipairs(names) do
    local path = ("%s/%s.ko"):format(dir, n)
    assert(fs.copy(("%s/%s/%s.ko"):format(M.FIXTURES, n, n), path))
    mods[#mods + 1] = { name = n, path = path, sha256 = assert(fs.sha256(path)) }
  end
  return mods
end

return M
