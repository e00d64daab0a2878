"""Canonical Huffman coding and fixed-width bit packing: exact round trips and code properties."""

from __future__ import annotations

import numpy as np
import pytest

from autocompress.compression import huffman
from autocompress.compression.huffman import (
    MAX_CODE_LEN,
    HuffmanTable,
    code_lengths,
    decode,
    encode,
    pack_fixed,
    unpack_fixed,
)


def _kraft(lengths: np.ndarray) -> float:
    present = lengths[lengths > 0].astype(np.float64)
    return float(np.sum(2.0**-present))


@pytest.mark.parametrize(
    ("n", "alphabet"), [(1, 2), (7, 3), (1000, 2), (5000, 15), (20000, 255), (3000, 3000)]
)
def test_round_trip_random(n: int, alphabet: int) -> None:
    rng = np.random.default_rng(n + alphabet)
    symbols = rng.integers(0, alphabet, n)
    data, table = encode(symbols)
    assert np.array_equal(decode(data, table, n), symbols)


def test_round_trip_skewed_beats_fixed_width() -> None:
    rng = np.random.default_rng(1)
    symbols = np.minimum(rng.geometric(0.4, 200_000) - 1, 15)
    data, table = encode(symbols)
    assert np.array_equal(decode(data, table, symbols.size), symbols)
    assert len(data) < len(pack_fixed(symbols, 4))


def test_empty_input() -> None:
    data, table = encode(np.zeros(0, dtype=np.int64))
    assert data == b""
    assert decode(data, table, 0).size == 0
    assert table.to_string() == ""


def test_single_symbol_uses_one_bit_codes() -> None:
    symbols = np.full(1001, 7)
    data, table = encode(symbols)
    assert table.lengths[7] == 1 and int(table.lengths.sum()) == 1
    assert len(data) == (1001 + 7) // 8
    assert np.array_equal(decode(data, table, 1001), symbols)


def test_code_lengths_are_length_limited_and_complete() -> None:
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    freqs = np.array(fib, dtype=np.int64)
    unlimited = code_lengths(freqs, max_len=64)
    assert unlimited.max() > MAX_CODE_LEN
    lengths = code_lengths(freqs)
    assert lengths.max() == MAX_CODE_LEN
    assert _kraft(lengths) == pytest.approx(1.0)
    # more frequent symbols never get longer codes
    order = np.argsort(-freqs, kind="stable")
    assert np.all(np.diff(lengths[order].astype(int)) >= 0)


def test_long_codes_round_trip() -> None:
    freqs = np.array([2**i for i in range(26)] + [1], dtype=np.int64)  # depth 26 unlimited
    rng = np.random.default_rng(2)
    counts = np.maximum(freqs // 64, 1)
    symbols = rng.permutation(np.repeat(np.arange(freqs.size), counts))
    table = HuffmanTable(code_lengths(freqs))
    assert table.max_len == MAX_CODE_LEN  # exercises the binary-search decoder
    data, _ = encode(symbols, table)
    assert np.array_equal(decode(data, table, symbols.size), symbols)


def test_dyadic_frequencies_give_optimal_lengths() -> None:
    lengths = code_lengths(np.array([8, 4, 2, 1, 1]))
    assert lengths.tolist() == [1, 2, 3, 4, 4]


def test_canonical_codes_are_prefix_free() -> None:
    rng = np.random.default_rng(3)
    table = HuffmanTable(code_lengths(rng.integers(0, 50, 64)))
    codes, lengths = table.codes(), table.lengths
    words = [format(int(c), f"0{n}b") for c, n in zip(codes, lengths, strict=True) if n]
    assert len(set(words)) == len(words)
    for a in words:
        assert not any(b != a and b.startswith(a) for b in words)
    assert _kraft(lengths) == pytest.approx(1.0)


def test_table_string_round_trip() -> None:
    table = HuffmanTable(code_lengths(np.array([0, 5, 0, 9, 1, 1, 0, 0])))
    text = table.to_string()
    assert len(text) == 6  # trailing absent symbols are dropped
    assert HuffmanTable.from_string(text) == HuffmanTable(table.lengths[:6])
    with pytest.raises(ValueError, match="invalid Huffman table string"):
        HuffmanTable.from_string("1!")


def test_fixed_length_codes_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uniform 256 symbols -> 8-bit codes that never self-synchronise; small chunks."""
    monkeypatch.setattr(huffman, "_READ_CHUNK", 1024)
    monkeypatch.setattr(huffman, "_WRITE_CHUNK", 333)
    rng = np.random.default_rng(4)
    symbols = np.concatenate([np.arange(256), rng.integers(0, 256, 5000)])
    table = HuffmanTable(np.full(256, 8))
    data, _ = encode(symbols, table)
    assert np.array_equal(decode(data, table, symbols.size), symbols)
    skewed = np.minimum(rng.geometric(0.3, 20000) - 1, 40)
    data, table = encode(skewed)
    assert np.array_equal(decode(data, table, skewed.size), skewed)


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        encode(np.array([1, -1]))
    with pytest.raises(ValueError, match="must be integers"):
        encode(np.array([0.5, 1.0]))
    data, table = encode(np.arange(10))
    with pytest.raises(ValueError, match="too short"):
        decode(data[:1], table, 10)
    with pytest.raises(ValueError, match="does not code every symbol"):
        encode(np.array([0, 1, 2]), HuffmanTable(np.array([1, 1])))


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 7, 8, 11, 16, 24])
def test_fixed_width_round_trip(width: int) -> None:
    rng = np.random.default_rng(width)
    values = rng.integers(0, 1 << width, 3001)
    data = pack_fixed(values, width)
    assert len(data) == (3001 * width + 7) // 8
    assert np.array_equal(unpack_fixed(data, width, values.size), values)


def test_fixed_width_rejects_overflow() -> None:
    with pytest.raises(ValueError, match="do not fit in 2 bits"):
        pack_fixed(np.array([4]), 2)
    with pytest.raises(ValueError, match="fixed width must be"):
        pack_fixed(np.array([1]), 0)
