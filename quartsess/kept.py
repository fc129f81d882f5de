"""Decrypted payloads kept by their ciphertext, so an unchanged row is not decrypted again."""

from __future__ import annotations

import threading

# At most this many bytes of ciphertext and plaintext together (about 10,000 small
# sessions), each entry at most a sixteenth.
OPENED_BYTES_KEPT = 4 * 1024 * 1024
_ENTRY_OVERHEAD = 120  # two bytes objects and a dict slot, roughly


class KeptPlaintexts:
    """Plaintexts by their ciphertext, the least recently used dropped first, within
    ``budget`` bytes (each entry at most a sixteenth of it). Safe to share between threads.
    bytes are not tracked by the garbage collector, so this adds nothing to its walks."""

    def __init__(self, budget: int = OPENED_BYTES_KEPT) -> None:
        self.budget = budget
        self.size = 0  # bytes held, by _entry_size
        self._entries: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def get(self, ciphertext: bytes) -> bytes | None:
        if type(ciphertext) is not bytes:
            return None
        with self._lock:
            plaintext = self._entries.pop(ciphertext, None)
            if plaintext is not None:
                self._entries[ciphertext] = plaintext  # now the most recently used
        return plaintext

    def put(self, ciphertext: bytes, plaintext: bytes) -> None:
        size = _entry_size(ciphertext, plaintext)
        if type(ciphertext) is not bytes or size > self.budget // 16:
            return
        with self._lock:
            entries = self._entries
            if ciphertext in entries:
                return
            while entries and self.size + size > self.budget:
                oldest = next(iter(entries))
                self.size -= _entry_size(oldest, entries.pop(oldest))
            entries[ciphertext] = plaintext
            self.size += size

    def forget(self, ciphertext: bytes) -> None:
        if type(ciphertext) is not bytes:
            return
        with self._lock:
            plaintext = self._entries.pop(ciphertext, None)
            if plaintext is not None:
                self.size -= _entry_size(ciphertext, plaintext)

    def __contains__(self, ciphertext: object) -> bool:
        return type(ciphertext) is bytes and ciphertext in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def _entry_size(ciphertext: bytes, plaintext: bytes) -> int:
    return len(ciphertext) + len(plaintext) + _ENTRY_OVERHEAD
