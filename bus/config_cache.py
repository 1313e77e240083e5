"""The materialized config cache in Redis: its key names and value format.

The config builder writes, the gateway reads; both use this module so the format has one
definition. `relayconfig:<public_key>` holds a zstd frame (as Sentry stores its configs)
of:

    <rev> "\\n" <trusted relay keys, comma-separated> "\\n" <config document JSON>

The two header lines let the gateway answer `unchanged` and check an external relay's
access without parsing the document, whose bytes are spliced into the response as they
are. A disabled key is stored too (rev "", document `{"disabled":true}`), so it is a hit.
`relayconfig:__global__` holds the global config the same way.
`relayauth:<relay id>` (plain JSON) holds what the gateway needs to authenticate a relay.
"""

from __future__ import annotations

from dataclasses import dataclass

import zstandard

KEY_PREFIX = "relayconfig:"
# relayauth:<relay id> -> JSON {"relayId", "publicKey", "internal", "banned", "trusted", ...},
# kept by the org access actor so the gateway authenticates without a NATS hop.
RELAY_AUTH_PREFIX = "relayauth:"
GLOBAL_KEY = KEY_PREFIX + "__global__"
DISABLED_BODY = b'{"disabled":true}'

_compressor = zstandard.ZstdCompressor(level=3)
_decompressor = zstandard.ZstdDecompressor()


@dataclass(frozen=True)
class CachedConfig:
    rev: str
    trusted_relays: tuple[str, ...]
    body: bytes  # the config document, JSON

    @property
    def disabled(self) -> bool:
        return not self.rev


def cache_key(public_key: str) -> str:
    return KEY_PREFIX + public_key


def encode_entry(rev: str, trusted_relays: list[str] | tuple[str, ...], body: bytes) -> bytes:
    header = f"{rev}\n{','.join(trusted_relays)}\n".encode()
    return _compressor.compress(header + body)


def decode_entry(value: bytes) -> CachedConfig:
    raw = _decompressor.decompress(value)
    rev, trusted, body = raw.split(b"\n", 2)
    relays = tuple(trusted.decode().split(",")) if trusted else ()
    return CachedConfig(rev.decode(), relays, body)


DISABLED_ENTRY = encode_entry("", (), DISABLED_BODY)
