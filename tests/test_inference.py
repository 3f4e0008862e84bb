"""Using trained models on raw text: predict_proba / predict, Ensemble, generate, predict_next,
complete saved directories (format 2) and the format-1 upgrade path.

Classifier and LM weights come from tiny fastai learners built live (test_fastai_files), so
probabilities are checked against fastai's own model run on each document alone.
"""

from __future__ import annotations

import json
import os
import pickle

import jax
import numpy as np
import pytest
from fastai.text.learner import decode_spec_tokens as fastai_decode_spec_tokens
from flax import nnx

from tests.test_fastai_files import (
    VOCAB,
    fastai_classifier_learner,
    fastai_classifier_logits,
    fastai_lm_learner,
)
from ulmfit_jax import Ensemble, LanguageModel, TextClassifier
from ulmfit_jax.inference import classify
from ulmfit_jax.inference.generate import filter_logits
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.text import FastaiTokenizer
from ulmfit_jax.text.classifier_batches import pad_chunks
from ulmfit_jax.text.detokenize import decode_spec_tokens, detokenize
from ulmfit_jax.text.vocab import Vocab

BPTT = 8
WORDS = [w for w in VOCAB if w.startswith("w")]


def _text(seed: int, n_words: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, n_words))


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    clf_learner = fastai_classifier_learner(VOCAB, root, seq_len=BPTT)
    lm_learner = fastai_lm_learner(VOCAB, root)
    itos = root / "itos.pkl"
    itos.write_bytes(pickle.dumps(VOCAB, protocol=2))
    clf = TextClassifier.from_fastai(clf_learner.save("clf"), itos, bptt=BPTT,
                                     class_names=["a", "b", "c"])
    lm = LanguageModel.from_fastai(lm_learner.save("lm"), itos)
    return {"root": root, "clf": clf, "fastai_clf": clf_learner.model, "lm": lm}


def _fastai_probs(model, text: str) -> np.ndarray:
    ids = Vocab(VOCAB).numericalize(FastaiTokenizer().tokenize([text])[0])
    logits = fastai_classifier_logits(model, ids[None])[0].astype(np.float64)
    return np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()


# ------------------------------------------------------------------ classifier


def test_predict_proba_matches_fastai_per_document_in_input_order(fx):
    # Long documents span many bptt chunks (up to 25); "" is a valid (bos-only) document.
    texts = [_text(i, n) for i, n in enumerate([3, 200, 17, 60, 1, 41])] + [""]
    probs = fx["clf"].predict_proba(texts, batch_size=4)
    assert probs.shape == (len(texts), 3) and probs.dtype == np.float32
    for text, got in zip(texts, probs, strict=True):
        np.testing.assert_allclose(got, _fastai_probs(fx["fastai_clf"], text), atol=1e-5)
    assert fx["clf"].predict(texts) == [["a", "b", "c"][i] for i in probs.argmax(1)]


def test_a_documents_probabilities_do_not_depend_on_its_batch(fx):
    texts = [_text(10 + i, n) for i, n in enumerate([150, 4, 90, 33, 7, 2, 120, 55, 9])] + [""]
    together = fx["clf"].predict_proba(texts, batch_size=4)
    for text, row in zip(texts, together, strict=True):
        np.testing.assert_allclose(fx["clf"].predict_proba([text])[0], row, atol=1e-6, rtol=0)


def test_predict_proba_compiles_few_shapes(fx):
    classify._classifier_eval.clear_cache()
    texts = [_text(100 + i, n) for i, n in enumerate(range(1, 400, 7))]  # 57 lengths
    fx["clf"].predict_proba(texts, batch_size=8)
    # rows 8 and 1, widths bucketed to 1,2,3,4,6,8,12,18,24,36,54 chunks
    assert classify._classifier_eval._cache_size() <= 12


def test_multi_label_by_keyword_or_default_shares_one_compile(fx):
    """`clf(ids)` leaves `multi_label` at its default, predict_proba passes it by keyword."""
    classify._classifier_eval.clear_cache()
    graphdef, state = nnx.split(fx["clf"].module)
    ids = np.full((2, 16), 5, np.int32)
    by_default = classify.classifier_eval(graphdef, ids, state)
    by_keyword = classify.classifier_eval(graphdef, ids, state, multi_label=False)
    np.testing.assert_array_equal(by_default.probs, by_keyword.probs)
    assert classify._classifier_eval._cache_size() == 1
    classify.classifier_eval(graphdef, ids, state, multi_label=True)
    assert classify._classifier_eval._cache_size() == 2


def test_bad_inputs_are_type_errors_naming_the_position(fx):
    with pytest.raises(TypeError, match=r"text #2 is int, not str"):
        fx["clf"].predict_proba(["ok", "fine", 3])
    with pytest.raises(TypeError, match="a single text; wrap it"):
        fx["clf"].predict("one text")


def test_progress_bar_when_asked(fx, capsys):
    fx["clf"].predict_proba([_text(0, 5)], progress=True)
    assert "predict" in capsys.readouterr().err
    fx["clf"].predict_proba([_text(0, 5)])
    assert capsys.readouterr().err == ""


def test_backward_classifier_reverses_ids_itself(fx):
    bwd = TextClassifier(fx["clf"].module, VOCAB, FastaiTokenizer(), ["a", "b", "c"],
                         backward=True)
    text = _text(3, 30)
    ids = Vocab(VOCAB).numericalize(FastaiTokenizer().tokenize([text])[0])[::-1]
    logits = np.asarray(bwd(pad_chunks([ids], 1, BPTT)), np.float64)[0]
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    got = bwd.predict_proba([text])[0]
    np.testing.assert_allclose(got, expected, atol=1e-7, rtol=0)
    # the same module on the unreversed ids (tiny random weights: small but clear difference)
    assert np.abs(got - fx["clf"].predict_proba([text])[0]).max() > 1e-6


def test_ensemble_averages_its_members(fx, tmp_path):
    other = TextClassifier.create(fx["clf"].config, VOCAB, seed=4, tokenizer=FastaiTokenizer(),
                                  class_names=["a", "b", "c"], backward=True)
    fx["clf"].save(tmp_path / "fwd")
    other.save(tmp_path / "bwd")
    texts = [_text(i, 12) for i in range(5)]
    ens = Ensemble.load(tmp_path / "fwd", tmp_path / "bwd")
    expected = (fx["clf"].predict_proba(texts) + other.predict_proba(texts)) / 2
    np.testing.assert_allclose(ens.predict_proba(texts), expected, atol=1e-7)
    assert ens.predict(texts) == [["a", "b", "c"][i] for i in expected.argmax(1)]
    renamed = TextClassifier.create(fx["clf"].config, VOCAB, tokenizer=FastaiTokenizer(),
                                    class_names=["x", "b", "c"])
    with pytest.raises(ValueError, match=r"classifier #1 has classes \['x', 'b', 'c'\]"):
        Ensemble([fx["clf"], renamed])


# ------------------------------------------------------------------ saved directories


def test_saved_classifier_is_complete(fx, tmp_path):
    bwd = TextClassifier.create(fx["clf"].config, VOCAB, tokenizer=FastaiTokenizer(add_eos=True),
                                class_names=["a", "b", "c"], backward=True)
    bwd.save(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "config.json").read_text())
    assert meta["format_version"] == 2 and meta["backward"] is True
    assert meta["class_names"] == ["a", "b", "c"]
    loaded = TextClassifier.load(tmp_path / "c")
    assert loaded.backward and loaded.class_names == ["a", "b", "c"]
    assert isinstance(loaded.tokenizer, FastaiTokenizer) and loaded.tokenizer.add_eos
    texts = [_text(5, 20), ""]
    np.testing.assert_array_equal(loaded.predict_proba(texts), bwd.predict_proba(texts))


def test_format_1_directory_loads_and_explains_how_to_add_a_tokenizer(fx, tmp_path):
    path = tmp_path / "old"
    fx["clf"].save(path)
    os.remove(path / "tokenizer.json")  # what format 1 wrote: no tokenizer, no names
    meta = json.loads((path / "config.json").read_text())
    meta = {"format_version": 1, "kind": meta["kind"], "config": meta["config"]}
    (path / "config.json").write_text(json.dumps(meta))
    old = TextClassifier.load(path)
    assert old.tokenizer is None and old.class_names == ["0", "1", "2"]
    assert old(np.array([[2, 10, 11]])).shape == (1, 3)  # ids in still work
    with pytest.raises(ValueError, match=r"with_tokenizer\(FastaiTokenizer\(\)\)\.save\("):
        old.predict(["w1 w2"])
    upgraded = old.with_tokenizer(FastaiTokenizer(), ["a", "b", "c"])
    # a copy sharing the module; the loaded classifier itself is unchanged
    assert old.tokenizer is None and old.class_names == ["0", "1", "2"]
    assert upgraded.module is old.module
    upgraded.save(path, overwrite=True)
    upgraded = TextClassifier.load(path)
    assert upgraded.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(upgraded.predict_proba(["w1 w2"]),
                                  fx["clf"].predict_proba(["w1 w2"]))


def test_sentencepiece_tokenizer_travels_with_the_model(tmp_path):
    from ulmfit_jax.text.sentencepiece_tokenizer import SentencePieceTokenizer

    corpus = [f"the film number {i} was {'good' if i % 2 else 'bad'} and long" for i in range(200)]
    sp = SentencePieceTokenizer(vocab_size=60, num_threads=1)
    sp.train(corpus)
    config = ClassifierConfig(AWDLSTMConfig(len(sp.itos), 8, 16, 1), 2, bptt=4)
    clf = TextClassifier.create(config, sp.itos, tokenizer=sp)
    clf.save(tmp_path / "sp")
    assert (tmp_path / "sp" / "tokenizer.model").read_bytes() == sp._model
    loaded = TextClassifier.load(tmp_path / "sp")
    assert loaded.tokenizer.tokenize(corpus[:3]) == sp.tokenize(corpus[:3])
    np.testing.assert_array_equal(loaded.predict_proba(corpus[:5]), clf.predict_proba(corpus[:5]))


# ------------------------------------------------------------------ language model


def _reread(lm: LanguageModel, prompt: str, n_words: int, seed: int | None,
            backward: bool = False) -> list[str]:
    """fastai's way: re-read the whole sequence for every new word (no carried state); the
    word is the most likely one (seed None) or drawn with generate's keys."""
    ids = list(Vocab(VOCAB).numericalize(FastaiTokenizer().tokenize([prompt])[0]))
    if backward:  # right to left, without the leading xxbos
        ids = ids[1:][::-1]
    for step in range(n_words):
        logits = np.array(lm(np.array([ids]))[0])[0, -1]
        logits[[VOCAB.index("xxunk"), VOCAB.index("xxpad")]] = -np.inf
        if seed is None:
            ids.append(int(logits.argmax()))
        else:
            key = jax.random.fold_in(jax.random.key(seed), step)
            ids.append(int(jax.random.categorical(key, jax.numpy.asarray(logits))))
    return [VOCAB[i] for i in (ids[::-1] if backward else ids)]


def test_generation_carries_state_as_rereading_does(fx):
    prompt = "W3 w5 w7 w7"
    expected = _reread(fx["lm"], prompt, 25, seed=7)
    assert len(set(expected[6:])) > 5  # a varied sample, not a loop of one token
    got = fx["lm"].generate(prompt, n_words=25, seed=7)
    assert got == detokenize(expected)
    assert got.startswith("W3 w5 w7 w7 ")  # xxup undone, xxbos dropped
    greedy = fx["lm"].generate(prompt, n_words=12, temperature=0)
    assert greedy == detokenize(_reread(fx["lm"], prompt, 12, seed=None))
    assert fx["lm"].generate(prompt, n_words=12, top_k=1) == greedy


def test_generation_is_deterministic_for_a_seed(fx):
    a = fx["lm"].generate("w1 w2", n_words=30, seed=3)
    assert a == fx["lm"].generate("w1 w2", n_words=30, seed=3)
    assert a != fx["lm"].generate("w1 w2", n_words=30, seed=4)
    assert a.startswith("w1 w2 ")
    assert "xxunk" not in a and "xxpad" not in a


def test_predict_next_gives_the_lm_probabilities(fx):
    texts = ["w1 w2 w3", "w9"]
    top = fx["lm"].predict_next(texts, k=3)
    for text, row in zip(texts, top, strict=True):
        ids = Vocab(VOCAB).numericalize(FastaiTokenizer().tokenize([text])[0])
        logits = np.asarray(fx["lm"](ids[None])[0], np.float64)[0, -1]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        probs[[0, 1]] = 0  # xxunk, xxpad are never predicted
        order = np.argsort(-probs)[:3]
        assert [t for t, _ in row] == [VOCAB[i] for i in order]
        np.testing.assert_allclose([p for _, p in row], probs[order], rtol=1e-5)


def test_top_k_and_top_p_filtering():
    logits = jax.numpy.log(jax.numpy.array([0.5, 0.05, 0.3, 0.15]))
    kept = lambda x: np.isfinite(np.asarray(x)).nonzero()[0].tolist()  # noqa: E731
    assert kept(filter_logits(logits, 2, None)) == [0, 2]
    assert kept(filter_logits(logits, None, 0.5)) == [0]
    assert kept(filter_logits(logits, None, 0.7)) == [0, 2]
    assert kept(filter_logits(logits, None, 0.95)) == [0, 2, 3]
    assert kept(filter_logits(logits, None, 1.0)) == [0, 1, 2, 3]


def test_lm_directory_keeps_tokenizer_and_direction(fx, tmp_path):
    bwd = LanguageModel.from_params(fx["lm"].config, fx["lm"].params, VOCAB, FastaiTokenizer(),
                                    backward=True)
    bwd.save(tmp_path / "lm")
    loaded = LanguageModel.load(tmp_path / "lm")
    assert loaded.backward and isinstance(loaded.tokenizer, FastaiTokenizer)
    # A backward LM writes the words before the prompt.
    expected = _reread(loaded, "w4 w5 w6", 8, seed=2, backward=True)
    assert expected[-3:] == ["w4", "w5", "w6"]
    assert loaded.generate("w4 w5 w6", n_words=8, seed=2) == detokenize(expected)


# ------------------------------------------------------------------ detokenize


@pytest.mark.parametrize("tokens", [
    ["xxmaj", "this", "is", "xxup", "great", "!", "xxmaj", "mcDonald"],
    ["a", "xxup", "b", "xxmaj", "c"],
    ["xxwrep", "3", "no"],
    ["end", "xxrep", "4", "!"],
])
def test_decode_spec_tokens_matches_fastai(tokens):
    assert decode_spec_tokens(tokens) == fastai_decode_spec_tokens(tokens)


def test_detokenize_undoes_fastai_tokenization():
    text = "This movie is GREAT!!!! We said no no no no. Don't (ever) miss it, Mr. Smith."
    tokens = FastaiTokenizer().tokenize([text])[0]
    assert "xxrep" in tokens and "xxwrep" in tokens and "xxup" in tokens
    assert detokenize(tokens) == text
    # Unlike fastai, an xxrep group ends after its character.
    assert decode_spec_tokens(["xxrep", "3", "!", "so", "good"]) == ["!!!", "so", "good"]
