"""Data preparation: source -> token cache -> vocab -> classifier and LM corpora."""

import csv

import numpy as np
import pytest

from tests.synthetic import write_separable_csvs
from ulmfit_jax.text.fastai_tokenizer import FastaiTokenizer
from ulmfit_jax.trainer.config import base_config
from ulmfit_jax.trainer.data import prepare_data


def csv_config(train, valid, **data):
    config = base_config()
    config.data.update(source="csv", path=str(train), valid_path=str(valid), workers=0, **data)
    config.model.update(min_freq=2, max_vocab=1000)
    return config


@pytest.fixture
def csvs(tmp_path):
    return write_separable_csvs(tmp_path, n_train=60, n_valid=20)


def rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_corpora_labels_vocab_and_lm_documents(csvs, tmp_path):
    train, valid = csvs
    data = prepare_data(csv_config(train, valid), tmp_path / "run")
    assert data.class_names == ["neg", "pos"]
    for corpus, path in ((data.clf_train, train), (data.clf_valid, valid)):
        expected = rows(path)
        assert corpus.num_docs == len(expected)
        assert [data.class_names[i] for i in corpus.labels] == [label for label, _ in expected]
        tokens = FastaiTokenizer().tokenize([expected[0][1]])[0]
        np.testing.assert_array_equal(corpus.doc(0), data.vocab.numericalize(tokens))
    # Vocab: specials first, every keyword (frequent) in, written for later stages.
    assert data.vocab.itos[:2] == ["xxunk", "xxpad"]
    assert {"splendid", "awful"} <= set(data.vocab.itos)
    assert (tmp_path / "run" / "vocab.json").exists()
    # The LM reads every classifier text (train and valid), without labels, split 90/10.
    lm_docs = [tuple(c.doc(i)) for c in (data.lm_train, data.lm_valid) for i in range(c.num_docs)]
    clf_docs = [tuple(c.doc(i)) for c in (data.clf_train, data.clf_valid)
                for i in range(c.num_docs)]
    assert sorted(lm_docs) == sorted(clf_docs)
    assert data.lm_valid.num_docs == 8 and data.lm_train.labels is None


def test_rerun_reuses_cache_and_saved_vocab(csvs, tmp_path):
    train, valid = csvs
    first = prepare_data(csv_config(train, valid), tmp_path / "run")
    cached = sorted(p.name for p in (tmp_path / "run" / "cache").iterdir())
    config = csv_config(train, valid)
    config.model.min_freq = 50  # ignored: the workdir's vocab.json wins
    second = prepare_data(config, tmp_path / "run")
    assert second.vocab.itos == first.vocab.itos
    assert sorted(p.name for p in (tmp_path / "run" / "cache").iterdir()) == cached
    np.testing.assert_array_equal(second.clf_train.ids, first.clf_train.ids)


def test_max_docs_draws_a_seeded_random_subset(csvs, tmp_path):
    train, valid = csvs
    config = csv_config(train, valid, max_train_docs=10, max_valid_docs=5)
    config.model.min_freq = 1  # no xxunk: documents compare by their words
    a = prepare_data(config, tmp_path / "a")
    b = prepare_data(config, tmp_path / "b")
    assert (a.clf_train.num_docs, a.clf_valid.num_docs) == (10, 5)
    np.testing.assert_array_equal(a.clf_train.ids, b.clf_train.ids)
    full = prepare_data(csv_config(train, valid), tmp_path / "full")
    def words(data, i):  # each run has its own vocab: compare tokens, not ids
        return [data.vocab.itos[t] for t in data.clf_train.doc(i)]

    full_docs = [words(full, i) for i in range(full.clf_train.num_docs)]
    picked = [full_docs.index(words(a, i)) for i in range(10)]
    assert picked == sorted(picked) and picked != list(range(10))  # random, in file order


def test_a_source_is_one_registry_entry_for_loading_checking_and_messages(csvs, tmp_path,
                                                                          monkeypatch):
    """A new source needs only its entry: the config check, loading and the pretraining
    split rule all follow it."""
    from ulmfit_jax.errors import ConfigError
    from ulmfit_jax.text import sources
    from ulmfit_jax.trainer.config import check_config
    from ulmfit_jax.trainer.data import source_name

    assert {n for n, e in sources.SOURCES.items() if e.pretraining} == {"wikitext", "text_files"}
    assert {n for n, e in sources.SOURCES.items() if "path" in e.required} == {
        "csv", "imdb_folder", "tfds", "wikitext", "text_files"}
    train, valid = csvs
    entry = sources.SourceEntry(lambda s: sources.csv_dataset(s.valid_path, None),
                                required=("valid_path",))
    monkeypatch.setitem(sources.SOURCES, "valid_only", entry)
    config = csv_config(train, valid)
    config.data.update(source="valid_only", path="")
    check_config(config)
    data = prepare_data(config, tmp_path / "run")
    assert data.clf_train.num_docs + data.clf_valid.num_docs == len(rows(valid))
    assert source_name(config.data) == "data source 'valid_only'"
    config.data.valid_path = ""
    with pytest.raises(ConfigError, match=r"config\.data\.valid_path=''.*'valid_only'"):
        check_config(config)
