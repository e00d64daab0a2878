"""Packed checkpoint format: exact round trips, encoding choices, validation, size accounting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autocompress.compression import huffman, packing
from autocompress.compression.packing import (
    MAGIC,
    QuantizedTensor,
    pack_state,
    packed_size,
    read_header,
    unpack_state,
)


def _sparse_codes(
    rng: np.random.Generator, shape: tuple[int, ...], bits: int, sparsity: float
) -> np.ndarray:
    q = (1 << (bits - 1)) - 1
    codes = rng.integers(-q, q + 1, size=shape)
    codes[codes == 0] = 1
    codes[rng.random(shape) < sparsity] = 0
    return codes.astype(np.int8)


def _laplace_codes(rng: np.random.Generator, size: int, bits: int, sparsity: float) -> np.ndarray:
    q = (1 << (bits - 1)) - 1
    codes = np.clip(np.round(rng.laplace(0.0, q / 10, size)), -q, q).astype(np.int8)
    codes[codes == 0] = 1
    codes[rng.random(size) < sparsity] = 0
    return codes


def _qt(codes: np.ndarray, bits: int, rng: np.random.Generator) -> QuantizedTensor:
    return QuantizedTensor(codes, bits, rng.random(codes.shape[0]).astype(np.float32) + 0.01)


def _entry(data: bytes, name: str) -> dict:
    header, _ = read_header(data)
    return next(e for e in header["t"] if e["n"] == name)


def _assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name, x in a.items():
        y = b[name]
        if isinstance(x, QuantizedTensor):
            assert isinstance(y, QuantizedTensor)
            assert y.bits == x.bits
            assert y.codes.dtype == x.codes.dtype and y.codes.shape == x.codes.shape
            assert np.array_equal(y.codes, x.codes)
            assert y.scales.dtype == np.float32 and np.array_equal(y.scales, x.scales)
        else:
            assert y.dtype == x.dtype and y.shape == x.shape
            assert np.array_equal(y, x)


@pytest.mark.parametrize("huff", [True, False])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("bits", range(2, 9))
def test_round_trip_mixed_state(bits: int, sparsity: float, huff: bool) -> None:
    rng = np.random.default_rng(bits * 100 + int(sparsity * 10))
    tensors = {
        "conv.weight": _qt(_sparse_codes(rng, (16, 8, 3, 3), bits, sparsity), bits, rng),
        "conv.bias": rng.standard_normal(16).astype(np.float32),
        "bn.running_var": rng.random(16).astype(np.float32),
        "fc.weight": _qt(_sparse_codes(rng, (10, 300), bits, sparsity), bits, rng),
        "fc.bias": np.zeros(10, dtype=np.float32),
    }
    meta = {"model": "tiny", "bits": bits, "sparsity": sparsity, "layers": ["conv", "fc"]}
    data = pack_state(tensors, metadata=meta, huffman=huff)
    assert data[:4] == MAGIC
    out, meta_out = unpack_state(data)
    _assert_same(tensors, out)
    assert meta_out == meta


def test_dtypes_shapes_and_empty_tensors() -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "f64": rng.standard_normal((3, 2)),
        "i64": np.arange(5, dtype=np.int64),
        "flag": np.array([True, False]),
        "scalar": np.float32(1.5) * np.ones((), dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "q32": QuantizedTensor(np.array([[1, -3], [0, 2]], dtype=np.int32), 3, np.ones(2)),
        "q_empty": QuantizedTensor(np.zeros((0, 3), dtype=np.int8), 4, np.zeros(0)),
    }
    out, meta = unpack_state(pack_state(tensors))
    _assert_same(tensors, out)
    assert meta == {}


def test_dequantize_broadcasts_scales_on_axis_0() -> None:
    codes = np.arange(-3, 3, dtype=np.int8).reshape(2, 3, 1)
    qt = QuantizedTensor(codes, 3, np.array([0.5, 2.0], dtype=np.float32))
    w = qt.dequantize()
    assert w.dtype == np.float32
    assert np.array_equal(w[0, :, 0], np.array([-1.5, -1.0, -0.5], dtype=np.float32))
    assert np.array_equal(w[1, :, 0], np.array([0.0, 2.0, 4.0], dtype=np.float32))


def test_single_symbol_stream() -> None:
    rng = np.random.default_rng(1)
    qt = _qt(np.full((32, 64), 3, dtype=np.int8), 4, rng)  # one distinct non-zero value
    data = pack_state({"w": qt})
    entry = _entry(data, "w")
    assert "ib" not in entry and len(entry["st"][0]) == 2  # dense, Huffman-coded
    assert entry["st"][0][0] == (32 * 64 + 7) // 8  # one bit per code
    out, _ = unpack_state(data)
    assert np.array_equal(out["w"].codes, qt.codes)


def test_huffman_beats_bit_packing_on_skewed_codes() -> None:
    rng = np.random.default_rng(2)
    codes = _laplace_codes(rng, 64 * 2048, 8, 0.8).reshape(64, 2048)
    tensors = {"w": _qt(codes, 8, rng)}
    coded, plain = pack_state(tensors, huffman=True), pack_state(tensors, huffman=False)
    assert len(coded) < len(plain)
    assert all(len(s) == 1 for s in _entry(plain, "w")["st"])  # no tables without Huffman
    _assert_same(tensors, unpack_state(coded)[0])
    _assert_same(tensors, unpack_state(plain)[0])


def test_relative_index_fillers() -> None:
    skips = np.array([0, 9, 3])
    idx, vals = packing._sparse_streams(skips, 2, np.array([5, 6, 7]), 0)
    assert idx.tolist() == [0, 3, 3, 1, 3]  # two fillers (3, 0) cover the 9-zero gap
    assert vals.tolist() == [5, 0, 0, 6, 7]  # the fillers carry the zero symbol
    positions = np.cumsum(idx.astype(np.int64) + 1) - 1
    assert positions[vals != 0].tolist() == [0, 10, 14]


@pytest.mark.parametrize("huff", [True, False])
def test_fillers_appear_and_decode_in_packed_tensor(huff: bool) -> None:
    rng = np.random.default_rng(3)
    codes = np.zeros((8, 4096), dtype=np.int8)
    flat = codes.reshape(-1)
    dense_run = np.arange(0, 20000, 2)  # mostly gaps of 1 -> a small index width wins
    flat[dense_run] = rng.integers(1, 8, dense_run.size)
    flat[[25000, 31000, 32767]] = [-7, 5, 1]  # a few gaps far beyond 2**b - 1
    qt = _qt(codes, 4, rng)
    data = pack_state({"w": qt}, huffman=huff)
    entry = _entry(data, "w")
    nnz = int(np.count_nonzero(codes))
    assert "ib" in entry and (1 << entry["ib"]) - 1 < 5000
    assert entry["ne"] > nnz  # filler entries were emitted
    out, _ = unpack_state(data)
    assert np.array_equal(out["w"].codes, codes)


@pytest.mark.parametrize("huff", [True, False])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.7, 0.98])
def test_dense_vs_sparse_choice_picks_the_smaller(
    monkeypatch: pytest.MonkeyPatch, sparsity: float, huff: bool
) -> None:
    rng = np.random.default_rng(int(sparsity * 100))
    tensors = {"w": _qt(_laplace_codes(rng, 32 * 512, 6, sparsity).reshape(32, 512), 6, rng)}
    auto = len(pack_state(tensors, huffman=huff))
    sizes = {}
    for only in ("dense", "sparse"):
        monkeypatch.setattr(packing, "_ENCODINGS", (only,))
        data = pack_state(tensors, huffman=huff)
        assert ("ib" in _entry(data, "w")) == (only == "sparse")
        _assert_same(tensors, unpack_state(data)[0])
        sizes[only] = len(data)
    assert auto == min(sizes.values())
    if sparsity == 0.0:
        assert sizes["dense"] < sizes["sparse"]
    if sparsity == 0.98:
        assert sizes["sparse"] < sizes["dense"]


def test_packed_size_matches_file_and_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    tensors = {
        "a.weight": _qt(_sparse_codes(rng, (12, 40), 5, 0.6), 5, rng),
        "a.bias": rng.standard_normal(12).astype(np.float32),
    }
    meta = {"note": "x" * 50}
    path = tmp_path / "model.acpk"
    path.write_bytes(data := pack_state(tensors, metadata=meta))
    written = len(data)
    assert written == path.stat().st_size
    assert packed_size(tensors, metadata=meta) == written
    assert packed_size(tensors) < written  # metadata bytes are counted too
    out, meta_out = unpack_state(path.read_bytes())
    _assert_same(tensors, out)
    assert meta_out == meta


@pytest.mark.parametrize("huff", [True, False])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.999])
def test_packed_size_without_encoding_is_exact(huff: bool, sparsity: float) -> None:
    """The search's size (histograms only) is the byte count of the encoded file, for dense,
    sparse, Huffman-coded and bit-packed streams of every bit-width."""
    rng = np.random.default_rng(11)
    tensors = {
        f"l{b}.weight": _qt(_sparse_codes(rng, (8, 3, 7, 5), b, sparsity), b, rng)
        for b in range(2, 9)
    }
    tensors["bias"] = rng.standard_normal(8).astype(np.float32)
    tensors["scalar"] = np.array(3, dtype=np.int64)
    meta = {"policy": {"x": 1}}
    assert packed_size(tensors, metadata=meta, huffman=huff) == len(
        pack_state(tensors, metadata=meta, huffman=huff)
    )


def test_large_tensor_across_decoder_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huffman, "_READ_CHUNK", 1 << 14)
    rng = np.random.default_rng(6)
    tensors = {"w": _qt(_laplace_codes(rng, 256 * 1024, 4, 0.5).reshape(256, 1024), 4, rng)}
    _assert_same(tensors, unpack_state(pack_state(tensors))[0])


@pytest.mark.parametrize(
    ("tensor", "pattern"),
    [
        (QuantizedTensor(np.zeros((2, 2), np.int8), 1, np.ones(2)), "bits"),
        (QuantizedTensor(np.zeros((2, 2), np.int8), 9, np.ones(2)), "bits"),
        (QuantizedTensor(np.full((2, 2), 8, np.int8), 4, np.ones(2)), r"outside \[-7, 7\]"),
        (QuantizedTensor(np.full((2, 2), -2, np.int8), 2, np.ones(2)), r"outside \[-1, 1\]"),
        (QuantizedTensor(np.zeros((2, 2), np.int8), 4, np.ones(3)), "scales"),
        (QuantizedTensor(np.zeros((2, 2), np.float32), 4, np.ones(2)), "integers"),
    ],
)
def test_validation_errors_name_the_tensor(tensor: QuantizedTensor, pattern: str) -> None:
    with pytest.raises(ValueError, match=r"layer1\.conv\.weight") as info:
        pack_state({"layer1.conv.weight": tensor})
    assert info.match(pattern)


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="JSON"):
        pack_state({"b": np.ones(2)}, metadata={"x": object()})
    with pytest.raises(ValueError, match="obj"):
        pack_state({"obj": np.array(["a", "b"])})
    data = pack_state({"b": np.ones(3, dtype=np.float32)})
    with pytest.raises(ValueError, match="magic"):
        unpack_state(b"XXXX" + data[4:])
    with pytest.raises(ValueError, match="truncated|size mismatch"):
        unpack_state(data[:-1])
    with pytest.raises(ValueError, match="size mismatch"):
        unpack_state(data + b"\0")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("density", [0.02, 0.3, 0.9])
def test_sparse_float_arrays_pack_exactly_and_only_when_smaller(dtype, density):
    rng = np.random.default_rng(3)
    arr = rng.standard_normal((40, 3, 3, 3)).astype(dtype)
    arr[rng.random(arr.shape) > density] = 0
    arr.flat[-1] = 0  # trailing zeros need no filler
    arr.flat[3] = -0.0  # a signed zero is kept bit for bit
    data = pack_state({"w": arr})
    assert len(data) == packed_size({"w": arr})
    out, _ = unpack_state(data)
    assert out["w"].dtype == arr.dtype and out["w"].tobytes() == arr.tobytes()
    kind = read_header(data)[0]["t"][0]["k"]
    assert kind == ("sf" if density < 0.5 else "raw")
    if kind == "sf":
        assert len(data) < len(pack_state({"w": np.ones_like(arr)}))


def test_long_zero_runs_in_a_sparse_float_array_use_fillers():
    arr = np.zeros(100_000, np.float32)
    arr[[5, 70_000, 99_999]] = [1.5, -2.0, 3.25]
    data = pack_state({"w": arr}, huffman=False)
    assert len(data) == packed_size({"w": arr}, huffman=False) < 200
    assert np.array_equal(unpack_state(data)[0]["w"], arr)


def test_fp16_scales_take_two_bytes_and_float32_ones_stay_exact() -> None:
    """The quantiser's scales are FP16 values, stored in 2 bytes each; scales that are not
    (a hand-made tensor, or one below FP16's range) keep 4 bytes, and both round-trip exactly."""
    import torch

    from autocompress.compression.quantizers import quantize_weight

    rng = np.random.default_rng(3)
    codes = _sparse_codes(rng, (16, 30), 4, 0.0)
    exact = rng.uniform(0.01, 0.1, 16).astype(np.float16).astype(np.float32)
    half = QuantizedTensor(codes, 4, exact)
    full = QuantizedTensor(codes, 4, exact + np.float32(1e-7))
    assert packed_size({"w": full}) - packed_size({"w": half}) > 16  # 32 B less, header + key
    for qt in (half, full):
        out, _ = unpack_state(pack_state({"w": qt}))
        assert out["w"].scales.dtype == np.float32 and np.array_equal(out["w"].scales, qt.scales)
    w = torch.randn(8, 20)
    w[0] *= 1e-9  # a scale below FP16's smallest number stays float32
    _, scales = quantize_weight(w, 4)
    s = scales.numpy()
    assert np.array_equal(s[1:].astype(np.float16).astype(np.float32), s[1:]) and s[0] > 0
