"""Pretraining sources: WikiText-103 as distributed, plain-text folders and files."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from tests.synthetic import wikitext_article, write_wikitext
from ulmfit_jax.text.fastai_tokenizer import FastaiTokenizer
from ulmfit_jax.text.sources import DataError, text_files, wikitext


def test_wikitext_one_article_per_document(tmp_path):
    write_wikitext(tmp_path, n_train=5, n_valid=2, n_test=3)
    data = wikitext(tmp_path)
    train = list(data.train.texts())
    assert (len(data.train), len(data.valid), len(data.test)) == (5, 2, 3)
    assert data.labels == [] and data.unsup is None
    for i, text in enumerate(train):
        # Each document is one whole article: its heading, its sections, nothing of the next.
        assert text.count(" = = Section") == 2
        assert f" = Train article {i} = \n" in text
        assert "Train article" not in text.replace(f"Train article {i} ", "")
    # As fastai's preparation: the blank line before a heading opens the next article.
    assert [t.split("\n")[:2] for t in data.test.texts()] == [
        [" ", f" = Test article {i} = "] for i in range(3)]
    assert all(t.endswith(" . \n") for t in train)


def test_wikitext_text_kept_as_written_and_read_with_fastai_rules(tmp_path):
    rng = np.random.default_rng(1)
    article = wikitext_article("Alpha", rng, n_paragraphs=1)
    for split in ("train", "valid"):
        (tmp_path / f"wiki.{split}.tokens").write_text(article, encoding="utf-8")
    (text,) = wikitext(tmp_path).train.texts()
    assert text == article  # heading, newlines, <unk>, @,@ and @.@ untouched
    tokens = FastaiTokenizer().tokenize([text])[0]
    # fastai's fix_html (fastai/text/core.py) maps <unk> to xxunk and " @.@ " to ".".
    assert "xxunk" in tokens and "<unk>" not in tokens and "@.@" not in tokens
    assert "@,@" in tokens


def test_wikitext_test_file_is_optional_and_others_are_required(tmp_path):
    write_wikitext(tmp_path, n_train=3, n_valid=1)
    (tmp_path / "wiki.test.tokens").unlink()
    assert wikitext(tmp_path).test is None
    (tmp_path / "wiki.valid.tokens").unlink()
    with pytest.raises(DataError, match="wiki.valid.tokens: not found"):
        wikitext(tmp_path)
    with pytest.raises(DataError, match="folder not found"):
        wikitext(tmp_path / "missing")


def test_wikitext_bad_bytes_name_file_and_line(tmp_path):
    write_wikitext(tmp_path, n_train=2, n_valid=1)
    path = tmp_path / "wiki.train.tokens"
    n_lines = path.read_bytes().count(b"\n")
    path.write_bytes(path.read_bytes() + b" bad \xff byte \n")
    with pytest.raises(DataError, match=rf"wiki.train.tokens:{n_lines + 1}: cannot decode"):
        wikitext(tmp_path)


def test_wikitext_is_re_iterable_and_fingerprinted(tmp_path):
    write_wikitext(tmp_path / "a" / "wt", n_train=4, n_valid=1)
    data = wikitext(tmp_path / "a" / "wt")
    assert list(data.train.texts()) == list(data.train.texts())
    assert wikitext(tmp_path / "a" / "wt").fingerprint() == data.fingerprint()
    other = tmp_path / "b" / "wt"
    write_wikitext(other, n_train=4, n_valid=1)
    with (other / "wiki.train.tokens").open("a") as f:
        f.write(" = Extra = \n extra words \n")
    assert wikitext(other).train.fingerprint() != data.train.fingerprint()
    assert wikitext(other).valid.fingerprint() == data.valid.fingerprint()


def test_wikitext_streams_a_corpus_larger_than_its_memory_use(tmp_path):
    """Building and reading a ~20 MB corpus never holds more than a few MB of it."""
    write_wikitext(tmp_path, n_train=1, n_valid=1, n_test=0)
    path = tmp_path / "wiki.train.tokens"
    article = path.read_text()
    with path.open("w") as f:
        for i in range(20_000):
            f.write(article.replace("Train article 0", f"Article {i}"))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        data = wikitext(tmp_path)
        n_chars = sum(len(t) for t in data.train.texts())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data.train) == 20_000 and n_chars == size
    assert peak < size / 8, (peak, size)


def test_text_files_folder_one_document_per_file(tmp_path):
    for i in range(10):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"Document number {i}.\nSecond line.")
    (tmp_path / "notes.md").write_text("not a document")
    data = text_files(tmp_path, valid_fraction=0.2)
    texts = sorted(list(data.train.texts()) + list(data.valid.texts()))
    assert texts == [f"Document number {i}.\nSecond line." for i in range(10)]
    assert len(data.valid) == 2 and data.labels == []


def test_text_files_one_file_split_at_blank_lines(tmp_path):
    path = tmp_path / "dump.txt"
    path.write_text("First doc line one.\nline two.\n\n\n  \nSecond doc.\n\nThird doc.\n")
    valid = tmp_path / "valid.txt"
    valid.write_text("Held out one.\n\nHeld out two.")
    data = text_files(path, valid)
    assert list(data.train.texts()) == ["First doc line one.\nline two.\n", "Second doc.\n",
                                        "Third doc.\n"]
    assert list(data.valid.texts()) == ["Held out one.\n", "Held out two."]
    assert data.fingerprint() == text_files(path, valid).fingerprint()


def test_text_files_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.txt: not found"):
        text_files(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="no .txt files"):
        text_files(tmp_path)
    path = tmp_path / "dump.txt"
    path.write_bytes(b"fine\n\nstill fine\nbad \xff\n")
    with pytest.raises(DataError, match=r"dump.txt:4: cannot decode"):
        text_files(path)
