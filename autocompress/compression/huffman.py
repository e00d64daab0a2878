"""Canonical Huffman coding of non-negative integer symbols, vectorised with numpy.

Code lengths come from a classic Huffman tree (``heapq``; the alphabet is small).  If the tree is
deeper than ``MAX_CODE_LEN`` (24) bits, the lengths are rebalanced with the heuristic of JPEG
(ITU T.81, Annex K.3 ``Adjust_BITS``): it keeps the Kraft sum equal to 1 and only lengthens rare
codes, so the result is a complete prefix code, near-optimal though not always optimal.  Codes are
then assigned canonically (ordered by length, then symbol), so a :class:`HuffmanTable` is fully
described by one code length per symbol.

Bits are written MSB first (``np.packbits`` of each code's bits).  Decoding is exact and vectorised
over all bit positions of a chunk: the code length starting at every bit gives a "next" pointer,
the stream is cut into small blocks, a backward pass finds where a code starting anywhere in a
block leaves it, a short loop over blocks finds the true code boundary entering each block, and
one walker per block marks the true code starts.  Python loops run over blocks and block offsets,
never over symbols. The same bit reader/writer packs at a fixed width (:func:`pack_fixed`).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

MAX_CODE_LEN = 24  # bits; a code plus a sub-byte shift must fit a 32-bit window
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"  # code length 0..24 -> one character
_WRITE_CHUNK = 1 << 21  # symbols per writer chunk (bounds temporary memory)
_READ_CHUNK = 1 << 23  # bits per decoder chunk
_BLOCK = 256  # bits per decoder block; a power of two larger than MAX_CODE_LEN
_LUT_MAX_LEN = 16  # use a 2**max_len lookup table up to this length, binary search above


def code_lengths(freqs: np.ndarray, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Huffman code length (uint8, 0 = symbol absent) per symbol for the given frequencies."""
    freqs = np.asarray(freqs, dtype=np.int64).ravel()
    if freqs.size and freqs.min() < 0:
        raise ValueError("frequencies must be non-negative")
    lengths = np.zeros(freqs.size, dtype=np.uint8)
    present = np.flatnonzero(freqs)
    k = present.size
    if k <= 1:  # none, or one symbol: a 1-bit code
        lengths[present] = 1
        return lengths
    if k > (1 << max_len):
        raise ValueError(f"{k} symbols cannot be coded in at most {max_len} bits")
    heap = [(int(f), i) for i, f in enumerate(freqs[present])]
    heapq.heapify(heap)
    parent = [0] * (2 * k - 1)
    node = k
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (w1 + w2, node))
        node += 1
    depth = [0] * (2 * k - 1)
    for i in range(2 * k - 3, -1, -1):  # parents always have larger ids than children
        depth[i] = depth[parent[i]] + 1
    leaf = np.array(depth[:k], dtype=np.int64)
    if leaf.max() > max_len:
        leaf = _limit_lengths(leaf, freqs[present], max_len)
    lengths[present] = leaf
    return lengths


def _limit_lengths(lengths: np.ndarray, freqs: np.ndarray, max_len: int) -> np.ndarray:
    """JPEG Annex K.3 rebalancing; shortest codes go to the most frequent symbols."""
    bl = np.bincount(lengths).tolist()
    for i in range(len(bl) - 1, max_len, -1):
        while bl[i] > 0:
            j = i - 2
            while bl[j] == 0:
                j -= 1
            bl[i] -= 2
            bl[i - 1] += 1
            bl[j + 1] += 2
            bl[j] -= 1
    new = np.repeat(np.arange(len(bl)), bl)  # ascending lengths, one per symbol
    order = np.lexsort((np.arange(freqs.size), -freqs))  # most frequent first
    out = np.empty_like(lengths)
    out[order] = new
    return out


@dataclass(frozen=True, eq=False)
class HuffmanTable:
    """Canonical Huffman code: ``lengths[s]`` is the code length of symbol ``s`` (0 = absent)."""

    lengths: np.ndarray

    def __post_init__(self) -> None:
        lengths = np.asarray(self.lengths, dtype=np.uint8).ravel()
        if lengths.size and int(lengths.max()) > MAX_CODE_LEN:
            raise ValueError(f"code lengths above {MAX_CODE_LEN} bits are not supported")
        object.__setattr__(self, "lengths", lengths)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HuffmanTable) and np.array_equal(self.lengths, other.lengths)

    __hash__ = None  # type: ignore[assignment]

    @property
    def num_symbols(self) -> int:
        """Alphabet size: one more than the largest coded symbol."""
        return int(self.lengths.size)

    @property
    def max_len(self) -> int:
        return int(self.lengths.max()) if self.lengths.size else 0

    def codes(self) -> np.ndarray:
        """Canonical code (uint32, right-aligned in ``lengths[s]`` bits) of every symbol."""
        codes = np.zeros(self.lengths.size, dtype=np.uint32)
        order = np.lexsort((np.arange(self.lengths.size), self.lengths))
        order = order[self.lengths[order] > 0]
        code, prev = 0, 0
        for s, n in zip(order.tolist(), self.lengths[order].tolist(), strict=True):
            code <<= n - prev
            codes[s] = code
            code, prev = code + 1, n
        return codes

    def encoded_bits(self, freqs: np.ndarray) -> int:
        """Bits needed to encode symbols with these frequencies (no padding)."""
        freqs = np.asarray(freqs, dtype=np.int64)
        return int(np.dot(freqs, self.lengths[: freqs.size].astype(np.int64)))

    def to_string(self) -> str:
        """Compact serialisation: one base-36 digit (the code length) per symbol."""
        n = int(np.flatnonzero(self.lengths)[-1]) + 1 if self.lengths.any() else 0
        return "".join(_DIGITS[v] for v in self.lengths[:n].tolist())

    @classmethod
    def from_string(cls, text: str) -> HuffmanTable:
        try:
            return cls(np.array([_DIGITS.index(c) for c in text], dtype=np.uint8))
        except ValueError as exc:
            raise ValueError(f"invalid Huffman table string {text[:40]!r}") from exc


def _write_bits(values: np.ndarray, lengths: np.ndarray | int) -> bytes:
    """Concatenate ``values[i]`` on ``lengths[i]`` bits (each <= 24), MSB first, zero padded."""
    n = values.size
    if np.ndim(lengths) == 0 and int(lengths) == 8:
        return values.astype(np.uint8).tobytes()
    lens = np.broadcast_to(np.asarray(lengths, dtype=np.int64), (n,))
    ends = np.cumsum(lens)
    bits = np.empty(int(ends[-1]) if n else 0, dtype=np.uint8)
    for i0 in range(0, n, _WRITE_CHUNK):  # one byte per bit, a chunk of symbols at a time
        ln, end = lens[i0 : i0 + _WRITE_CHUNK], ends[i0 : i0 + _WRITE_CHUNK]
        lo, hi = int(end[0] - ln[0]), int(end[-1])
        shift = np.repeat(end - lo, ln) - np.arange(1, hi - lo + 1)
        bits[lo:hi] = np.repeat(values[i0 : i0 + _WRITE_CHUNK].astype(np.uint32), ln) >> shift & 1
    return np.packbits(bits).tobytes()


def pack_fixed(values: np.ndarray, width: int) -> bytes:
    """Bit-pack non-negative integers on ``width`` bits each (1..24), MSB first."""
    if not 1 <= width <= MAX_CODE_LEN:
        raise ValueError(f"fixed width must be in 1..{MAX_CODE_LEN}, got {width}")
    values = np.asarray(values).ravel()
    if values.size and (values.min() < 0 or int(values.max()) >= 1 << width):
        raise ValueError(f"values do not fit in {width} bits")
    return _write_bits(values, width)


def unpack_fixed(data: bytes, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed` (uint32 result)."""
    if not 1 <= width <= MAX_CODE_LEN:
        raise ValueError(f"fixed width must be in 1..{MAX_CODE_LEN}, got {width}")
    if len(data) * 8 < count * width:
        raise ValueError(f"fixed-width stream too short: {len(data)} bytes for {count} values")
    if width == 8:
        return np.frombuffer(data, dtype=np.uint8, count=count).astype(np.uint32)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * width)
    weights = (1 << np.arange(width - 1, -1, -1)).astype(np.uint32)
    return bits.reshape(count, width).astype(np.uint32) @ weights


def encode(symbols: np.ndarray, table: HuffmanTable | None = None) -> tuple[bytes, HuffmanTable]:
    """Huffman-code ``symbols`` (non-negative ints, any shape, read flat).

    The table is built from the symbol frequencies unless given; it must then code every symbol.
    """
    symbols = np.asarray(symbols).ravel()
    if symbols.size and not np.issubdtype(symbols.dtype, np.integer):
        raise ValueError(f"symbols must be integers, got {symbols.dtype}")
    if symbols.size == 0:
        return b"", table if table is not None else HuffmanTable(np.zeros(0, np.uint8))
    if symbols.min() < 0:
        raise ValueError("symbols must be non-negative")
    freqs = np.bincount(symbols)
    if table is None:
        table = HuffmanTable(code_lengths(freqs))
    elif freqs.size > table.num_symbols or (table.lengths[: freqs.size][freqs > 0] == 0).any():
        raise ValueError("the Huffman table does not code every symbol present")
    return _write_bits(table.codes()[symbols], table.lengths[symbols]), table


class _Decoder:
    """Canonical decoding helpers: code length and symbol from a ``max_len``-bit peek."""

    def __init__(self, table: HuffmanTable) -> None:
        lengths = table.lengths.astype(np.int64)
        self.L = L = table.max_len
        order = np.lexsort((np.arange(lengths.size), lengths))
        self.sorted_syms = order[lengths[order] > 0]
        counts = np.bincount(lengths, minlength=L + 1)[1:]
        first_code = np.zeros(L, dtype=np.int64)
        for i in range(1, L):
            first_code[i] = (first_code[i - 1] + counts[i - 1]) << 1
        self.first_code = first_code
        self.first_index = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.limit = (first_code + counts) << (L - np.arange(1, L + 1))  # non-decreasing
        self.lut: tuple[np.ndarray, np.ndarray] | None = None
        if L <= _LUT_MAX_LEN:
            peeks = np.arange(1 << L, dtype=np.int64)
            self.lut = (self._lengths(peeks).astype(np.uint8), self._symbols(peeks))

    def _lengths(self, peek: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.limit, peek, side="right")
        return np.minimum(idx, self.L - 1) + 1

    def _symbols(self, peek: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        n = self._lengths(peek) if lengths is None else lengths
        idx = self.first_index[n - 1] + (peek >> (self.L - n)) - self.first_code[n - 1]
        return self.sorted_syms[np.clip(idx, 0, self.sorted_syms.size - 1)]

    def lengths(self, peek: np.ndarray) -> np.ndarray:
        return self.lut[0][peek] if self.lut is not None else self._lengths(peek.astype(np.int64))

    def symbols(self, peek: np.ndarray) -> np.ndarray:
        return self.lut[1][peek] if self.lut is not None else self._symbols(peek.astype(np.int64))


def decode(data: bytes, table: HuffmanTable, count: int) -> np.ndarray:
    """Decode ``count`` symbols; the dtype is the smallest unsigned type holding the alphabet."""
    dtype = np.min_scalar_type(max(table.num_symbols - 1, 0))
    if count == 0:
        return np.zeros(0, dtype=dtype)
    present = np.flatnonzero(table.lengths)
    if present.size == 0:
        raise ValueError("cannot decode symbols with an empty Huffman table")
    total_bits = len(data) * 8
    if present.size == 1:
        if total_bits < count:
            raise ValueError("Huffman stream too short")
        return np.full(count, present[0], dtype=dtype)
    dec = _Decoder(table)
    chunk = min(_READ_CHUNK, -(-total_bits // _BLOCK) * _BLOCK)
    pad = np.zeros((chunk + 64 + 7) // 8 + 8, dtype=np.uint8)  # zero bits past the end
    buf = np.concatenate([np.frombuffer(data, dtype=np.uint8), pad])
    out = np.empty(count, dtype=dtype)
    got, entry = 0, 0  # symbols decoded; first true code start of the current chunk
    for c0 in range(0, total_bits, chunk):
        if got >= count:
            break
        starts, entry, peek = _chunk_starts(buf, c0, chunk, entry - c0, dec)
        starts = starts[starts + c0 < total_bits][: count - got]
        out[got : got + starts.size] = dec.symbols(peek[starts])
        got += starts.size
        entry += c0
    if got < count:
        raise ValueError(f"Huffman stream too short: {got} of {count} symbols")
    return out


def _chunk_starts(
    buf: np.ndarray, c0: int, n: int, entry: int, dec: _Decoder
) -> tuple[np.ndarray, int, np.ndarray]:
    """Code starts (relative to bit ``c0``) in ``n`` bits, given the first true start ``entry``.

    Returns the starts, the first start at or after the chunk end (relative), and the peeks.
    """
    L = dec.L
    shifts = np.arange(8, dtype=np.uint32)
    b, i = buf.astype(np.uint32), np.arange(c0 >> 3, (c0 + n) >> 3)
    win = (b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]  # big-endian, per byte
    peek = ((win[:, None] << shifts) >> np.uint32(32 - L)).ravel()
    if L <= _LUT_MAX_LEN:
        peek = peek.astype(np.uint16)
    nxt = np.arange(n, dtype=np.int64) + dec.lengths(peek)  # relative next code start
    nb, sh, mask = n // _BLOCK, _BLOCK.bit_length() - 1, _BLOCK - 1
    nxt_t = nxt.reshape(nb, _BLOCK).T.copy()  # [offset, block]
    ends = (np.arange(nb, dtype=np.int64) + 1) << sh
    last = np.int64(nb - 1)
    exits = np.empty((_BLOCK, nb), dtype=np.int64)  # where a code starting here leaves the block
    flat = exits.ravel()
    for off in range(_BLOCK - 1, -1, -1):
        col = nxt_t[off]
        inside = col < ends
        later = flat[(col & mask) * nb + np.minimum(col >> sh, last)]
        exits[off] = np.where(inside, later, col)
    entries = np.empty(nb, dtype=np.int64)
    t = entry
    for j in range(nb):  # true code boundary entering each block
        entries[j] = t
        t = int(flat[(t & mask) * nb + (t >> sh)])
    marks = np.zeros(n, dtype=bool)
    pos, end = entries, ends
    while pos.size:  # one walker per block, on the true code boundaries
        marks[pos] = True
        pos = nxt[pos]
        keep = pos < end
        pos, end = pos[keep], end[keep]
    return np.flatnonzero(marks), t, peek
