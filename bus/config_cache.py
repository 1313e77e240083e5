"""The materialized config cache in Redis: its key names and value format.

The config builder writes, the gateway reads; both use this module so the format has one
definition. `relayconfig:<public_key>` holds

    <MAC> "\n" <rev> "\n" <trusted relay keys, comma-separated> "\n" <zstd frame of the document JSON>

(the document compressed as Sentry stores its configs). The plain header lines let the
gateway answer `unchanged` and check an external relay's access without touching the
document, and it decompresses a document only when it splices one into a response, so a
relay that already holds the current revision costs no decompression at all. A disabled
key of a project is stored too (rev "", document `{"disabled":true}`), so it is a hit; a
key nobody created is never stored (relays choose which keys they ask for: storing them
would let a relay grow Redis at will). `relayconfig:__global__` holds the global config
the same way. `relayauth:<relay id>` holds `<MAC> "\n" <JSON>`: what the gateway needs to
authenticate a relay, valid until the `expires` it carries.

The MAC. Anyone who can write to Redis must not be able to serve relays a config of their
own making or make a relay internal, so every value starts with a MAC (keyed BLAKE2b,
32 hex digits) over its Redis key name and the rest of the value. Its key is not in
Redis: `bus/cache_keys.py` keeps one per kind of entry in JetStream KV, readable only by
the role that writes the entries and by the gateways. A value whose MAC does not match
is treated as missing. What the MAC cannot stop: deleting entries (a miss: rebuilt or
asked over NATS), and putting back an older genuine value of the same key - for a config
until it next changes, for relay auth until that older value's `expires`.
"""

from __future__ import annotations

import hashlib
import hmac

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


# -- the MAC -------------------------------------------------------------------------------------

MAC_LEN = 32  # hex digits: a 128-bit BLAKE2b MAC


def _mac(key: bytes, name: str, payload: bytes | memoryview) -> bytes:
    h = hashlib.blake2b(name.encode(), key=key, digest_size=MAC_LEN // 2, person=b"relayctl-cache")
    h.update(b"\n")
    h.update(payload)
    return h.hexdigest().encode()


def seal(key: bytes, name: str, payload: bytes) -> bytes:
    """The value to store under `name`: `payload` behind its MAC line."""
    return _mac(key, name, payload) + b"\n" + payload


def verify(key: bytes, name: str, value: bytes) -> bool:
    """Whether `value`, read from `name`, was sealed with `key`."""
    if len(value) <= MAC_LEN or value[MAC_LEN:MAC_LEN + 1] != b"\n":
        return False
    return hmac.compare_digest(value[:MAC_LEN], _mac(key, name, memoryview(value)[MAC_LEN + 1:]))


def unseal(key: bytes, name: str, value: bytes) -> bytes | None:
    """The payload of a sealed value, or None when its MAC does not match."""
    return value[MAC_LEN + 1:] if verify(key, name, value) else None


# -- config entries ------------------------------------------------------------------------------

def encode_entry(rev: str, trusted_relays: list[str] | tuple[str, ...], body: bytes) -> bytes:
    """An entry's payload (`seal` it before storing)."""
    return f"{rev}\n{','.join(trusted_relays)}\n".encode() + _compressor.compress(body)


def decode_entry(value: bytes) -> CachedConfig:
    """Read the header lines of a sealed entry, without checking its MAC (`verify` does);
    raises ValueError for a value that is not an entry."""
    _mac_line, rev, trusted, frame = value.split(b"\n", 3)
    if not frame.startswith(b"\x28\xb5\x2f\xfd"):  # the zstd frame magic number
        raise ValueError("not a relayctl cache entry")
    relays = tuple(trusted.decode().split(",")) if trusted else ()
    return CachedConfig(rev.decode(), relays, frame=frame)


DISABLED_ENTRY = encode_entry("", (), DISABLED_BODY)  # a payload: sealed per key
