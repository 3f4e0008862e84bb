"""Property-based fuzzing: random bytes and unicode into every reader of user input.

Readers (CSV, aclImdb-style text folders, vocab JSON, fastai vocab pickles and weight files)
may only raise their documented `UserError` subclasses; the tokenizer and a saved classifier's
`predict_proba` / `predict` never raise on any string. Examples are few and small, each with a
deadline, so the module stays fast and a hang fails instead of stalling the suite.
"""

import contextlib
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ulmfit_jax.errors import DataError, ModelFileError
from ulmfit_jax.text import sources
from ulmfit_jax.text.fastai_tokenizer import FastaiTokenizer
from ulmfit_jax.text.vocab import Vocab

FUZZ = settings(max_examples=40, deadline=timedelta(seconds=10),
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# Raw bytes, and text that looks like CSV: quotes, commas, newlines, NULs, non-ASCII.
csv_like = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\t\x00é€\U0001f600')), max_size=80)
raw_bytes = st.binary(max_size=200) | csv_like.map(lambda t: t.encode("utf-8"))


def read_everything(dataset: sources.TextDataset) -> None:
    for split in (dataset.train, dataset.valid, dataset.unsup):
        if split is not None:
            for doc in split:
                assert isinstance(doc.text, str)


@FUZZ
@given(data=raw_bytes, header=st.booleans(), errors=st.sampled_from(["strict", "replace"]))
def test_csv_reader_only_raises_data_errors(data, header, errors):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "train.csv"
        path.write_bytes(data)
        with contextlib.suppress(DataError):
            read_everything(sources.csv_dataset(path, header=header, errors=errors))


@FUZZ
@given(pos=raw_bytes, neg=raw_bytes, errors=st.sampled_from(["strict", "replace"]))
def test_text_folder_reader_only_raises_data_errors(pos, neg, errors):
    with tempfile.TemporaryDirectory() as d:
        for label, data in (("pos", pos), ("neg", neg)):
            (Path(d) / "train" / label).mkdir(parents=True)
            (Path(d) / "train" / label / "0_1.txt").write_bytes(data)
        with contextlib.suppress(DataError):
            read_everything(sources.imdb_folder(d, valid=None, errors=errors))


@pytest.fixture(scope="module")
def tokenizer():
    return FastaiTokenizer()


@FUZZ
@given(texts=st.lists(st.text(max_size=60), min_size=1, max_size=3))
def test_tokenizer_returns_tokens_for_any_text(tokenizer, texts):
    tokens = tokenizer.tokenize(texts)
    assert len(tokens) == len(texts)
    assert all(doc[0] == "xxbos" and all(isinstance(t, str) and t for t in doc)
               for doc in tokens)


@FUZZ
@given(data=raw_bytes)
def test_vocab_file_reader_only_raises_model_file_errors(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "vocab.json"
        path.write_bytes(data)
        with pytest.raises(ModelFileError):
            Vocab.load(path)


@FUZZ
@given(data=st.binary(max_size=200))
def test_vocab_pickle_reader_only_raises_model_file_errors(data):
    from ulmfit_jax.convert.safe_pickle import loads_itos

    try:
        itos = loads_itos(data)
    except ModelFileError:
        return
    assert itos and all(isinstance(t, str) for t in itos)


@settings(FUZZ, max_examples=20)
@given(data=st.binary(max_size=300))
def test_fastai_weights_reader_only_raises_model_file_errors(data):
    from ulmfit_jax.convert.fastai_files import load_torch_state_dict

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "lm.pth"
        path.write_bytes(data)
        with pytest.raises(ModelFileError):
            load_torch_state_dict(path)


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory, tokenizer):
    from ulmfit_jax.api import TextClassifier
    from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig

    itos = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj",
            "the", "a", "film", ".", ","]
    encoder = AWDLSTMConfig(vocab_size=len(itos), emb_size=8, hidden_size=8, n_layers=1)
    config = ClassifierConfig(encoder=encoder, n_classes=2, bptt=8, max_len=32,
                              head_sizes=(8,))
    path = tmp_path_factory.mktemp("clf") / "classifier"
    TextClassifier.create(config, itos, seed=0).with_tokenizer(tokenizer, ["neg", "pos"]).save(
        path)
    return TextClassifier.load(path)


@FUZZ
@given(texts=st.lists(st.text(max_size=80), min_size=1, max_size=2))
def test_predict_gives_a_distribution_and_its_label_for_any_text(saved_classifier, texts):
    probs = saved_classifier.predict_proba(texts)
    assert probs.shape == (len(texts), 2) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    assert saved_classifier.predict(texts) == [["neg", "pos"][i] for i in probs.argmax(-1)]
