-- Renew an in-progress claim (contract C1): the record is rewritten, so the lease time inside
-- it moves with the TTL (a renewed claim must not read back as expired).
-- KEYS[1] record key; ARGV[1] owner token (16 bytes at offset 3 of the record);
-- ARGV[2] renewed in-progress record; ARGV[3] new lease in milliseconds.
-- Absent key: the lease ran out and nobody claimed it since, so the owner takes it back (the
-- script is atomic, NX only restates that). Another owner or a COMPLETED record: refuse.
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'NX')
  return 1
end
if string.sub(current, 3, 18) == ARGV[1] and string.sub(current, 2, 2) == 'I' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
