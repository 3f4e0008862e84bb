"""Vocab against fastai's make_vocab / Numericalize, live; the JSON file format."""

import collections
import json
import pickle

import numpy as np
import pytest

from ulmfit_jax.text.fastai_tokenizer import FastaiTokenizer
from ulmfit_jax.text.vocab import Vocab


@pytest.fixture(scope="module")
def fastai_data():
    from fastai.text import data

    return data


@pytest.fixture(scope="module")
def docs():
    texts = [
        "The film was good. The film was long. A GOOD film!!!",
        "Bad bad bad bad acting; the plot was thin, the film long.",
        "I liked it. I liked the music. I did not like the end.",
    ] * 2 + ["Unique words appear once: zebra quokka.", "xxunk xxpad tokens typed by hand"]
    return FastaiTokenizer().tokenize(texts)


def _counts_with_ties():
    # Many equal counts in a deliberate insertion order: most_common keeps that order.
    counts = collections.Counter()
    for i in range(130):
        counts[f"w{(i * 37) % 130}"] = 3 + i % 4
    counts.update({"xxbos": 50, "xxmaj": 2, "rare": 2, "xxfake": 9})
    return counts


@pytest.mark.parametrize(
    ("min_freq", "max_vocab"), [(3, 60000), (1, 60000), (4, 40), (3, 16), (1, 5)]
)
def test_from_counts_equals_make_vocab(fastai_data, min_freq, max_vocab):
    counts = _counts_with_ties()
    expected = fastai_data.make_vocab(counts, min_freq=min_freq, max_vocab=max_vocab)
    vocab = Vocab.from_counts(counts, min_freq=min_freq, max_vocab=max_vocab)
    assert vocab.itos == expected
    assert len(vocab) % 8 == 0


def test_from_tokens_equals_make_vocab_and_numericalize(fastai_data, docs):
    counts = collections.Counter(t for doc in docs for t in doc)
    vocab = Vocab.from_tokens(docs, min_freq=2)
    expected = fastai_data.make_vocab(counts, min_freq=2)
    assert vocab.itos == expected
    assert vocab.itos[:9] == fastai_data.defaults.text_spec_tok  # xxunk 0, xxpad 1, xxbos 2 ...
    num = fastai_data.Numericalize(min_freq=2)
    num.setup(docs)
    assert num.vocab == vocab.itos
    probe = [*docs[-2], "never-seen", "xxfake"]
    ids = vocab.numericalize(probe)
    assert ids.dtype == np.int32 and ids.shape == (len(probe),)
    assert ids.tolist() == num.encodes(probe).tolist()
    assert ids[-2:].tolist() == [0, 0]
    assert vocab.ids_to_tokens(vocab.numericalize(docs[0])) == docs[0]


def test_size_multiple_of_eight_gets_eight_fakes():
    counts = collections.Counter({f"t{i}": 5 for i in range(7)})  # 9 specials + 7 = 16
    vocab = Vocab.from_counts(counts)
    assert len(vocab) == 24 and vocab.itos[16:] == ["xxfake"] * 8


def test_save_load_roundtrip_readable_json(tmp_path):
    itos = ["xxunk", "xxpad", "a b", "line\nbreak", "tab\there", "é😀", '"quote"', "\\", "xxfake"]
    path = tmp_path / "vocab.json"
    Vocab(itos).save(path)
    text = path.read_text("utf-8")
    assert "é😀" in text and len(text.splitlines()) > len(itos)  # one token per line
    assert json.loads(text)["itos"] == itos
    loaded = Vocab.load(path)
    assert loaded == Vocab(itos) and loaded.stoi["line\nbreak"] == 3


def test_load_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  nope")
    with pytest.raises(ValueError, match=r"bad.json: not JSON .*line 2"):
        Vocab.load(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="key 'format'"):
        Vocab.load(bad)
    bad.write_text(json.dumps({"format": "ulmfit_jax.text.vocab", "version": 1, "itos": ["a", 3]}))
    with pytest.raises(ValueError, match="entry 1 is int"):
        Vocab.load(bad)
    with pytest.raises(IndexError, match="id 5 outside"):
        Vocab(["a", "b"]).ids_to_tokens([1, 5])


def test_from_fastai_itos_pickle(tmp_path, docs):
    from fastcore.xtras import save_pickle

    from ulmfit_jax.convert.fastai_files import read_vocab

    vocab = Vocab.from_tokens(docs, min_freq=1)
    path = tmp_path / "itos.pkl"
    save_pickle(path, vocab.itos)
    assert Vocab(read_vocab(path)) == vocab
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(collections.OrderedDict(a=1)))
    with pytest.raises(pickle.UnpicklingError):
        read_vocab(evil)
