"""The packed on-disk checkpoint (Deep Compression style, Han et al. 2016) and the model size.

Layout of a packed file::

    b"ACPK" | version (u8) | header length (u32, little endian) | header | payloads

The header is zlib-compressed JSON ``{"meta": <user metadata>, "t": [entry, ...]}``, one entry per
tensor in the original order.  Payloads follow in the same order, back to back:

* plain arrays (``"k": "raw"``): the exact little-endian bytes of the array (shape, dtype kept);
  a float array that is mostly zeros (``"k": "sf"``) is stored as the relative indices of its
  non-zeros (one stream, coded like a quantised tensor's) and their values, when smaller;
* quantised tensors (``"k": "q"``; ``"qk"`` names a non-symmetric kind, ``"ns"`` a scale
  count other than one per output channel): float32 scales (or the k-means codebook), then one
  stream for a ``"dense"`` encoding (every code) or two for ``"sparse"`` (relative indices,
  then values).
  Sparse entries are (gap, value) pairs: skip ``gap`` zeros, then emit ``value``; a gap above
  ``2**b - 1`` becomes filler entries ``(2**b - 1, 0)`` that each cover ``2**b`` positions.
  Codes are offset to non-negative symbols (by ``2**(bits-1) - 1`` for symmetric codes,
  ``2**bits - 1`` for asymmetric ones, 0 for k-means indices).  Each stream is Huffman-coded
  (its table stored in the header as one base-36 code-length digit per symbol) or bit-packed at a
  fixed width (``b`` for indices, ``bits`` for values); the index width ``b``, the dense/sparse
  choice and the per-stream coding are picked to minimise the size, and recorded.

:func:`packed_size` is the project's one definition of model size: every byte a loader reads.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .huffman import HuffmanTable, code_lengths, decode, encode, pack_fixed, unpack_fixed

MAGIC = b"ACPK"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sBI")
_MAX_INDEX_BITS = 16  # relative-index widths tried: 1..16
_MAX_HUFFMAN_ALPHABET = 1 << 12  # larger alphabets are always bit-packed
_ENCODINGS = ("dense", "sparse")  # candidate encodings of quantised tensors (tests narrow it)


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A weight stored as integer codes, of one of three kinds:

    * ``symmetric``: ``codes * scales`` with codes in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``;
    * ``asymmetric``: ``codes * scales`` with codes relative to the zero point, in
      ``[-(2**bits - 1), 2**bits - 1]``;
    * ``kmeans``: ``codebook[codes - 1]`` and 0 where ``codes == 0``, with ``scales`` holding the
      codebook (at most ``2**bits`` shared weights), codes in ``[0, len(scales)]``.

    For the integer kinds ``scales`` (float32) has one entry per output channel (axis 0), or a
    single one for a per-tensor scale.
    """

    codes: np.ndarray
    bits: int
    scales: np.ndarray
    kind: str = "symmetric"

    def __post_init__(self) -> None:
        object.__setattr__(self, "codes", np.asarray(self.codes))
        object.__setattr__(self, "scales", np.asarray(self.scales, dtype=np.float32))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def offset(self) -> int:
        """The stored symbol of code 0 (symbols are ``codes + offset``, non-negative)."""
        return {"symmetric": self.qmax, "asymmetric": (1 << self.bits) - 1}.get(self.kind, 0)

    @property
    def alphabet(self) -> int:
        """Number of distinct symbols a code of this kind and width may take."""
        return (1 << self.bits) + 1 if self.kind == "kmeans" else 2 * self.offset + 1

    def dequantize(self) -> np.ndarray:
        """The float32 weight."""
        if self.kind == "kmeans":
            return np.concatenate([np.zeros(1, np.float32), self.scales])[self.codes]
        view = (-1,) + (1,) * (self.codes.ndim - 1)
        return self.codes.astype(np.float32) * self.scales.reshape(view)

    def validate(self, name: str = "<tensor>") -> None:
        """Raise ``ValueError`` naming ``name`` if bits, codes or scales are inconsistent."""
        bits, codes, scales = self.bits, self.codes, self.scales
        if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 2 <= bits <= 8:
            raise ValueError(f"tensor {name!r}: bits must be an integer in 2..8, got {bits!r}")
        if self.kind not in ("symmetric", "asymmetric", "kmeans"):
            raise ValueError(f"tensor {name!r}: unknown quantised kind {self.kind!r}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"tensor {name!r}: codes must be integers, got dtype {codes.dtype}")
        if codes.ndim == 0:
            raise ValueError(f"tensor {name!r}: codes must have at least one dimension")
        lo, hi = -self.offset, self.alphabet - 1 - self.offset
        if self.kind == "kmeans":
            hi = len(scales)
        if codes.size and (int(codes.min()) < lo or int(codes.max()) > hi):
            raise ValueError(
                f"tensor {name!r}: codes span [{int(codes.min())}, {int(codes.max())}], "
                f"outside [{lo}, {hi}] for {bits}-bit {self.kind}"
            )
        if self.kind == "kmeans":
            if scales.ndim != 1 or not 1 <= len(scales) <= 1 << bits:
                raise ValueError(
                    f"tensor {name!r}: the codebook must hold 1..{1 << bits} values, "
                    f"got shape {scales.shape}"
                )
        elif scales.ndim != 1 or scales.shape[0] not in (1, codes.shape[0]):
            raise ValueError(
                f"tensor {name!r}: scales must have shape ({codes.shape[0]},) (one per output "
                f"channel) or (1,), got {scales.shape}"
            )


# ----------------------------------------------------------------------------------- streams


def _stream_plan(hist: np.ndarray, width: int, huffman: bool) -> tuple[int, np.ndarray | None]:
    """Estimated bytes (payload + table text) and Huffman lengths (None: bit-pack at width)."""
    count = int(hist.sum())
    fixed = (count * width + 7) // 8
    if not huffman or count == 0 or hist.size > _MAX_HUFFMAN_ALPHABET:
        return fixed, None
    lengths = code_lengths(hist)
    table = HuffmanTable(lengths)
    cost = (table.encoded_bits(hist) + 7) // 8 + len(table.to_string())
    return (cost, lengths) if cost < fixed else (fixed, None)


def _stream(
    symbols: np.ndarray | None, hist: np.ndarray, width: int, lengths: np.ndarray | None
) -> tuple[bytes | int, list[Any]]:
    """A stream's payload and its header spec ``[bytes, table?]``; with ``symbols`` None, the
    payload's exact length instead, from the symbol histogram (no encoding)."""
    spec = [] if lengths is None else [HuffmanTable(lengths).to_string()]
    if symbols is None:
        n = int(hist.sum()) * width if lengths is None else HuffmanTable(lengths).encoded_bits(hist)
        return (n + 7) // 8, [(n + 7) // 8, *spec]
    data = (
        pack_fixed(symbols, width) if lengths is None else encode(symbols, HuffmanTable(lengths))[0]
    )
    return data, [len(data), *spec]


def _decode_stream(data: bytes, spec: list[Any], width: int, count: int) -> np.ndarray:
    if len(spec) > 1:
        return decode(data, HuffmanTable.from_string(spec[1]), count)
    return unpack_fixed(data, width, count)


# --------------------------------------------------------------------------------- quantised


def _sparse_streams(
    skips: np.ndarray, b: int, values: np.ndarray, filler: int
) -> tuple[np.ndarray, np.ndarray]:
    """Relative-index symbols at width ``b`` and the values of the non-zeros, fillers included
    (a filler carries ``filler``, the symbol of a zero)."""
    slots = np.cumsum((skips >> b) + 1) - 1  # entry of each real non-zero
    idx = np.full(int(slots[-1]) + 1 if slots.size else 0, (1 << b) - 1, dtype=np.uint32)
    idx[slots] = skips & ((1 << b) - 1)
    vals = np.full(idx.size, filler, dtype=values.dtype)
    vals[slots] = values
    return idx, vals


def _index_plans(skips: np.ndarray, huffman: bool):
    """For each relative-index width ``b``: (b, index-stream cost, Huffman lengths, index
    histogram, filler count) of a sparse encoding of the non-zeros separated by ``skips``."""
    uniq, counts = np.unique(skips, return_counts=True)
    top_b = min(_MAX_INDEX_BITS, max(1, int(uniq[-1]).bit_length() if uniq.size else 1))
    for b in range(1, top_b + 1):
        fillers = int(np.dot(counts, uniq >> b))
        idx_hist = np.bincount(uniq & ((1 << b) - 1), weights=counts, minlength=1 << b)
        idx_hist = idx_hist.astype(np.int64)
        idx_hist[-1] += fillers
        idx_cost, idx_lens = _stream_plan(idx_hist, b, huffman)
        yield b, idx_cost, idx_lens, idx_hist, fillers


def _choose_encoding(
    value_hist: np.ndarray, skips: np.ndarray, q: int, bits: int, huffman: bool
) -> tuple[int, list[np.ndarray | None], list[np.ndarray]]:
    """Index width ``b`` (0 = dense), per-stream Huffman lengths and per-stream symbol
    histograms of the smallest encoding (``q``: the symbol of a zero code; ``bits``: the fixed
    width of a value symbol)."""
    best_cost, lens = _stream_plan(value_hist, bits, huffman)
    best: tuple[int, list[np.ndarray | None], list[np.ndarray]] = (0, [lens], [value_hist])
    if "dense" not in _ENCODINGS:
        best_cost = np.inf
    if "sparse" not in _ENCODINGS:
        return best
    nz_hist = value_hist.copy()
    nz_hist[q] = 0
    for b, idx_cost, idx_lens, idx_hist, fillers in _index_plans(skips, huffman):
        val_hist = nz_hist.copy()
        val_hist[q] += fillers
        val_cost, val_lens = _stream_plan(val_hist, bits, huffman)
        cost = idx_cost + val_cost + 12  # ~12 more header bytes for the extra fields
        if cost < best_cost:
            best_cost, best = cost, (b, [idx_lens, val_lens], [idx_hist, val_hist])
    return best


def _fits_half(values: np.ndarray) -> bool:
    """Whether float ``values`` are all finite FP16 numbers (stored in 2 bytes, exactly)."""
    v = np.asarray(values, dtype=np.float32)
    with np.errstate(over="ignore"):
        h = v.astype(np.float16)
    return bool(np.isfinite(h).all() and (h.astype(np.float32) == v).all())


def _pack_quantized(
    name: str, qt: QuantizedTensor, huffman: bool, encode: bool = True
) -> tuple[dict, list[bytes | int]]:
    """Header entry and payload chunks; with ``encode=False`` each stream's chunk is only its
    exact length in bytes (the header is the same: it records lengths, not contents)."""
    qt.validate(name)
    q, bits = qt.offset, (qt.alphabet - 1).bit_length()  # zero symbol, value width
    flat = qt.codes.ravel()
    symbols = (flat.astype(np.int32) + q).astype(np.uint16)
    positions = np.flatnonzero(flat)
    skips = np.diff(positions, prepend=-1) - 1  # zeros before each non-zero
    value_hist = np.bincount(symbols, minlength=qt.alphabet)
    b, plans, hists = _choose_encoding(value_hist, skips, q, bits, huffman)
    entry: dict[str, Any] = {"n": name, "k": "q", "s": list(qt.shape), "b": int(qt.bits)}
    entry["cd"] = np.dtype(qt.codes.dtype).str
    if qt.kind != "symmetric":
        entry["qk"] = qt.kind
    if qt.kind == "kmeans" or len(qt.scales) != qt.shape[0]:
        entry["ns"] = len(qt.scales)
    sd = "<f2" if _fits_half(qt.scales) else "<f4"  # the quantiser's scales are FP16 values
    if sd != "<f4":
        entry["sd"] = sd
    chunks: list[bytes | int] = [np.ascontiguousarray(qt.scales, dtype=sd).tobytes()]
    widths = [bits] if b == 0 else [b, bits]
    if b != 0:
        entry.update(ib=b, ne=int(hists[0].sum()))
    streams: list[np.ndarray | None] = [None] * len(widths)
    if encode:
        streams = [symbols] if b == 0 else list(_sparse_streams(skips, b, symbols[positions], q))
    entry["st"] = []
    for sym, width, lengths, hist in zip(streams, widths, plans, hists, strict=True):
        chunk, spec = _stream(sym, hist, width, lengths)
        entry["st"].append(spec)
        chunks.append(chunk)
    return entry, chunks


def _take(data: bytes, offset: int, n: int, name: str) -> tuple[bytes, int]:
    """The ``n`` payload bytes at ``offset`` and the offset after them."""
    if offset + n > len(data):
        raise ValueError(f"tensor {name!r}: packed data truncated")
    return data[offset : offset + n], offset + n


def _scatter(idx: np.ndarray, values: np.ndarray, size: int, dtype, name: str) -> np.ndarray:
    """``size`` zeros of ``dtype`` with ``values`` where the relative indices ``idx`` put them."""
    pos = np.cumsum(idx.astype(np.int64) + 1) - 1
    if pos.size and pos[-1] >= size:
        raise ValueError(f"tensor {name!r}: relative indices run past the tensor end")
    out = np.zeros(size, dtype=dtype)
    out[pos] = values
    return out


def _read_array(data: bytes, dtype: np.dtype, count: int, offset: int) -> np.ndarray:
    """A native-endian copy of ``count`` items of ``dtype`` at ``offset``."""
    if offset + count * dtype.itemsize > len(data):
        raise ValueError("packed data truncated")
    if count == 0:
        return np.zeros(0, dtype=dtype.newbyteorder("="))
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _unpack_quantized(entry: dict, data: bytes, offset: int) -> tuple[QuantizedTensor, int]:
    shape, kind = tuple(entry["s"]), entry.get("qk", "symmetric")
    proto = QuantizedTensor(np.zeros(1, np.int8), int(entry["b"]), np.ones(1), kind)
    q, bits = proto.offset, (proto.alphabet - 1).bit_length()
    size = int(np.prod(shape, dtype=np.int64))
    nscales = int(entry.get("ns", shape[0]))
    sd = np.dtype(entry.get("sd", "<f4"))
    scales = _read_array(data, sd, nscales, offset).astype(np.float32)
    offset += sd.itemsize * nscales
    streams = []
    for spec in entry["st"]:
        chunk, offset = _take(data, offset, spec[0], entry["n"])
        streams.append(chunk)
    codes_dtype = np.dtype(entry["cd"]).newbyteorder("=")
    if "ib" not in entry:
        sym = _decode_stream(streams[0], entry["st"][0], bits, size)
        codes = (sym.astype(np.int32) - q).astype(codes_dtype)
    else:
        count = int(entry["ne"])
        idx = _decode_stream(streams[0], entry["st"][0], int(entry["ib"]), count)
        vals = _decode_stream(streams[1], entry["st"][1], bits, count)
        codes = _scatter(idx, vals.astype(np.int32) - q, size, codes_dtype, entry["n"])
    return QuantizedTensor(codes.reshape(shape), proto.bits, scales, kind), offset


# -------------------------------------------------------------------------------- public API


def _pack_raw(
    name: str, value: Any, huffman: bool = True, encode: bool = True
) -> tuple[dict, list[bytes | int]]:
    """A plain array: its exact bytes, or — for a float array that is mostly zeros (a pruned
    float or FP16 layer) — relative indices of the non-zeros (Huffman-coded or bit-packed, as
    for quantised tensors) and their values, whichever is smaller."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "biufc":
        raise ValueError(f"tensor {name!r}: unsupported dtype {arr.dtype} (numeric arrays only)")
    shape = list(arr.shape)  # before ascontiguousarray, which turns 0-d into 1-d
    dtype = arr.dtype.newbyteorder("<")
    entry: dict[str, Any] = {"n": name, "k": "raw", "s": shape, "d": dtype.str}
    sparse = _sparse_float_plan(arr, huffman) if arr.dtype.kind == "f" and arr.size else None
    if sparse is not None:
        return _pack_sparse_float(entry, arr, sparse, encode)
    return entry, [np.ascontiguousarray(arr, dtype=dtype).tobytes() if encode else arr.nbytes]


def _sparse_float_plan(arr: np.ndarray, huffman: bool):
    """(b, Huffman lengths, index histogram, skips) of the cheapest sparse encoding of a float
    array, or None when storing it densely is smaller."""
    positions = _float_nonzero(arr)
    if positions.size > arr.size // 2:  # not sparse enough to ever pay
        return None
    skips = np.diff(positions, prepend=-1) - 1
    best, best_cost = None, arr.nbytes - 16  # the extra header fields cost ~16 bytes
    for b, idx_cost, lens, hist, fillers in _index_plans(skips, huffman):
        cost = idx_cost + (positions.size + fillers) * arr.itemsize
        if cost < best_cost:
            best, best_cost = (b, lens, hist, skips), cost
    return best


def _float_nonzero(arr: np.ndarray) -> np.ndarray:
    """Positions of the entries that are not +0.0 (by bit pattern: -0.0 is kept, exactly)."""
    flat = np.ascontiguousarray(arr).ravel()
    return np.flatnonzero(flat.view(np.dtype(f"u{flat.itemsize}")))


def _pack_sparse_float(entry: dict, arr: np.ndarray, plan, encode: bool):
    b, lens, hist, skips = plan
    count = int(hist.sum())  # non-zeros and fillers
    entry.update(k="sf", ib=b, ne=count)
    idx, vals = None, None
    if encode:
        nonzero = np.ascontiguousarray(arr).ravel()[_float_nonzero(arr)]
        idx, vals = _sparse_streams(skips, b, nonzero.astype(arr.dtype.newbyteorder("<")), 0)
    chunk, spec = _stream(idx, hist, b, lens)
    entry["st"] = [spec]
    return entry, [chunk, count * arr.itemsize if vals is None else vals.tobytes()]


def _unpack_sparse_float(entry: dict, data: bytes, offset: int) -> tuple[np.ndarray, int]:
    shape, dtype, count = tuple(entry["s"]), np.dtype(entry["d"]), int(entry["ne"])
    spec = entry["st"][0]
    chunk, offset = _take(data, offset, spec[0], entry["n"])
    idx = _decode_stream(chunk, spec, int(entry["ib"]), count)
    vals = _read_array(data, dtype, count, offset)
    size = int(np.prod(shape, dtype=np.int64))
    out = _scatter(idx, vals, size, dtype.newbyteorder("="), entry["n"])
    return out.reshape(shape), offset + count * dtype.itemsize


def _layout(
    tensors: Mapping[str, np.ndarray | QuantizedTensor],
    metadata: dict | None,
    huffman: bool,
    encode: bool,
) -> tuple[bytes, list[bytes | int]]:
    """Prefix + header, and the payload chunks (or, without ``encode``, their lengths)."""
    entries: list[dict] = []
    payload: list[bytes | int] = []
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise ValueError(f"tensor names must be strings, got {name!r}")
        if isinstance(value, QuantizedTensor):
            entry, chunks = _pack_quantized(name, value, huffman, encode)
        else:
            entry, chunks = _pack_raw(name, value, huffman, encode)
        entries.append(entry)
        payload.extend(chunks)
    try:
        text = json.dumps({"meta": metadata or {}, "t": entries}, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata is not JSON-serialisable: {exc}") from exc
    header = zlib.compress(text.encode("utf-8"), 9)
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header, payload


def pack_state(
    tensors: Mapping[str, np.ndarray | QuantizedTensor],
    *,
    metadata: dict | None = None,
    huffman: bool = True,
) -> bytes:
    """Serialise named arrays and quantised tensors (plus JSON ``metadata``) to packed bytes."""
    head, payload = _layout(tensors, metadata, huffman, encode=True)
    return b"".join([head, *payload])


def read_header(data: bytes) -> tuple[dict, int]:
    """The decoded JSON header of packed bytes and the offset where payloads start."""
    if len(data) < _PREFIX.size:
        raise ValueError("not a packed checkpoint: too short")
    magic, version, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"not a packed checkpoint: bad magic {magic!r}")
    if version != FORMAT_VERSION:
        raise ValueError(f"unsupported packed format version {version}")
    start = _PREFIX.size + hlen
    try:
        header = json.loads(zlib.decompress(data[_PREFIX.size : start]).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"corrupt packed header: {exc}") from exc
    return header, start


def unpack_state(data: bytes) -> tuple[dict[str, np.ndarray | QuantizedTensor], dict]:
    """Exact inverse of :func:`pack_state`: (tensors in the original order, metadata)."""
    header, offset = read_header(data)
    out: dict[str, np.ndarray | QuantizedTensor] = {}
    for entry in header["t"]:
        if entry["k"] == "q":
            out[entry["n"]], offset = _unpack_quantized(entry, data, offset)
        elif entry["k"] == "sf":
            out[entry["n"]], offset = _unpack_sparse_float(entry, data, offset)
        else:
            dtype = np.dtype(entry["d"])
            count = int(np.prod(entry["s"], dtype=np.int64))
            out[entry["n"]] = _read_array(data, dtype, count, offset).reshape(tuple(entry["s"]))
            offset += count * dtype.itemsize
    if offset != len(data):
        raise ValueError(f"packed data size mismatch: payloads end at {offset}, got {len(data)}")
    return out, header["meta"]


def packed_size(
    tensors: Mapping[str, np.ndarray | QuantizedTensor],
    *,
    huffman: bool = True,
    metadata: dict | None = None,
) -> int:
    """Bytes of the packed checkpoint, the one definition of model size: exactly
    ``len(pack_state(...))``, computed from symbol histograms without encoding any stream."""
    head, payload = _layout(tensors, metadata, huffman, encode=False)
    return len(head) + sum(c if isinstance(c, int) else len(c) for c in payload)
