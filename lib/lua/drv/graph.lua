--- drv.graph: dependency levels of a module graph.
--
-- Modules of one level do not depend on each other, so a level can be loaded
-- (or unloaded) concurrently; levels run in order.
local M = {}

local function sorted(set)
  local list = {}
  for name in pairs(set) do list[#list + 1] = name end
  table.sort(list)
  return list
end

--- Split `nodes` into levels so that every node comes after all its edges.
-- @tparam table edges `{ [name] = { names it must come after... } }`; edges to
--   names outside `edges` are ignored
-- @treturn[1] table `{ {names...}, {names...}, ... }`, each level sorted
-- @treturn[2] nil, message naming a cycle
function M.levels(edges)
  local level, visiting = {}, {}
  local function depth(name, path)
    if level[name] then return level[name] end
    if visiting[name] then
      return nil, "dependency cycle: " .. table.concat(path, " -> ") .. " -> " .. name
    end
    visiting[name] = true
    path[#path + 1] = name
    local d = 1
    for _, dep in ipairs(edges[name]) do
      if edges[dep] then
        local dd, err = depth(dep, path)
        if not dd then return nil, err end
        if dd + 1 > d then d = dd + 1 end
      end
    end
    path[#path] = nil
    visiting[name] = nil
    level[name] = d
    return d
  end
  local out = {}
  for _, name in ipairs(sorted(edges)) do
    local d, err = depth(name, {})
    if not d then return nil, err end
    out[d] = out[d] or {}
    table.insert(out[d], name)
  end
  for _, names in ipairs(out) do table.sort(names) end
  return out
end

--- The heaviest chain each node heads: its weight plus the heaviest of those that wait for it.
-- @tparam table edges `{ [name] = { names it waits for... } }` (acyclic: levels' edges)
-- @tparam function weight `name -> number`
-- @treturn table `{ [name] = weight of the heaviest chain from it to a node nothing waits for }`
function M.chains(edges, weight)
  local waiting = {}
  for n, deps in pairs(edges) do
    for _, d in ipairs(deps) do
      waiting[d] = waiting[d] or {}
      table.insert(waiting[d], n)
    end
  end
  local memo = {}
  local function chain(n)
    if not memo[n] then
      local longest = 0
      for _, w in ipairs(waiting[n] or {}) do longest = math.max(longest, chain(w)) end
      memo[n] = weight(n) + longest
    end
    return memo[n]
  end
  for n in pairs(edges) do chain(n) end
  return memo
end

--- Flatten levels into one ordered list.
function M.flatten(levels)
  local list = {}
  for _, names in ipairs(levels) do
    for _, n in ipairs(names) do list[#list + 1] = n end
  end
  return list
end

--- The names in `start` and, transitively, everything that `holders_of` names for them.
-- @tparam table start list of names
-- @tparam function holders_of `name -> { names... }`
-- @treturn table set `{ [name] = true }`
function M.closure(start, holders_of)
  local set, queue = {}, {}
  for _, n in ipairs(start) do
    if not set[n] then set[n] = true; queue[#queue + 1] = n end
  end
  local i = 1
  while queue[i] do
    for _, h in ipairs(holders_of(queue[i])) do
      if not set[h] then set[h] = true; queue[#queue + 1] = h end
    end
    i = i + 1
  end
  return set
end

M.sorted = sorted

return M
