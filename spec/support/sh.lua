-- Run a shell command line in a spec and capture what it did.
-- (Specs only: drvrun itself never goes through a shell; see drv.proc.)
local M = {}

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  os.remove(path)
  return s
end

--- Single-quote a string for sh.
function M.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Run `cmdline` with sh; return { status = n, stdout = s, stderr = s }.
function M.run(cmdline)
  local out, err = os.tmpname(), os.tmpname()
  local ok, how, code = os.execute(("%s >%s 2>%s"):format(cmdline, out, err))
  local status = code
  if how == "signal" then status = 128 + code end
  if ok then status = 0 end
  return { status = status, stdout = slurp(out), stderr = slurp(err) }
end

--- Run the drvrun under test with quoted arguments.
function M.drvrun(...)
  local parts = { M.quote(assert(os.getenv("DRVRUN"), "DRVRUN is not set")) }
  for i = 1, select("#", ...) do parts[#parts + 1] = M.quote((select(i, ...))) end
  return M.run(table.concat(parts, " "))
end

--- Write `content` to a new temporary file; return its path.
function M.tmpfile(content, suffix)
  local path = os.tmpname() .. (suffix or "")
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  return path
end

return M
