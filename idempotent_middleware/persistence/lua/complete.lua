-- Store the completed record unless another owner holds the key (fencing).
-- KEYS[1] record key; ARGV[1] owner token (16 bytes at offset 3 of the record);
-- ARGV[2] completed record; ARGV[3] time to live in milliseconds.
-- A missing key means the lease ran out and nobody claimed it since: storing is still safe.
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 3, 18) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
