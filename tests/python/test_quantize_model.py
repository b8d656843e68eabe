"""Whole-model quantization from Python: the same result as the CLI, mixed precision, reports."""
import json
import subprocess

import pytest

import quantkit
from conftest import CALIB_TEXT, MODEL, SEPARATOR, TOKENIZER


def short(text, chars=16000):
    """The first lines of a text: enough windows for a quick evaluation."""
    return text[: text.index("\n", chars) + 1]


def test_quantize_model_matches_the_cli(tmp_path, cli, eval_text):
    text = short(eval_text)
    (tmp_path / "eval.txt").write_text(text)
    r = quantkit.quantize_model(str(MODEL), str(tmp_path / "py.qk"), "int4:g32", tokenizer=str(TOKENIZER),
                                eval_text=text)
    out = subprocess.run([cli, "quantize", "-m", str(MODEL), "--tokenizer", str(TOKENIZER), "-f", "int4:g32",
                          "-o", str(tmp_path / "cli.qk"), "--eval", str(tmp_path / "eval.txt"), "--json"],
                         check=True, capture_output=True, text=True).stdout
    c = json.loads(out)
    assert (r["format"], r["method"], r["output_bytes"]) == (c["format"], c["method"], c["output_bytes"])
    strip = lambda rows: [{k: v for k, v in t.items() if k != "seconds"} for t in rows]
    assert strip(r["tensors"]) == strip(c["tensors"])
    assert (tmp_path / "py.qk").read_bytes() == (tmp_path / "cli.qk").read_bytes()
    measured = lambda e: {k: v for k, v in e.items() if k not in ("seconds", "text")}
    assert measured(r["eval"]) == measured(c["eval"])
    assert r["bits_per_weight"] == pytest.approx(5.147, abs=5e-4)  # README table: int4:g32
    assert r["model_info"]["parameters"] == 230976


def test_mixed_precision_matches_the_cli(tmp_path, cli):
    candidates = ["int2:g32", "int4:g32", "q8_0"]
    r = quantkit.quantize_model(str(MODEL), str(tmp_path / "py.qk"), target_bpw=4.0, tokenizer=str(TOKENIZER),
                                candidates=candidates)
    out = subprocess.run([cli, "quantize", "-m", str(MODEL), "--tokenizer", str(TOKENIZER), "--target-bpw", "4",
                          "--candidates", ",".join(candidates), "-o", str(tmp_path / "cli.qk"), "--json"],
                         check=True, capture_output=True, text=True).stdout
    assert r["mixed_precision"] == json.loads(out)["mixed_precision"]
    assert (tmp_path / "py.qk").read_bytes() == (tmp_path / "cli.qk").read_bytes()


def test_calibrated_methods_and_mixed_precision(tmp_path, eval_text):
    calib = short(quantkit.read_text(str(CALIB_TEXT), SEPARATOR), 40000)
    g = quantkit.quantize_model(str(MODEL), str(tmp_path / "g.qk"), "int3:g32", method="gptq", calib_text=calib,
                                tokenizer=str(TOKENIZER), calib_windows=16)
    assert g["calibration"]["windows"] == 16
    assert any(t["method"] == "gptq" for t in g["tensors"])
    m = quantkit.quantize_model(str(MODEL), str(tmp_path / "m.qk"), target_bpw=4.0, tokenizer=str(TOKENIZER),
                                candidates=["int2:g32", "int4:g32", "q8_0"], eval_text=short(eval_text))
    mp = m["mixed_precision"]
    assert m["format"] == "mixed" and mp["damage_estimate"] == "data-free"
    assert 3.5 < mp["achieved_bits_per_weight"] <= 4.0
    assert {t["chosen"] for t in mp["tensors"]} <= {"int2:g32", "int4:g32", "q8_0"}
    assert m["eval"]["perplexity"] > 0


def test_bad_arguments_raise(tmp_path):
    out = str(tmp_path / "x.qk")
    with pytest.raises(quantkit.Error, match="either spec or target_bpw"):
        quantkit.quantize_model(str(MODEL), out, tokenizer=str(TOKENIZER))
    with pytest.raises(quantkit.Error, match="needs calib_text"):
        quantkit.quantize_model(str(MODEL), out, "int4:g32", method="gptq", tokenizer=str(TOKENIZER))
    with pytest.raises(quantkit.Error, match="rtn, weighted, gptq|valid"):
        quantkit.quantize_model(str(MODEL), out, "int4:g32", method="awq", tokenizer=str(TOKENIZER))
    with pytest.raises(quantkit.Error, match=r"x\.bin: quantize_model writes \.gguf or \.qk"):
        quantkit.quantize_model(str(MODEL), str(tmp_path / "x.bin"), "int4:g32", tokenizer=str(TOKENIZER))


def test_report_from_python(tmp_path, eval_text):
    r = quantkit.quantize_model(str(MODEL), str(tmp_path / "m.qk"), "q4_0", tokenizer=str(TOKENIZER),
                                eval_text=short(eval_text))
    quantkit.write_report(r, str(tmp_path / "r.html"))
    page = (tmp_path / "r.html").read_text()
    assert page == quantkit.report_html(r)
    assert 'id="tensor-table"' in page and 'id="rd-chart"' in page and "Evaluation against the input model" in page
    (tmp_path / "r.json").write_text(json.dumps(r))
    assert 'id="tensor-table"' in quantkit.report_html(str(tmp_path / "r.json"))
    rd_page = quantkit.report_html({"source": "gaussian", "rows": 1, "cols": 4,
                                    "results": quantkit.rd("gaussian", ["int4:g128"], n=4096)})
    assert 'id="rd-table"' in rd_page
    with pytest.raises(quantkit.Error, match="not a quantkit result"):
        quantkit.report_html({"hello": 1})
