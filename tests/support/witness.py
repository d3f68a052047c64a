"""The Redis witness the multi-process tests share: holders counted outside konductor.

:data:`ENTER` is a Lua script run atomically by Redis when a holder enters its
body: ``KEYS[1]`` (inside now) goes up by one, ``KEYS[2]`` keeps the highest
value ``KEYS[1]`` ever reached, and every further key (totals) goes up by one.
The holder decrements ``KEYS[1]`` when its body ends or is cancelled. A test
then checks the maximum against the permits.
"""

ENTER = """
local v = redis.call('INCR', KEYS[1])
local m = tonumber(redis.call('GET', KEYS[2]) or '0')
if v > m then redis.call('SET', KEYS[2], v) end
for i = 3, #KEYS do redis.call('INCR', KEYS[i]) end
return v
"""
