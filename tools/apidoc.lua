-- tools/apidoc.lua: write doc/api.md from the doc blocks in host/*.c (`/*** … */`)
-- and lib/lua/drv/*.lua (`--- …`), so the reference cannot drift from the code:
-- every function a C module registers, every `function M.x` of the library and
-- every `r:` method a recipe may call (drv.run's METHODS) must have one.
--   drvrun tools/apidoc.lua > doc/api.md
--   drvrun tools/apidoc.lua --check doc/api.md    (exit 1 when out of date or a function is undocumented)
local fs = require "drv.fs"

local function read(path) return assert(fs.read(path)) end

-- Split a block's lines into a description and its @tags.
local function parse_block(lines)
  local doc = { desc = {}, tags = {} }
  local current
  for _, line in ipairs(lines) do
    local tag, rest = line:match("^@(%S+)%s*(.*)$")
    if tag then
      current = { tag = tag, text = rest }
      table.insert(doc.tags, current)
    elseif current then
      current.text = current.text .. " " .. line
    else
      table.insert(doc.desc, line)
    end
  end
  return doc
end

-- Doc blocks of a C file: `/***` … `*/`.
local function c_blocks(text)
  local blocks = {}
  for body in text:gmatch("/%*%*%*(.-)%*/") do
    local lines = {}
    for line in body:gmatch("[^\n]+") do
      line = line:gsub("^%s*%*%s?", ""):gsub("%s+$", "")
      if line ~= "" then lines[#lines + 1] = line end
    end
    local doc = parse_block(lines)
    local params = {}
    for _, t in ipairs(doc.tags) do
      if t.tag == "function" then doc.name = t.text end
      local opt, pname = t.tag:match("^tparam(%[?o?p?t?%]?)$") and t.tag, t.text:match("^%S+%s+([%w_]+)")
      if opt and pname then params[#params + 1] = opt:find("opt") and "[" .. pname .. "]" or pname end
    end
    if doc.name then
      doc.name = doc.name .. "(" .. table.concat(params, ", ") .. ")"
      blocks[#blocks + 1] = doc
    end
  end
  return blocks
end

-- The names a C file registers with Lua (its luaL_Reg tables), metamethods left out.
local function c_registered(text)
  local names = {}
  for body in text:gmatch("luaL_Reg%s+[%w_]+%[%]%s*=%s*(%b{})") do
    for name in body:gmatch('{%s*"([%w_]+)"%s*,') do
      if not name:match("^__") then names[#names + 1] = name end
    end
  end
  return names
end

-- What `owner` (M, or State for drv.run's methods) defines in a Lua file: doc blocks (`---`
-- lines followed by a `function OWNER.x(…)` or `OWNER:x`), and the names defined without one.
local function lua_blocks(text, owner)
  local blocks, undocumented, pending = {}, {}, nil
  local pattern = "^function " .. owner .. "([.:])([%w_]+)(%b())"
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    local doc = line:match("^%-%-%-%s?(.*)$")
    local cont = line:match("^%-%-%s?(.*)$")
    local sep, name, params = line:match(pattern)
    if doc then
      pending = { doc }
    elseif pending and cont then
      pending[#pending + 1] = cont
    else
      if name and pending then
        local b = parse_block(pending)
        if sep == "." and owner ~= "M" then params = params:gsub("^%(_?,?%s*", "(") end -- State.fail(_, ...)
        b.name, b.key = name .. params, name
        blocks[#blocks + 1] = b
      elseif name then
        undocumented[#undocumented + 1] = name
      end
      pending = nil
    end
  end
  return blocks, undocumented
end

local LABELS = { tparam = "Parameter", treturn = "Returns", see = "See", usage = "Usage", param = "Parameter",
                 ["return"] = "Returns" }

local function render(out, module, blocks, intro, prefix)
  out[#out + 1] = ("## %s\n"):format(module)
  if intro then out[#out + 1] = intro .. "\n" end
  for _, b in ipairs(blocks) do
    out[#out + 1] = ("### `%s%s`\n"):format(prefix or "", b.name)
    if #b.desc > 0 then out[#out + 1] = table.concat(b.desc, " ") .. "\n" end
    for _, t in ipairs(b.tags) do
      local kind = t.tag:match("^(%a+)")
      if LABELS[kind] then
        local variant = t.tag:match("%[(.-)%]")
        local label = LABELS[kind] .. (variant == "opt" and " (optional)" or variant and (" (" .. variant .. ")") or "")
        out[#out + 1] = ("- %s: %s"):format(label, t.text)
      end
    end
    out[#out + 1] = ""
  end
end

-- The comment a file opens with: what the module is for.
local function intro_of(text, comment)
  local lines = {}
  for line in text:gmatch("[^\n]*") do
    local l = line:match(comment)
    if not l then break end
    local last = l:find("%*/%s*$")
    lines[#lines + 1] = l:gsub("%s*%*/%s*$", "")
    if last then break end
  end
  return (table.concat(lines, " "):gsub("%s+", " "):gsub("^[%w_]+%.c %- ", ""))
end

local missing = {} -- "file: name" of every function without a doc block

-- The C modules: files that open a Lua module (luaopen_drv_NAME), each registered name documented.
local function c_modules(out)
  for _, path in ipairs(fs.glob("host/*.c")) do
    local text = read(path)
    local module = text:match("int luaopen_drv_([%w_]+)%(")
    if module then
      local blocks, documented = c_blocks(text), {}
      for _, b in ipairs(blocks) do documented[b.name:match("([%w_]+)%(") or ""] = true end
      for _, name in ipairs(c_registered(text)) do
        if not documented[name] then missing[#missing + 1] = path .. ": " .. name end
      end
      render(out, "drv." .. module, blocks, intro_of(text, "^%s*/?%*+%s?(.*)$"))
    end
  end
end

-- The run object recipes get: drv.run's State methods a recipe may call (its METHODS), in that order.
local function run_methods(out)
  local text = read("lib/lua/drv/run.lua")
  local blocks = lua_blocks(text, "State")
  local by_key, ordered = {}, {}
  for _, b in ipairs(blocks) do by_key[b.key] = b end
  for _, name in ipairs(require("drv.run").METHODS) do
    if by_key[name] then ordered[#ordered + 1] = by_key[name] else missing[#missing + 1] = "r:" .. name end
  end
  render(out, "r: the run, for recipes (Run: methods)", ordered, "What a recipe's functions are handed "
         .. "(drv.run's facade): its read-only fields are `r.opt`, `r.kver`, `r.root`, `r.stack`, `r.sources`, "
         .. "`r.built`, `r.kept`, `r.requires` (doc/recipes.md); its methods are these.", "r:")
end

local function generate()
  local out = { "# drvrun API reference", "",
                "Generated by `tools/apidoc.lua` from the doc blocks in the sources; do not edit.",
                "Failures of the machine return `nil, message, errno`, the errno by its name (`\"ENOENT\"`);",
                "wrong arguments raise.", "" }
  c_modules(out)
  run_methods(out)
  for _, path in ipairs(fs.glob("lib/lua/drv/*.lua")) do
    local text = read(path)
    local blocks, undocumented = lua_blocks(text, "M")
    for _, name in ipairs(undocumented) do missing[#missing + 1] = path .. ": M." .. name end
    if #blocks > 0 then
      render(out, "drv." .. path:match("([%w_]+)%.lua$"), blocks, intro_of(text, "^%-%-%-?%s?(.*)$"))
    end
  end
  return table.concat(out, "\n")
end

local doc = generate()
if #missing > 0 then
  io.stderr:write("undocumented (a doc block above each, see doc/conventions.md):\n  ", table.concat(missing, "\n  "), "\n")
  os.exit(1)
end
if arg[1] == "--check" then
  if fs.read(arg[2]) ~= doc then
    io.stderr:write(arg[2], " is out of date: run `make doc` and commit it\n")
    os.exit(1)
  end
else
  io.write(doc)
end
