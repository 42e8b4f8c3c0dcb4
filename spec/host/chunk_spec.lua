local chunk = require "drv.chunk"
local fs = require "drv.fs"

describe("drv.chunk", function()
  local dir
  before_each(function() dir = assert(fs.tmpdir("chunk-spec")) end)
  after_each(function() fs.remove(dir, { recursive = true }) end)

  local function source(name, text)
    local path = dir .. "/" .. name
    assert(fs.write(path, text))
    return path
  end

  it("loads a file's text until it is compiled, then its compiled chunk, in the environment given", function()
    local path = source("m.lua", "return { key = k, n = 2 }\n")
    local fn, compiled = assert(chunk.load(path, { k = "text" }))
    assert.is_false(compiled)
    assert.same({ key = "text", n = 2 }, fn())
    assert.is_true(chunk.compile(path, "manifest"))
    assert.is_true(fs.exists(path .. "c"))
    fn, compiled = assert(chunk.load(path, { k = "chunk" }))
    assert.is_true(compiled)
    assert.same({ key = "chunk", n = 2 }, fn())
  end)

  it("reads the text again once it changed, never a stale chunk", function()
    local path = source("m.lua", "return 1\n")
    assert(chunk.compile(path))
    assert(fs.write(path, "return 22\n")) -- another size
    local fn, compiled = assert(chunk.load(path))
    assert.is_false(compiled)
    assert.equal(22, fn())
  end)

  it("names the chunk as asked in its messages", function()
    local path = source("m.lua", "\nerror('bad entry')\n")
    assert(chunk.compile(path, "manifest"))
    local ok, err = pcall(assert(chunk.load(path)))
    assert.is_false(ok)
    assert.matches("^manifest:2: bad entry", err)
  end)

  it("takes no binary chunk in place of a file's text", function()
    local path = source("m.lua", string.dump(function() return "binary" end))
    local fn, err = chunk.load(path)
    assert.is_nil(fn)
    assert.matches("attempt to load a binary chunk", err, nil, true)
  end)

  it("fails a missing or broken file with its name and the cause", function()
    local fn, err = chunk.load(dir .. "/none.lua")
    assert.is_nil(fn)
    assert.matches(dir .. "/none.lua", err, nil, true)
    assert.matches("No such file", err, nil, true)
    local ok, cerr = chunk.compile(source("bad.lua", "return {\n"))
    assert.is_nil(ok)
    assert.matches("bad.lua:2:", cerr, nil, true)
    assert.is_false(fs.exists(dir .. "/bad.luac"))
    assert.has_error(function() chunk.load(dir .. "/x.lua", "not a table") end)
  end)
end)
