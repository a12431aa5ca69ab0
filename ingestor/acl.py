"""Minimal Redis ACL rules per role, for the configured key prefix (``toss-ctl acl``).

Each role gets only its keys (``~prefix:*``), the control channel, and the commands it sends.
"""

from __future__ import annotations

_COMMON = "+ping"
_ROLES = {
    "ingestor": (
        "+smembers +sadd +hset +hdel +expire +del +xadd +xinfo|stream +subscribe +unsubscribe"
    ),
    "ctl": (
        "+sadd +srem +smembers +scard +publish +hgetall +scan +exists +type +xinfo|stream "
        "+xinfo|groups +xrevrange +xrange +xlen +xread"
    ),
    "consumer": (
        "+xreadgroup +xack +xgroup|create +xgroup|delconsumer +xpending +xclaim +xinfo|groups "
        "+xinfo|consumers +xadd +hset +hget +expire +del +evalsha +eval +script|load +script|exists"
    ),
}
ROLES = tuple(_ROLES)


def rules(role: str, prefix: str) -> str:
    """The ACL SETUSER rule list (without user name and password) for ``role``."""
    return f"resetkeys resetchannels ~{prefix}:* &{prefix}:control -@all {_COMMON} {_ROLES[role]}"


def setuser_commands(prefix: str) -> list[str]:
    return [f"ACL SETUSER toss-{role} on >CHANGE-ME {rules(role, prefix)}" for role in ROLES]
