"""The keys of the MACs that seal what Redis holds (bus/config_cache.py), kept in JetStream KV.

One bucket per kind of entry, each holding one random key under `key`:
`rc_relayauth_mac` (written by the org access actor, `orgs`) and `rc_config_mac` (written
by the config builder, `configs`). The writer creates the bucket and the key if they are
missing - whichever instance comes first; the others read its key - and the gateways may
only read them (bus/embedded.py NATS_ROLES). Redis never sees a key, so a Redis password
alone cannot forge an entry. The keys outlive restarts with the JetStream data; if one is
lost, a new one is made and entries sealed with the old key read as misses until they
are written again.
"""

from __future__ import annotations

import secrets
from typing import Any

from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError

from bus.eventstore import stream_replicas
from messages.subjects import CONFIG_MAC_BUCKET, RELAY_AUTH_MAC_BUCKET

__all__ = ["CONFIG_MAC_BUCKET", "KEY_NAME", "RELAY_AUTH_MAC_BUCKET", "reader_key", "writer_key"]
KEY_NAME = "key"


async def writer_key(nc: Any, bucket: str) -> bytes:
    """The bucket's key, made (with the bucket) if there is none yet."""
    js = nc.jetstream()
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        kv = await js.create_key_value(bucket=bucket, history=1, replicas=stream_replicas())
    try:
        return bytes((await kv.get(KEY_NAME)).value)
    except KeyNotFoundError:
        pass
    try:
        await kv.create(KEY_NAME, secrets.token_bytes(32))
    except KeyWrongLastSequenceError:
        pass  # another instance made it first: use theirs
    except NatsError as exc:  # the same, as some servers word it
        if "wrong last sequence" not in str(exc):
            raise
    return bytes((await kv.get(KEY_NAME)).value)


async def reader_key(nc: Any, bucket: str) -> bytes | None:
    """The bucket's key, or None while its writer has not made it yet."""
    try:
        kv = await nc.jetstream().key_value(bucket)
        return bytes((await kv.get(KEY_NAME)).value)
    except (BucketNotFoundError, KeyNotFoundError):
        return None
