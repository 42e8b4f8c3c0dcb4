-- Compilers, make and package tools replaced by traps: programs of the same names,
-- first on PATH, that note each run and fail. A run that must not compile (a
-- cache hit, a start after a reboot into a kernel built ahead) is given that
-- PATH; the runs noted say whether anything was compiled.
local fs = require "drv.fs"

local M = {}

--- What a build runs by name: make, the compilers (ccache's links reach them
-- through PATH too), the assembler and linker.
M.BUILD = { "make", "gmake", "cc", "gcc", "gcc-12", "x86_64-linux-gnu-gcc", "x86_64-linux-gnu-gcc-12", "cc1", "as",
            "ld", "clang", "ccache" }

--- Traps named `names` in `dir`/bin (made afresh), each noting "NAME ARGS" in `dir`/runs.
-- Returns the PATH with them first, and a function that gives the runs noted.
function M.set(dir, names)
  assert(fs.remove(dir, { recursive = true, missing_ok = true }))
  assert(fs.mkdir(dir .. "/bin"))
  for _, name in ipairs(names) do
    assert(fs.write(dir .. "/bin/" .. name, ('#!/bin/sh\necho "%s $*" >> %s/runs\nexit 1\n'):format(name, dir),
      { mode = 493 }))
  end
  local function runs()
    local list = {}
    for line in (fs.read(dir .. "/runs") or ""):gmatch("[^\n]+") do list[#list + 1] = line end
    return list
  end
  return dir .. "/bin:" .. os.getenv("PATH"), runs
end

return M
