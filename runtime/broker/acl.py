"""What a Redis ACL user needs to run the runtime: the commands it sends and the keys and channels
it touches, so an operator of a managed Redis can grant exactly that (README, "Running on a
managed Redis").

Every key and channel of a namespace starts with its prefix (:mod:`runtime.broker.keys`). The
commands are those of the Lua transitions (``rcall("...")`` in ``runtime/broker/scripts/``,
checked by a test) and those the Python code sends: the lean connection's handshake and script
calls, and redis-py's reads, pipelines, watches and subscriptions. A test runs a broad workload as
a user granted only these and fails on any refusal.
"""

from __future__ import annotations

# The Lua transitions' commands (run inside FCALL; Redis checks each against the user).
SCRIPT_COMMANDS = (
    "del", "exists", "get", "hdel", "hexists", "hget", "hgetall", "hincrby", "hlen", "hmget", "hset",
    "hsetnx", "incr", "incrby", "llen", "lpop", "lpush", "ltrim", "persist", "pexpire", "pexpireat", "pttl",
    "publish",
    "rpoplpush", "rpush", "sadd", "scard", "smembers", "srandmember", "srem", "set", "time", "xadd",
    "xrevrange", "zadd", "zcard", "zcount", "zpopmin", "zrange", "zrangebyscore", "zrem",
    "zremrangebyscore", "zscore",
)

# What the Python code sends itself: connecting, loading and calling the transitions, and the
# reads and watched writes of the admin API, statistics, recovery and the probes.
CLIENT_COMMANDS = (
    "auth", "hello", "select", "ping",
    "function|load", "fcall",
    "subscribe", "unsubscribe",
    "multi", "exec", "discard", "watch", "unwatch",
    "scan", "sscan", "zscan", "hkeys", "lrange",
    "xrange", "xread", "xinfo|stream", "zrevrange",
)

COMMANDS = tuple(sorted(set(SCRIPT_COMMANDS) | set(CLIENT_COMMANDS)))

# redis-py names its connections (CLIENT SETINFO) on Redis 7.2 and later and ignores a refusal;
# granting it keeps the ACL log quiet there. Redis 7.0 does not know the command (nor accepts it
# in an ACL rule), so it is not in COMMANDS.
NAMING_COMMAND = "client|setinfo"

_GLOB_SPECIALS = "*?[]\\"


def key_pattern(key_prefix: str) -> str:
    """The glob that matches every key and channel of the namespace (and nothing else)."""
    escaped = "".join(f"\\{ch}" if ch in _GLOB_SPECIALS else ch for ch in key_prefix)
    return f"{escaped}*"


def acl_rule(key_prefix: str, user: str, password: str) -> str:
    """An ``ACL SETUSER`` / aclfile line granting `user` the runtime's commands on its namespace."""
    pattern = key_pattern(key_prefix)
    commands = " ".join(f"+{command}" for command in COMMANDS)
    return f"user {user} on >{password} resetkeys ~{pattern} resetchannels &{pattern} -@all {commands}"
