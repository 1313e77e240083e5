"""The materialized config cache in Redis: its key names and value format.

The config builder writes, the gateway reads; both use this module so the format has one
definition. `relayconfig:<public_key>` holds

    <rev> "\n" <trusted relay keys, comma-separated> "\n" <zstd frame of the document JSON>

(the document compressed as Sentry stores its configs). The two plain header lines let
the gateway answer `unchanged` and check an external relay's access without touching the
document, and it decompresses a document only when it splices one into a response, so a
relay that already holds the current revision costs no decompression at all. A disabled
key is stored too (rev "", document `{"disabled":true}`), so it is a hit.
`relayconfig:__global__` holds the global config the same way.
`relayauth:<relay id>` (plain JSON) holds what the gateway needs to authenticate a relay.
"""

from __future__ import annotations

import zstandard

KEY_PREFIX = "relayconfig:"
# relayauth:<relay id> -> JSON {"relayId", "publicKey", "internal", "banned", "trusted", ...},
# kept by the org access actor so the gateway authenticates without a NATS hop.
RELAY_AUTH_PREFIX = "relayauth:"
GLOBAL_KEY = KEY_PREFIX + "__global__"
DISABLED_BODY = b'{"disabled":true}'

_compressor = zstandard.ZstdCompressor(level=3)
_decompressor = zstandard.ZstdDecompressor()


class CachedConfig:
    """One cache entry; `body` (the document JSON) is decompressed on first use."""

    __slots__ = ("rev", "trusted_relays", "_body", "_frame")

    def __init__(self, rev: str, trusted_relays: tuple[str, ...], body: bytes | None = None,
                 frame: bytes | None = None) -> None:
        self.rev = rev
        self.trusted_relays = trusted_relays
        self._body = body
        self._frame = frame

    @property
    def disabled(self) -> bool:
        return not self.rev

    @property
    def body(self) -> bytes:
        """The document JSON; raises zstandard.ZstdError for a corrupt entry."""
        if self._body is None:
            self._body = _decompressor.decompress(self._frame or b"")
        return self._body

    def use_body(self, body: bytes) -> None:
        """Adopt an already-decompressed body of the same revision."""
        self._body = body


def cache_key(public_key: str) -> str:
    return KEY_PREFIX + public_key


def encode_entry(rev: str, trusted_relays: list[str] | tuple[str, ...], body: bytes) -> bytes:
    return f"{rev}\n{','.join(trusted_relays)}\n".encode() + _compressor.compress(body)


def decode_entry(value: bytes) -> CachedConfig:
    """Read the header lines; raises ValueError for a value that is not an entry."""
    rev, trusted, frame = value.split(b"\n", 2)
    if not frame.startswith(b"\x28\xb5\x2f\xfd"):  # the zstd frame magic number
        raise ValueError("not a relayctl cache entry")
    relays = tuple(trusted.decode().split(",")) if trusted else ()
    return CachedConfig(rev.decode(), relays, frame=frame)


DISABLED_ENTRY = encode_entry("", (), DISABLED_BODY)
