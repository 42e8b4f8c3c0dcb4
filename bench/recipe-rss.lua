--- bench/recipe-rss.lua OUT RECIPE [KEY=VALUE...]: run a recipe as
-- `drvrun RECIPE KEY=VALUE...` does, then write this process's peak resident
-- set size (VmHWM, in KiB) to OUT. Children (make, the compiler) are not
-- counted: they are not the runtime's cost.
local out, script = arg[1], arg[2]
if not out or not script then
  io.stderr:write("usage: drvrun bench/recipe-rss.lua OUT RECIPE [KEY=VALUE...]\n")
  os.exit(2)
end
local args = table.move(arg, 3, #arg, 1, {})
local chunk = require "drv.chunk"
local env = chunk.environment()
local recipe = assert(chunk.load(script, env))()
local code = require("drv.recipe").main(recipe, script, args, env)
local kb
for line in io.lines("/proc/self/status") do
  kb = kb or line:match("^VmHWM:%s*(%d+) kB")
end
local f = assert(io.open(out, "w"))
f:write(kb or "", "\n")
f:close()
os.exit(code)
