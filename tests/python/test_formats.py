"""Formats from Python: exact bits, decoding, NumPy conversion, errors, GPTQ, rate-distortion."""
import json
import pickle
import subprocess

import numpy as np
import pytest

import quantkit


def sqnr(w, q):
    return 10 * np.log10(np.sum(w.astype(np.float64) ** 2) / np.sum((w.astype(np.float64) - q) ** 2))


@pytest.fixture
def W():
    return np.random.default_rng(0).standard_normal((64, 256), dtype=np.float32)


def test_formats_lists_canonical_specs():
    specs = quantkit.formats()
    assert {"int4:g128", "q4_k", "nvfp4", "e8:b2", "tcq:b2"} <= set(specs)
    families = quantkit.format_families()
    assert sum(len(f["examples"]) for f in families) == len(specs)
    assert all(quantkit.Format(s).spec == s for s in specs[:20])


def test_quantize_counts_every_bit_and_decodes(W):
    f = quantkit.Format("int4:g128")
    p = f.quantize(W)
    assert (p.spec, p.shape) == ("int4:g128", (64, 256))
    assert p.bits == f.storage_bits(64, 256)
    assert p.bits_per_weight == f.bits_per_weight(64, 256) == 4.125
    assert p.nbytes == (p.bits + 7) // 8 == p.data.size
    q = p.dequantize()
    assert q.dtype == np.float32 and q.shape == W.shape
    assert 19.5 < sqnr(W, q) < 21.5
    assert np.array_equal(f.quantize(W).data, p.data)  # deterministic


def test_inputs_of_any_float_layout_are_converted(W):
    f = quantkit.Format("q8_0")
    expected = f.quantize(W).data
    assert np.array_equal(f.quantize(W.astype(np.float64)).data, expected)
    assert np.array_equal(f.quantize(np.asfortranarray(W)).data, expected)
    assert np.array_equal(f.quantize(W.T.copy().T).data, expected)


def test_importance_lowers_the_weighted_error(W):
    importance = np.ones(256, dtype=np.float32)
    importance[:32] = 100.0
    f = quantkit.Format("int3:g128")

    def weighted(q):
        return float(np.sum(importance * (W - q) ** 2))

    plain = f.quantize(W).dequantize()
    aware = f.quantize(W, importance=importance).dequantize()
    assert weighted(aware) < weighted(plain)


def test_packed_data_is_a_read_only_view(W):
    p = quantkit.Format("nvfp4").quantize(W)
    a, b = p.data, p.data
    assert np.shares_memory(a, b) and a.dtype == np.uint8
    with pytest.raises(ValueError):
        a[0] = 1


def test_packed_pickles(W):
    p = quantkit.Format("e8:b2").quantize(W)
    back = pickle.loads(pickle.dumps(p))
    assert (back.spec, back.shape, back.bits) == (p.spec, p.shape, p.bits)
    assert np.array_equal(back.dequantize(), p.dequantize())


def test_errors_carry_the_one_line_message(W):
    assert issubclass(quantkit.Error, ValueError)
    with pytest.raises(quantkit.Error, match="write 'int4:g128:asym'"):
        quantkit.Format("int4:asym:g128")
    with pytest.raises(quantkit.Error, match="W: expected a 2-D matrix"):
        quantkit.Format("q8_0").quantize(np.zeros(32, np.float32))
    with pytest.raises(quantkit.Error, match="q4_0: .*100"):
        quantkit.Format("q4_0").quantize(np.zeros((4, 100), np.float32))
    with pytest.raises(quantkit.Error, match="importance: expected 256 values"):
        quantkit.Format("int4:g128").quantize(W, importance=np.ones(3, np.float32))


def test_gptq_beats_rounding_on_the_layer_output_error(W):
    rng = np.random.default_rng(1)
    mix = rng.standard_normal((256, 256)) / 16
    X = rng.standard_normal((2048, 256)) @ (np.eye(256) + mix)  # correlated inputs
    H = X.T @ X
    rtn = quantkit.Format("int4:row").quantize(W).dequantize()
    gptq = quantkit.gptq(W, H, "int4:row")
    assert gptq.spec == "int4:row" and gptq.shape == W.shape
    assert quantkit.hessian_objective(W, gptq.dequantize(), H) < 0.8 * quantkit.hessian_objective(W, rtn, H)
    natural = quantkit.gptq(W, H, "int4:row", damp=0.1, act_order=False, block=32)
    assert natural.bits == gptq.bits
    with pytest.raises(quantkit.Error, match="H: expected the 256 x 256"):
        quantkit.gptq(W, H[:10, :10], "int4:row")


def test_rd_matches_the_cli(cli):
    specs = ["int4:g128", "nvfp4"]
    ours = quantkit.rd("gaussian", specs, n=65536)
    out = subprocess.run([cli, "rd", "--source", "gaussian", "--n", "65536", "--formats", ",".join(specs), "--json"],
                         check=True, capture_output=True, text=True).stdout
    theirs = json.loads(out)["results"]
    timing = ("encode_seconds", "decode_seconds", "encode_mb_per_s", "decode_mb_per_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]
    assert strip(ours) == strip(theirs)
    assert round(ours[0]["sqnr_db"], 3) == 20.288  # the README's table


def test_rd_on_an_array(W):
    rows = quantkit.rd(W, "int4:g128,q8_0,q4_k")
    assert [r["spec"] for r in rows] == ["int4:g128", "q8_0", "q4_k"]
    assert rows[1]["sqnr_db"] > rows[0]["sqnr_db"]
    assert not any(r["skipped"] for r in rows)
    assert "shannon_bound_db" not in rows[0]  # only the Gaussian source has a bound
    skipped = quantkit.rd(W[:, :100], ["q4_0"])[0]
    assert skipped["skipped"] and "100" in skipped["note"]


def test_calls_from_several_threads_give_the_serial_result(W):
    import threading

    f = quantkit.Format("nvfp4")
    expected = f.quantize(W).data.tobytes()
    results = []

    def work():
        results.append(f.quantize(W).data.tobytes())
        results.append(quantkit.gptq(W, np.eye(256), "int4:g128").bits)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(expected) == 4 and len(results) == 8
