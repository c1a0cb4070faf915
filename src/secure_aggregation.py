"""Pairwise-masked sums per task group: the aggregator learns each group's sum, not one site's update.

Why it is built here and not taken from OpenFL 1.9: OpenFL's `secure_aggregation`
hands the aggregator every collaborator's private seed and key shares at setup
(openfl/utilities/secagg/bootstrap.py reconstructs them), so the aggregator can
remove each site's mask; and it masks one average over all collaborators, where
ours averages each task group over the sites that trained it (docs/privacy.md).

The scheme (Bonawitz et al. 2017, "Practical Secure Aggregation", without the
dropout recovery): every site holds an X25519 key pair and publishes the public
key. Two sites i < j derive the same secret by Diffie-Hellman; from it, per round,
group and component, HKDF-SHA256 derives an AES-256 key whose CTR keystream is a
mask m_ij of uniform 64-bit words. Site i sends
    encode(count_i * update_i) + sum_{j > i} m_ij - sum_{j < i} m_ij   (mod 2^64)
over the members of the group, so the masks cancel in the sum over all members
and every single message is uniformly random to anyone without the secrets.
Values travel as fixed-point integers (FRACTION_BITS fractional bits) because
masks only cancel exactly in integer arithmetic. A member that does not send
leaves its masks in the others' messages: the group's sum cannot be formed that
round (no dropout recovery; the aggregator keeps that group's previous value).

Everything here is numpy plus the `cryptography` package; no OpenFL.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FRACTION_BITS = 32  # fixed point: resolution 2.3e-10, range +-2^31 for a weighted sum
SCALE = float(2 ** FRACTION_BITS)
LIMIT = float(2 ** (63 - FRACTION_BITS))
CONTEXT = b"fedmtl secure aggregation v1"


class SecureAggregationError(ValueError):
    """A masked sum cannot be formed or a value does not fit the fixed-point range."""


@dataclass(frozen=True)
class SiteKey:
    """A site's X25519 key pair for mask agreement (not its TLS key)."""

    private: X25519PrivateKey

    @classmethod
    def generate(cls) -> "SiteKey":
        return cls(X25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> "SiteKey":
        """The key in `path` (raw 32 bytes, mode 0600), made on first use.

        Kept across restarts: a site that restarts mid-round must mask with the key
        the other sites already used."""
        path = Path(path)
        if path.exists():
            return cls(X25519PrivateKey.from_private_bytes(path.read_bytes()))
        key = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = key.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())
        partial = path.with_name(path.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(partial, path)
        return key

    @property
    def public_hex(self) -> str:
        return self.private.public_key().public_bytes(serialization.Encoding.Raw,
                                                      serialization.PublicFormat.Raw).hex()


def _pair_secret(key: SiteKey, peer_public_hex: str) -> bytes:
    return key.private.exchange(X25519PublicKey.from_public_bytes(bytes.fromhex(peer_public_hex)))


def mask_words(secret: bytes, stream: str, words: int) -> np.ndarray:
    """`words` uniform uint64 words from AES-256-CTR under HKDF(secret, stream)."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=CONTEXT + b"|" + stream.encode()).derive(secret)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * words)) + encryptor.finalize(), dtype=np.uint64)


def encode(vector: np.ndarray) -> np.ndarray:
    """float values -> fixed-point uint64 words (two's complement, so sums wrap mod 2^64)."""
    vector = np.asarray(vector, dtype=np.float64)
    if not np.all(np.isfinite(vector)):
        raise SecureAggregationError("a value to mask is NaN or infinite")
    peak = float(np.max(np.abs(vector))) if vector.size else 0.0
    if peak >= LIMIT:
        raise SecureAggregationError(f"a value to mask is {peak:.3g}, outside the fixed-point range "
                                     f"+-{LIMIT:.3g} ({FRACTION_BITS} fractional bits)")
    return np.round(vector * SCALE).astype(np.int64).view(np.uint64)


def decode(words: np.ndarray) -> np.ndarray:
    """fixed-point uint64 words -> float64 values."""
    return np.asarray(words, dtype=np.uint64).view(np.int64).astype(np.float64) / SCALE


def stream_name(federation: str, round_number: int, group: str, component: str) -> str:
    """What one mask covers: a fresh mask per federation, round, group and component."""
    return f"{federation}|round {round_number}|{group}|{component}"


def masked(vector: np.ndarray, site: str, key: SiteKey, members: dict, stream: str) -> np.ndarray:
    """encode(vector) plus this site's share of the pairwise masks among `members`.

    members: {site: public key hex} of everyone whose message enters this sum,
    this site included; its own entry must be its own public key."""
    if members.get(site) != key.public_hex:
        raise SecureAggregationError(f"{site} is not listed among the members {sorted(members)} with its own key")
    words = encode(vector)
    for peer, public_hex in members.items():
        if peer == site:
            continue
        mask = mask_words(_pair_secret(key, public_hex), stream, words.size)
        words = words + mask if site < peer else words - mask  # uint64: wraps mod 2^64
    return words


def unmasked_sum(messages: dict, members) -> np.ndarray:
    """The sum of the members' vectors from their masked messages ({site: words})."""
    missing = sorted(set(members) - set(messages))
    if missing:
        raise SecureAggregationError(f"no message from {missing}: their masks stay in the others' "
                                     "messages and the sum cannot be formed")
    sizes = {site: np.asarray(messages[site]).size for site in members}
    if len(set(sizes.values())) != 1:
        raise SecureAggregationError(f"messages differ in length: {sizes}")
    total = np.zeros(next(iter(sizes.values())), dtype=np.uint64)
    for site in members:
        total += np.asarray(messages[site], dtype=np.uint64)
    return decode(total)


def flatten(tensors: dict) -> np.ndarray:
    """One vector of a group's tensors in name order (the order every party uses)."""
    return np.concatenate([np.asarray(tensors[name], dtype=np.float64).ravel() for name in sorted(tensors)]) \
        if tensors else np.zeros(0)


def unflatten(vector: np.ndarray, shapes: dict) -> dict:
    """flatten's inverse for {name: shape}."""
    out, start = {}, 0
    for name in sorted(shapes):
        size = int(np.prod(shapes[name], dtype=np.int64))
        out[name] = vector[start:start + size].reshape(shapes[name])
        start += size
    if start != vector.size:
        raise SecureAggregationError(f"a sum of {vector.size} values does not fit tensors of {start} values")
    return out


def to_wire(words: np.ndarray) -> np.ndarray:
    """uint64 words as float32 pairs, bit for bit (OpenFL's pipeline carries float32 arrays)."""
    return np.ascontiguousarray(words, dtype=np.uint64).view(np.float32)


def from_wire(values: np.ndarray) -> np.ndarray:
    values = np.ascontiguousarray(values)
    if values.dtype != np.float32 or values.size % 2:
        raise SecureAggregationError(f"a masked message must be an even number of float32 words, "
                                     f"got {values.size} {values.dtype}")
    return values.view(np.uint64)
