-- Delete a record for the operator (CLI invalidate): a completed one always, an in-progress
-- one only when forced, since its handler may still be running.
-- KEYS[1] record key; ARGV[1] "1" to force. Returns 1 deleted, 0 absent, -1 refused.
local current = redis.call('GET', KEYS[1])
if not current then
  return 0
end
if string.sub(current, 2, 2) == 'I' and ARGV[1] ~= '1' then
  return -1
end
redis.call('DEL', KEYS[1])
return 1
