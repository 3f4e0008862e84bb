"""Reading, remapping and writing fastai checkpoint files, checked against fastai itself.

Every fixture file is written at test time by fastai (tiny sizes): a v2 LM learner's
`learn.save` (wrapped with optimizer state) and a bare `torch.save(model.state_dict())`,
`learn.save_encoder`, and a classifier learner's `learn.save`. The v1-release and 2018
layouts can't be produced by fastai 2.8, so they are synthesised from the v2 file by key
renaming exactly as docs/fastai_formats.md describes (v1: an extra stale
`module.weight_hh_l0`; 2018: `encoder_with_dropout.embed`, `module.weight_hh_l0_raw`, no
decoder bias, old specials).
"""

from __future__ import annotations

import collections
import pickle
import sys

import numpy as np
import pytest
import torch
from fastai.text.all import (
    AWD_LSTM,
    CrossEntropyLossFlat,
    DataLoader,
    DataLoaders,
    LMDataLoader,
    awd_lstm_clas_config,
    awd_lstm_lm_config,
    language_model_learner,
    match_embeds,
    text_classifier_learner,
)

from ulmfit_jax.convert import fastai_files as ff
from ulmfit_jax.convert import fastai_layout as layout
from ulmfit_jax.convert.safe_pickle import UnsafePickleError

SPECIALS = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj"]
VOCAB = SPECIALS + [f"w{i}" for i in range(23)]  # 32 rows
SIZES = dict(emb_sz=16, n_hid=24, n_layers=3)


# ------------------------------------------------------------------ fastai fixture builders


def _dls(vocab: list[str], classifier: bool = False) -> DataLoaders:
    gen = torch.Generator().manual_seed(0)
    docs = [torch.randint(9, len(vocab), (40,), generator=gen) for _ in range(8)]
    if classifier:
        items = [(d[:12], torch.tensor(i % 3)) for i, d in enumerate(docs)]
        dls = DataLoaders(DataLoader(items, bs=4), DataLoader(items[:4], bs=4))
    else:
        dls = DataLoaders(LMDataLoader(docs, bs=4, seq_len=8),
                          LMDataLoader(docs[:4], bs=4, seq_len=8))
    dls.vocab = vocab
    return dls


def fastai_lm_learner(vocab: list[str], path, seed: int = 0):
    """A tiny fastai v2 LM learner (random weights, non-zero decoder bias)."""
    torch.manual_seed(seed)
    cfg = {**awd_lstm_lm_config, **SIZES}
    learn = language_model_learner(_dls(vocab), AWD_LSTM, config=cfg, pretrained=False, path=path)
    with torch.no_grad():
        learn.model[1].decoder.bias.normal_()
    return learn


def fastai_classifier_learner(vocab: list[str], path, seed: int = 0, seq_len: int = 8):
    """A tiny fastai v2 classifier learner with non-trivial BatchNorm running statistics."""
    torch.manual_seed(seed)
    cfg = {**awd_lstm_clas_config, **SIZES}
    learn = text_classifier_learner(_dls(vocab, classifier=True), AWD_LSTM, config=cfg,
                                    pretrained=False, path=path, n_out=3, seq_len=seq_len,
                                    lin_ftrs=[10], loss_func=CrossEntropyLossFlat())
    with torch.no_grad():
        for bn in (learn.model[1].layers[0][0], learn.model[1].layers[1][0]):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
            bn.num_batches_tracked.fill_(7)
    return learn


def fastai_lm_logits(model, ids: np.ndarray) -> np.ndarray:
    """fastai LM logits `[batch, time, vocab]` in eval mode from a zero state."""
    model.eval()
    model.reset()
    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long))[0].numpy()


def fastai_classifier_logits(model, ids: np.ndarray) -> np.ndarray:
    """fastai classifier logits `[batch, n_classes]` in eval mode."""
    model.eval()
    model.reset()
    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long))[0].numpy()


def numpy_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def to_v1_layout(sd: dict) -> collections.OrderedDict:
    """fastai v1 release layout: v2 keys plus a stale dropped copy of each W_hh."""
    out = collections.OrderedDict()
    for k, v in sd.items():
        out[k] = v
        if k.endswith("module.weight_ih_l0"):
            layer_prefix = k[: -len("weight_ih_l0")]
            raw = sd[layer_prefix[: -len("module.")] + "weight_hh_l0_raw"]
            out[layer_prefix + "weight_hh_l0"] = torch.zeros_like(raw) + 123.0
    return out


def to_2018_layout(sd: dict) -> collections.OrderedDict:
    """fastai 0.7 (2018 `.h5`) layout: renamed keys, no decoder bias."""
    out = collections.OrderedDict()
    for k, v in sd.items():
        if k == "1.decoder.bias":
            continue
        k = k.replace("encoder_dp.emb.", "encoder_with_dropout.embed.")
        k = k.replace(".weight_hh_l0_raw", ".module.weight_hh_l0_raw")
        out[k] = v
    return out


def old_specials(vocab: list[str]) -> list[str]:
    back = {v: k for k, v in ff.OLD_SPECIAL_TOKENS.items()}
    return [back.get(t, t) for t in vocab]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """fastai-written files: LM (wrapped + bare), encoder, classifier, v1/2018 LM, itos."""
    root = tmp_path_factory.mktemp("fastai")
    learn = fastai_lm_learner(VOCAB, root)
    with learn.no_bar(), learn.no_logging():  # a real optimizer state (L + numpy scalars)
        learn.fit_one_cycle(1, slice(1e-4, 1e-3))
    f = {"root": root, "lm_learner": learn, "lm_state": numpy_state(learn.model)}
    f["lm_wrapped"] = learn.save("lm_wrapped")
    assert set(torch.load(f["lm_wrapped"], weights_only=False)) == {"model", "opt"}
    f["lm_bare"] = root / "lm_bare.pth"
    torch.save(learn.model.state_dict(), f["lm_bare"])
    learn.save_encoder("enc")
    f["encoder"] = root / "models" / "enc.pth"
    f["lm_v1"] = root / "lm_v1.pth"
    torch.save(to_v1_layout(learn.model.state_dict()), f["lm_v1"])
    f["lm_2018"] = root / "fwd_wt103.h5"
    torch.save({"model": to_2018_layout(learn.model.state_dict()), "opt": {}}, f["lm_2018"])
    f["itos"] = root / "itos.pkl"
    f["itos"].write_bytes(pickle.dumps(VOCAB, protocol=2))
    f["itos_2018"] = root / "itos_wt103.pkl"
    f["itos_2018"].write_bytes(pickle.dumps(old_specials(VOCAB), protocol=2))
    clf = fastai_classifier_learner(VOCAB, root)
    f["clf_learner"], f["clf_state"] = clf, numpy_state(clf.model)
    f["clf"] = clf.save("clf")
    return f


def _assert_same(sd: dict, expected: dict) -> None:
    assert list(sd) == list(expected)
    for k in expected:
        np.testing.assert_array_equal(sd[k], expected[k], err_msg=k)


# ------------------------------------------------------------------ reading


@pytest.mark.parametrize("name", ["lm_wrapped", "lm_bare", "lm_v1"])
def test_reads_v2_and_v1_language_models(files, name):
    ckpt = ff.read_checkpoint(files[name])
    assert ckpt.kind == ff.KIND_LM
    assert ckpt.layout == ("v1" if name == "lm_v1" else "v2")
    assert list(ckpt.state_dict) == layout.lm_keys(3)
    _assert_same(ckpt.state_dict, files["lm_state"])


def test_reads_2018_layout_with_zero_bias_and_old_specials(files):
    ckpt, itos = ff.read_language_model(files["lm_2018"], files["itos_2018"])
    assert (ckpt.kind, ckpt.layout) == (ff.KIND_LM, "2018")
    expected = dict(files["lm_state"])
    expected["1.decoder.bias"] = np.zeros_like(expected["1.decoder.bias"])
    _assert_same(ckpt.state_dict, expected)
    assert itos == VOCAB
    assert pickle.loads(files["itos_2018"].read_bytes())[:3] == ["_unk_", "_pad_", "xbos"]


def test_reads_encoder_only_file(files):
    ckpt = ff.read_checkpoint(files["encoder"])
    assert (ckpt.kind, ckpt.layout) == (ff.KIND_ENCODER, "v2")
    expected = {k[2:]: v for k, v in files["lm_state"].items() if k.startswith("0.")}
    _assert_same(ckpt.state_dict, expected)


def test_reads_classifier_file(files):
    ckpt = ff.read_checkpoint(files["clf"])
    assert (ckpt.kind, ckpt.layout) == (ff.KIND_CLASSIFIER, "v2")
    assert list(ckpt.state_dict) == layout.classifier_keys(3, [2, 2])
    _assert_same(ckpt.state_dict, files["clf_state"])


# ------------------------------------------------------------------ vocab remapping


def test_remap_matches_fastai_match_embeds(files):
    new_vocab = SPECIALS + ["w5", "brand", "w0", "new", "w22"]
    ckpt, itos = ff.read_language_model(files["lm_bare"], files["itos"], new_vocab=new_vocab)
    assert itos == new_vocab
    theirs = match_embeds(
        {k: torch.from_numpy(v.copy()) for k, v in files["lm_state"].items()}, VOCAB, new_vocab
    )
    for k in layout.lm_keys(3):
        np.testing.assert_allclose(ckpt.state_dict[k], theirs[k].numpy(), rtol=1e-6, atol=1e-7,
                                   err_msg=k)
    emb = files["lm_state"]["0.encoder.weight"]
    np.testing.assert_array_equal(ckpt.state_dict["0.encoder.weight"][9], emb[VOCAB.index("w5")])
    np.testing.assert_allclose(ckpt.state_dict["0.encoder.weight"][10], emb.mean(0), rtol=1e-6)


def test_remap_vocab_params_on_tree():
    rng = np.random.default_rng(0)
    params = {"encoder": {"embedding": rng.normal(size=(4, 3)), "layers": {}},
              "decoder_bias": rng.normal(size=(4,))}
    out = ff.remap_vocab_params(params, ["a", "b", "c", "d"], ["c", "z", "a"])
    emb = params["encoder"]["embedding"]
    np.testing.assert_array_equal(out["encoder"]["embedding"][0], emb[2])
    np.testing.assert_allclose(out["encoder"]["embedding"][1], emb.mean(0))
    np.testing.assert_allclose(out["decoder_bias"], [params["decoder_bias"][2],
                                                     params["decoder_bias"].mean(),
                                                     params["decoder_bias"][0]])


# ------------------------------------------------------------------ writing, fastai reads back


def test_exported_lm_loads_in_fastai_with_identical_logits(files, tmp_path):
    ckpt, itos = ff.read_language_model(files["lm_2018"], files["itos_2018"])
    ckpt_v2, _ = ff.read_language_model(files["lm_wrapped"], files["itos"])
    ff.save_language_model(ckpt_v2.state_dict, itos, tmp_path / "lm.pth", tmp_path / "itos.pkl")
    raw = torch.load(tmp_path / "lm.pth", weights_only=True)
    assert type(raw) is collections.OrderedDict and list(raw) == layout.lm_keys(3)
    ids = np.random.default_rng(0).integers(0, len(VOCAB), (3, 11))
    expected = fastai_lm_logits(files["lm_learner"].model, ids)
    # load_pretrained (by position, vocab matched through our itos pickle)
    fresh = fastai_lm_learner(VOCAB, tmp_path, seed=1)
    fresh.load_pretrained(tmp_path / "lm.pth", tmp_path / "itos.pkl")
    np.testing.assert_array_equal(fastai_lm_logits(fresh.model, ids), expected)
    # Learner.load (by name)
    fresh = fastai_lm_learner(VOCAB, tmp_path, seed=2)
    fresh.load(tmp_path / "lm")
    np.testing.assert_array_equal(fastai_lm_logits(fresh.model, ids), expected)
    assert ckpt.layout == "2018"


def test_exported_lm_with_new_vocab_matches_fastai_load_pretrained(files, tmp_path):
    new_vocab = SPECIALS + ["w3", "unseen", "w1"] + [f"xxfake{i}" for i in range(4)]
    ckpt, itos = ff.read_language_model(files["lm_wrapped"], files["itos"], new_vocab=new_vocab)
    ff.save_language_model(ckpt.state_dict, itos, tmp_path / "ours.pth", tmp_path / "ours.pkl")
    ours = fastai_lm_learner(new_vocab, tmp_path, seed=1)
    ours.load_pretrained(tmp_path / "ours.pth", tmp_path / "ours.pkl")
    theirs = fastai_lm_learner(new_vocab, tmp_path, seed=2)
    theirs.load_pretrained(files["lm_wrapped"], files["itos"])
    ids = np.random.default_rng(1).integers(0, len(new_vocab), (2, 9))
    np.testing.assert_allclose(fastai_lm_logits(ours.model, ids),
                               fastai_lm_logits(theirs.model, ids), rtol=1e-5, atol=1e-6)


def test_exported_encoder_loads_with_fastai_load_encoder(files, tmp_path):
    ckpt = ff.read_checkpoint(files["encoder"])
    ff.save_encoder(ckpt.state_dict, tmp_path / "models" / "enc_ours.pth")
    clf = fastai_classifier_learner(VOCAB, tmp_path, seed=3)
    clf.load_encoder("enc_ours")
    got = numpy_state(clf.model[0].module)
    _assert_same(got, ckpt.state_dict)


def test_exported_classifier_loads_with_fastai_learner_load(files, tmp_path):
    ckpt = ff.read_checkpoint(files["clf"])
    ff.save_classifier(ckpt.state_dict, tmp_path / "models" / "clf_ours.pth")
    written = torch.load(tmp_path / "models" / "clf_ours.pth")
    assert list(written) == layout.classifier_keys(3, [2, 2])
    fresh = fastai_classifier_learner(VOCAB, tmp_path, seed=4)
    fresh.load("clf_ours")
    ids = np.random.default_rng(2).integers(2, len(VOCAB), (3, 20))
    np.testing.assert_array_equal(fastai_classifier_logits(fresh.model, ids),
                                  fastai_classifier_logits(files["clf_learner"].model, ids))


# ------------------------------------------------------------------ bad files


def _save(tmp_path, name, sd):
    path = tmp_path / name
    torch.save(collections.OrderedDict((k, torch.as_tensor(v)) for k, v in sd.items()), path)
    return path


def test_missing_key_is_named(files, tmp_path):
    sd = dict(files["lm_state"])
    del sd["0.rnns.1.module.bias_hh_l0"]
    with pytest.raises(ValueError,
                       match=r"broken.pth: missing key '0\.rnns\.1\.module\.bias_hh_l0'"):
        ff.read_checkpoint(_save(tmp_path, "broken.pth", sd))


def test_missing_decoder_bias_is_an_error_outside_2018(files, tmp_path):
    sd = dict(files["lm_state"])
    del sd["1.decoder.bias"]
    with pytest.raises(ValueError, match=r"nobias.pth: missing key '1\.decoder\.bias'"):
        ff.read_checkpoint(_save(tmp_path, "nobias.pth", sd))


def test_unexpected_key_is_named(files, tmp_path):
    sd = {**files["lm_state"], "0.rnns.0.extra": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match=r"extra.pth: unexpected key '0\.rnns\.0\.extra'"):
        ff.read_checkpoint(_save(tmp_path, "extra.pth", sd))


def test_wrong_shape_names_key_and_both_shapes(files, tmp_path):
    sd = dict(files["lm_state"])
    sd["0.rnns.2.module.weight_ih_l0"] = np.zeros((64, 23), np.float32)
    with pytest.raises(ValueError, match=r"shape.pth: '0\.rnns\.2\.module\.weight_ih_l0' has shape "
                                         r"\(64, 23\), expected \(64, 24\)"):
        ff.read_checkpoint(_save(tmp_path, "shape.pth", sd))


def test_untied_copies_are_refused(files, tmp_path):
    sd = dict(files["lm_state"])
    sd["1.decoder.weight"] = sd["1.decoder.weight"] + 1
    with pytest.raises(ValueError, match=r"'1\.decoder\.weight' differs from '0\.encoder\.weight'"):
        ff.read_checkpoint(_save(tmp_path, "untied.pth", sd))


def test_vocab_length_mismatch_names_both_files(files, tmp_path):
    short = tmp_path / "short.pkl"
    short.write_bytes(pickle.dumps(VOCAB[:-1]))
    with pytest.raises(ValueError, match=r"short.pkl has 31 tokens but .*lm_bare.pth: "
                                         r"0\.encoder\.weight has shape \(32, 16\)"):
        ff.read_language_model(files["lm_bare"], short)


def test_non_list_itos_is_refused(files, tmp_path):
    bad = tmp_path / "dict.pkl"
    bad.write_bytes(pickle.dumps({t: i for i, t in enumerate(VOCAB)}))
    with pytest.raises(ValueError, match="dict.pkl: a vocab pickle must hold a list of str"):
        ff.read_language_model(files["lm_bare"], bad)


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_malicious_itos_is_refused_without_running(files, tmp_path):
    target = tmp_path / "pwned"
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps([_Payload(target)], protocol=2))
    with pytest.raises(UnsafePickleError, match="evil.pkl"):
        ff.read_language_model(files["lm_bare"], bad)
    assert not target.exists()


def test_pth_needing_full_unpickling_is_refused_clearly(files, tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": files["lm_learner"].model.state_dict(), "opt": _Payload(target)}, path)
    with pytest.raises(ff.UnsafeCheckpointError, match=r"evil.pth: refused by torch.load\("
                       r"weights_only=True\).*Unsupported global: GLOBAL io.open"):
        ff.read_checkpoint(path)
    assert not target.exists()


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "text.pth"
    path.write_text("hello")
    with pytest.raises(ValueError, match="text.pth: not a readable torch checkpoint"):
        ff.read_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        ff.read_checkpoint(tmp_path / "nothere.pth")


def test_not_an_awd_lstm_state_dict(tmp_path):
    with pytest.raises(ValueError, match="other.pth: not a fastai AWD-LSTM checkpoint"):
        ff.read_checkpoint(_save(tmp_path, "other.pth", {"fc.weight": np.zeros((2, 2))}))


def test_missing_torch_names_the_convert_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install 'ulmfit-jax\[convert\]'"):
        ff.read_checkpoint(tmp_path / "x.pth")
