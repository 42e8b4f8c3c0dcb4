local digests = require "drv.digests"
local fs = require "drv.fs"

describe("drv.digests", function()
  local dir, memo_file
  before_each(function()
    dir = assert(fs.tmpdir("digests"))
    memo_file = dir .. "/memo"
  end)
  after_each(function() fs.remove(dir, { recursive = true }) end)

  -- A memo whose files count as settled at once (the default waits 1 s).
  local function open()
    local memo = digests.open(memo_file)
    memo.settled = -60
    return memo
  end

  it("gives a file's sha256, and remembers it between runs", function()
    assert(fs.write(dir .. "/f", "hello"))
    local memo = open()
    assert.equal(fs.sha256(dir .. "/f"), memo:sha256(dir .. "/f"))
    assert.is_true(memo:save())
    assert.matches("^" .. fs.sha256(dir .. "/f") .. " %S+ " .. dir:gsub("%p", "%%%0") .. "/f\n$", fs.read(memo_file))
  end)

  it("does not read a file again while its stat is unchanged", function()
    assert(fs.write(dir .. "/f", "hello"))
    local memo = open()
    memo:sha256(dir .. "/f")
    assert(memo:save())
    -- Only the memo can answer this digest: the file's content is not read.
    local fake = ("0"):rep(64)
    assert(fs.write(memo_file, (assert(fs.read(memo_file)):gsub("^%x+", fake))))
    assert.equal(fake, open():sha256(dir .. "/f"))
  end)

  it("hashes a file again when it changed (a new file renamed over it, or written in place)", function()
    assert(fs.write(dir .. "/f", "hello"))
    local memo = open()
    memo:sha256(dir .. "/f")
    assert(memo:save())
    assert(fs.write(dir .. "/f", "world"))
    assert.equal(fs.sha256(dir .. "/f"), open():sha256(dir .. "/f"))
    local f = assert(io.open(dir .. "/f", "r+"))
    f:write("W")
    f:close()
    assert.equal(fs.sha256(dir .. "/f"), open():sha256(dir .. "/f"))
  end)

  it("does not remember a file that changed in the last seconds", function()
    assert(fs.write(dir .. "/f", "hello"))
    local memo = digests.open(memo_file)
    assert.equal(fs.sha256(dir .. "/f"), memo:sha256(dir .. "/f"))
    assert.is_true(memo:save())
    assert.is_nil(fs.read(memo_file))
  end)

  it("keeps the digests of earlier runs, saved with each new one, and drops those of files gone", function()
    for _, f in ipairs { "a", "b", "c" } do assert(fs.write(dir .. "/" .. f, f)) end
    local memo = open()
    memo:sha256(dir .. "/a")
    memo:sha256(dir .. "/b")
    assert(memo:save())
    assert(fs.remove(dir .. "/a"))
    memo = open() -- a later phase of the run may still look b up: it stays
    memo:sha256(dir .. "/c")
    assert(memo:save())
    local text = fs.read(memo_file)
    assert.is_nil(text:find(dir .. "/a", 1, true))
    assert.truthy(text:find(dir .. "/b\n", 1, true))
    assert.truthy(text:find(dir .. "/c\n", 1, true))
  end)

  it("finds a path's own line, not one whose path ends the same or has a space in it", function()
    local a, b, c = ("a"):rep(64), ("b"):rep(64), ("c"):rep(64)
    assert(fs.write(memo_file, ("%s 1:2 /x/f\n%s 3:4 /f\n%s 5:6 /y /f\n"):format(a, b, c)))
    local memo = digests.open(memo_file)
    assert.same({ sha = b, stamp = "3:4" }, memo:entry("/f"))
    assert.same({ sha = a, stamp = "1:2" }, memo:entry("/x/f"))
    assert.same({ sha = c, stamp = "5:6" }, memo:entry("/y /f"))
    assert.is_nil(memo:entry("f"))
  end)

  it("answers a missing file with the failure tuple, and ignores a damaged memo", function()
    assert.same({ nil, dir .. "/nope: No such file or directory", "ENOENT" }, { open():sha256(dir .. "/nope") })
    assert(fs.write(memo_file, "garbage\n\n" .. ("f"):rep(64) .. "\n"))
    assert(fs.write(dir .. "/f", "hello"))
    assert.equal(fs.sha256(dir .. "/f"), open():sha256(dir .. "/f"))
  end)
end)
