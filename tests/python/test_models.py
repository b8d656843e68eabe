"""Models from Python: loading, tensors, perplexity and KL on the real aidreams260K."""
import numpy as np
import pytest

import quantkit
from conftest import MODEL, TOKENIZER


def test_model_exposes_config_and_tensors(model):
    assert model.container == "llama2c"
    assert model.config["dim"] == 64 and model.config["n_layers"] == 4 and model.config["context"] == 128
    assert "blk.0.attn_q.weight" in model.tensor_names
    w = model.tensor("blk.0.ffn_down.weight")
    assert w.dtype == np.float32 and w.shape == (64, 172)
    assert np.isfinite(w).all() and w.std() > 0


def test_perplexity_matches_the_cli_reference(model, eval_text):
    # README: PPL llama.cpp convention 10.0715 at ctx 128 (llama.cpp itself: 10.073).
    assert model.perplexity(eval_text) == pytest.approx(10.0715, abs=5e-5)


def test_kl_against_itself_is_zero_and_evaluate_gives_everything(model, eval_text):
    r = model.evaluate(eval_text, ref=model, max_tokens=2048)
    assert r["kl_mean"] == 0 and r["top1_agreement"] == 1
    assert r["perplexity_ci95"][0] < r["perplexity"] < r["perplexity_ci95"][1]
    assert r["ctx"] == 128 and r["tokens"] == 2048
    assert model.kl_divergence(model, eval_text[:6000]) == 0


def test_errors_name_the_file(eval_text):
    with pytest.raises(quantkit.Error, match="no-such-model.gguf"):
        quantkit.load_model("no-such-model.gguf")
    bare = quantkit.load_model(str(MODEL))  # llama2.c checkpoints carry no tokenizer
    with pytest.raises(quantkit.Error, match="carries no tokenizer"):
        bare.perplexity(eval_text)
    m = quantkit.load_model(str(MODEL), tokenizer=str(TOKENIZER))
    with pytest.raises(quantkit.Error, match="exceeds the model's maximum of 128"):
        m.perplexity(eval_text, ctx=256)
    with pytest.raises(quantkit.Error, match="fewer than one window"):
        m.perplexity("too short")
