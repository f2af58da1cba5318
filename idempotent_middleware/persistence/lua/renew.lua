-- Push the lease of an in-progress record forward, only for its owner.
-- KEYS[1] record key; ARGV[1] owner token; ARGV[2] new lease in milliseconds.
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 3, 18) == ARGV[1] and string.sub(current, 2, 2) == 'I' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
