-- Delete the record only for its owner; a stale owner must not free a newer owner's claim.
-- KEYS[1] record key; ARGV[1] owner token.
local current = redis.call('GET', KEYS[1])
if not current then
  return 1
end
if string.sub(current, 3, 18) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
