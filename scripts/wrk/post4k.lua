-- wrk script: POST /post with a 4 KiB text/plain body of words.
local words = {"hello", "world", "distributed", "systems", "are", "awesome", "go", "rust",
  "memory", "mapped", "replica", "leader", "count", "words", "fast", "exact"}
local parts, len, i = {}, 0, 0
while len < 4096 - 12 do
  local w = words[(i * 7) % #words + 1] .. i % 97
  parts[#parts + 1] = w
  len = len + #w + 1
  i = i + 1
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "text/plain"
wrk.body = table.concat(parts, " ")
-- The word count, printed once so the caller can turn req/s into words/s.
io.stderr:write("words_per_request=" .. #parts .. "\n")
