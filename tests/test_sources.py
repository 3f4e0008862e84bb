"""Sources: embedded corpus and its splits, CSV, aclImdb folders, tensorflow-datasets, bad input."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ulmfit_jax.text.sources import (
    DataError,
    Document,
    csv_dataset,
    imdb_folder,
    join_fields,
    movie_reviews_csv,
    movie_reviews_imdb,
    movie_reviews_lm,
    movie_reviews_rotten_tomatoes,
    sort_labels,
    tfds_dataset,
)
from ulmfit_jax.text.sources import movie_reviews as movie_reviews_module

# ---------------------------------------------------------------- embedded corpus


@pytest.fixture(scope="module")
def raw_rows() -> list[tuple[str, str, str]]:
    """The embedded CSV read independently (csv module), as (text, label, source)."""
    with movie_reviews_csv().open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["text", "label", "source"]
    return [tuple(r) for r in rows[1:]]


@pytest.fixture(scope="module")
def imdb():
    return movie_reviews_imdb()


@pytest.fixture(scope="module")
def imdb_docs(imdb) -> dict[str, list[Document]]:
    return {"train": list(imdb.train), "valid": list(imdb.valid)}


def test_embedded_csv_has_the_documented_duplicates(raw_rows):
    counts = Counter(text for text, _, source in raw_rows if source == "imdb")
    assert sum(counts.values()) == 25_000
    assert sum(1 for c in counts.values() if c > 1) == 92
    assert sum(c - 1 for c in counts.values()) == 96
    rt = Counter(text for text, _, source in raw_rows if source == "rotten_tomatoes")
    assert sum(rt.values()) == 8_530 and max(rt.values()) == 1


def test_imdb_split_sizes_and_labels(imdb, imdb_docs, raw_rows):
    distinct = {text: label for text, label, source in raw_rows if source == "imdb"}
    assert imdb.labels == ["neg", "pos"]
    assert len(imdb.train) + len(imdb.valid) == len(distinct) == 24_904
    assert (len(imdb.train), len(imdb.valid)) == (19_924, 4_980)
    assert [len(imdb_docs[s]) for s in ("train", "valid")] == [len(imdb.train), len(imdb.valid)]
    names = {"0": "neg", "1": "pos"}
    for doc in imdb_docs["train"] + imdb_docs["valid"]:
        assert doc.label == names[distinct[doc.text]]


def test_imdb_split_is_stratified_and_disjoint(imdb_docs, raw_rows):
    per_class = Counter(label for _, label, _ in
                        {(t, lab, s) for t, lab, s in raw_rows if s == "imdb"})
    valid = Counter(doc.label for doc in imdb_docs["valid"])
    for raw, name in (("0", "neg"), ("1", "pos")):
        assert valid[name] == int(np.floor(0.2 * per_class[raw] + 0.5))
    train_texts = [d.text for d in imdb_docs["train"]]
    valid_texts = [d.text for d in imdb_docs["valid"]]
    assert len(set(train_texts)) == len(train_texts) and len(set(valid_texts)) == len(valid_texts)
    assert not set(train_texts) & set(valid_texts)


def test_imdb_split_is_deterministic_and_seeded(imdb, imdb_docs):
    again = movie_reviews_imdb()
    assert again.fingerprint() == imdb.fingerprint()
    assert [d.text for d in again.valid] == [d.text for d in imdb_docs["valid"]]
    other = movie_reviews_imdb(seed=7)
    assert other.fingerprint() != imdb.fingerprint()
    assert {d.text for d in other.valid} != {d.text for d in imdb_docs["valid"]}
    smaller = movie_reviews_imdb(valid_fraction=0.1)
    assert len(smaller.valid) == 2_490 and len(smaller.train) == 24_904 - 2_490


def test_imdb_pairs_give_class_indices(imdb, imdb_docs):
    pairs = imdb.valid.as_pairs()
    first = next(iter(pairs))
    assert first == (imdb_docs["valid"][0].text, imdb.labels.index(imdb_docs["valid"][0].label))
    assert len(pairs) == len(imdb.valid) and pairs.fingerprint() != imdb.valid.fingerprint()


def test_rotten_tomatoes_and_lm_corpus(raw_rows):
    rt = movie_reviews_rotten_tomatoes()
    assert rt.labels == ["neg", "pos"]
    assert (len(rt.train), len(rt.valid)) == (6_824, 1_706)
    assert Counter(d.label for d in rt.valid) == {"neg": 853, "pos": 853}
    lm = movie_reviews_lm()
    distinct = {text for text, _, _ in raw_rows}
    assert lm.labels == [] and len(lm.train) + len(lm.valid) == len(distinct)
    texts = list(lm.lm_texts())
    assert len(texts) == len(distinct) and set(texts) == distinct
    assert next(iter(lm.train)).label is None


def test_embedded_corpus_is_found_without_importing_the_package():
    code = ("import sys; from ulmfit_jax.text.sources import movie_reviews_csv; "
            "p = movie_reviews_csv(); assert p.is_file(), p; "
            "assert 'movie_reviews' not in sys.modules and 'pandas' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_embedded_checksum_mismatch_names_the_file(monkeypatch):
    monkeypatch.setattr(movie_reviews_module, "CSV_SHA256", "0" * 64)
    with pytest.raises(DataError, match=r"combined_movie_reviews\.csv: sha256 .* differs"):
        movie_reviews_imdb()


# ---------------------------------------------------------------- CSV


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


AG_LIKE = (
    '"3","Wall St. Bears","Short-sellers are seeing green again."\n'
    '"4","New chip","A faster\nprocessor, ""quoted"" text."\n'
    '"3","Oil prices","Crude rises."\n'
    '"1","Talks","Leaders meet."\n'
)


def test_csv_lecun_layout_joins_fields_like_fastai(tmp_path):
    import pandas as pd
    from fastai.text.core import _join_texts

    path = write(tmp_path / "train.csv", AG_LIKE)
    ds = csv_dataset(path, path)
    df = pd.read_csv(path, header=None)
    expected = list(_join_texts(df[[1, 2]], mark_fields=True))
    assert [d.text for d in ds.train] == expected
    assert [d.label for d in ds.train] == ["3", "4", "3", "1"]
    assert join_fields(["a", "b"], mark_fields=False) == _join_texts(
        pd.DataFrame({"x": ["a"], "y": ["b"]}), mark_fields=False)[0]


def test_csv_numeric_labels_sort_like_fastai(tmp_path):
    import pandas as pd
    from fastai.data.transforms import CategoryMap

    rows = "".join(f'"{lab}","text {i}"\n' for i, lab in enumerate([10, 2, 1, 2, 10, 1]))
    path = write(tmp_path / "t.csv", rows)
    fastai_order = [str(v) for v in CategoryMap(pd.read_csv(path, header=None)[0])]
    assert csv_dataset(path, path).labels == fastai_order == ["1", "2", "10"]
    assert sort_labels(["b", "a", "10"]) == ["10", "a", "b"]


def test_csv_header_named_columns_and_unlabelled(tmp_path):
    path = write(tmp_path / "h.csv", "id,body,cls\n1,hello there,x\n2,general kenobi,y\n")
    ds = csv_dataset(path, path, header=True, label_cols=["cls"], text_cols=["body"])
    assert [(d.text, d.label) for d in ds.train] == [("hello there", "x"), ("general kenobi", "y")]
    lm = csv_dataset(path, path, header=True, label_cols=(), text_cols=["body"])
    assert lm.labels == [] and [d.label for d in lm.train] == [None, None]
    with pytest.raises(DataError, match=r"h\.csv:1: no column named 'nope'"):
        csv_dataset(path, header=True, label_cols=["nope"])


def test_csv_multi_label_columns_and_delimiter(tmp_path):
    path = write(tmp_path / "m.csv", "a,b,first text\nb,,second text\n,,third text\n")
    ds = csv_dataset(path, path, label_cols=(0, 1))
    assert ds.multi_label and ds.labels == ["a", "b"]
    assert [d.label for d in ds.train] == [("a", "b"), ("b",), ()]
    assert [ds.train.label_id(d.label) for d in ds.train] == [[0, 1], [1], []]
    delim = write(tmp_path / "d.csv", "a;b,one\nb,two\n")
    assert [d.label for d in csv_dataset(delim, delim, label_delim=";").train] == [("a", "b"),
                                                                                   ("b",)]


def test_csv_stratified_split_is_order_independent(tmp_path):
    rows = [f'"{i % 3}","document number {i}"\n' for i in range(90)]
    a = csv_dataset(write(tmp_path / "a.csv", "".join(rows)), valid_fraction=0.2, seed=1)
    rng = np.random.default_rng(0)
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    b = csv_dataset(write(tmp_path / "b.csv", "".join(shuffled)), valid_fraction=0.2, seed=1)
    assert Counter(d.label for d in a.valid) == {"0": 6, "1": 6, "2": 6}
    assert {d.text for d in a.valid} == {d.text for d in b.valid}
    assert not {d.text for d in a.valid} & {d.text for d in a.train}
    assert len(a.train) == 72


def test_csv_dedupe_keeps_first_copy_and_drops_conflicts(tmp_path, caplog):
    path = write(tmp_path / "dup.csv", "a,same\nb,other\na,same\na,clash\nb,clash\nb,last\n")
    with caplog.at_level(logging.INFO, logger="ulmfit_jax.text.sources"):
        ds = csv_dataset(path, path, dedupe=True)
    assert [(d.text, d.label) for d in ds.train] == [("same", "a"), ("other", "b"), ("last", "b")]
    assert "conflicting labels" in caplog.text


def test_csv_fingerprint_is_stable_and_content_sensitive(tmp_path):
    path = write(tmp_path / "f.csv", AG_LIKE)
    fp = csv_dataset(path, path).fingerprint()
    copy = tmp_path / "copy"
    copy.mkdir()
    assert csv_dataset(write(copy / "f.csv", AG_LIKE), copy / "f.csv").fingerprint() == fp
    assert csv_dataset(path, path, mark_fields=False).fingerprint() != fp
    assert csv_dataset(write(path, AG_LIKE.replace("Crude", "Oil")), path).fingerprint() != fp


def test_csv_change_after_scan_is_detected(tmp_path):
    path = write(tmp_path / "c.csv", AG_LIKE)
    ds = csv_dataset(path, path)
    write(path, AG_LIKE + '"2","More","news"\n')
    with pytest.raises(DataError, match="changed since it was scanned"):
        list(ds.train)


# ---------------------------------------------------------------- bad input (CSV)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: not found"):
        csv_dataset(tmp_path / "nope.csv")


def test_ragged_row_names_file_and_line(tmp_path):
    # The quoted field spans lines 2-3, so the ragged row is on line 4.
    path = write(tmp_path / "r.csv", '1,"a"\n2,"multi\nline"\n3,"x","extra"\n')
    with pytest.raises(DataError, match=r"r\.csv:4: expected 2 fields, got 3"):
        csv_dataset(path)


def test_malformed_csv_names_file(tmp_path):
    path = write(tmp_path / "q.csv", '1,"ok"\n2,"bad"x\n')
    with pytest.raises(DataError, match=r"q\.csv:2: malformed CSV"):
        csv_dataset(path)


def test_undecodable_bytes_strict_and_replace(tmp_path):
    path = write(tmp_path / "u.csv", b'1,"fine"\n2,"caf\xe9"\n')
    with pytest.raises(DataError, match=r"u\.csv:2: cannot decode byte b'\\xe9' as utf-8"):
        csv_dataset(path)
    ds = csv_dataset(path, path, errors="replace")
    assert [d.text for d in ds.train] == ["fine", "caf\ufffd"]
    latin = csv_dataset(path, path, encoding="latin-1")
    assert [d.text for d in latin.train][1] == "café"


def test_empty_documents_skip_or_fail(tmp_path, caplog):
    path = write(tmp_path / "e.csv", '1,"a","b"\n2,"  ",""\n1,"c",""\n')
    with caplog.at_level(logging.WARNING, logger="ulmfit_jax.text.sources"):
        ds = csv_dataset(path, path)
    assert [d.text for d in ds.train] == ["xxfld 1 a xxfld 2 b", "xxfld 1 c xxfld 2 "]
    assert "skipped 1 empty documents" in caplog.text
    with pytest.raises(DataError, match=r"e\.csv:2: empty document"):
        csv_dataset(path, empty="error")


def test_missing_and_unknown_labels(tmp_path):
    path = write(tmp_path / "l.csv", '1,"a"\n,"b"\n')
    with pytest.raises(DataError, match=r"l\.csv:2: missing label"):
        csv_dataset(path)
    train = write(tmp_path / "train.csv", '1,"a"\n2,"b"\n')
    valid = write(tmp_path / "valid.csv", '1,"c"\n3,"d"\n')
    with pytest.raises(DataError, match=r"valid\.csv:2: unknown label '3'"):
        csv_dataset(train, valid)
    with pytest.raises(DataError, match=r"train\.csv:2: unknown label '2'"):
        csv_dataset(train, labels=["1"])
    assert csv_dataset(train, train, labels=["1", "2", "3"]).labels == ["1", "2", "3"]


def test_bad_policy_names_are_rejected(tmp_path):
    path = write(tmp_path / "p.csv", AG_LIKE)
    with pytest.raises(ValueError, match="empty must be"):
        csv_dataset(path, empty="drop")
    with pytest.raises(ValueError, match="errors must be"):
        csv_dataset(path, errors="ignore")


# ---------------------------------------------------------------- aclImdb folders


def make_acl_imdb(root: Path) -> Path:
    texts = {
        "train/pos": ["great film", "loved it", "superb acting"],
        "train/neg": ["awful", "boring plot", "waste of time"],
        "train/unsup": ["some unlabelled review", "another one"],
        "test/pos": ["brilliant"],
        "test/neg": ["dull"],
    }
    for folder, docs in texts.items():
        (root / folder).mkdir(parents=True)
        for i, text in enumerate(docs):
            write(root / folder / f"{i}_7.txt", text)
    write(root / "train" / "pos" / "notes.md", "not a document")
    return root


def test_imdb_folder_layout(tmp_path):
    ds = imdb_folder(make_acl_imdb(tmp_path / "aclImdb"))
    assert ds.labels == ["neg", "pos"]
    assert [(d.text, d.label) for d in ds.train][:2] == [("awful", "neg"), ("boring plot", "neg")]
    assert len(ds.train) == 6 and {d.label for d in ds.train} == {"neg", "pos"}
    assert [(d.text, d.label) for d in ds.valid] == [("dull", "neg"), ("brilliant", "pos")]
    assert [d.label for d in ds.unsup] == [None, None]
    assert len(list(ds.lm_texts())) == 10


def test_imdb_folder_split_from_train(tmp_path):
    ds = imdb_folder(make_acl_imdb(tmp_path / "aclImdb"), valid=None, valid_fraction=1 / 3)
    assert Counter(d.label for d in ds.valid) == {"neg": 1, "pos": 1}
    assert len(ds.train) == 4


def test_imdb_folder_bad_input(tmp_path):
    with pytest.raises(DataError, match=r"missing: folder not found"):
        imdb_folder(tmp_path / "missing")
    root = make_acl_imdb(tmp_path / "aclImdb")
    write(root / "train" / "pos" / "9_1.txt", b"line one\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"9_1\.txt:2: cannot decode"):
        imdb_folder(root)
    assert "bad \ufffd byte" in {d.text.splitlines()[-1] for d in
                                 imdb_folder(root, errors="replace").train}
    write(root / "train" / "pos" / "9_1.txt", "   \n")
    assert len(imdb_folder(root).train) == 6
    with pytest.raises(DataError, match=r"9_1\.txt: empty document"):
        imdb_folder(root, empty="error")
    (root / "test" / "meh").mkdir()
    with pytest.raises(DataError, match=r"test/meh: unknown label folder"):
        imdb_folder(root)


# ---------------------------------------------------------------- tensorflow-datasets


@pytest.fixture(scope="module")
def tfds():
    import tensorflow_datasets

    return tensorflow_datasets


def test_tfds_known_datasets_through_mock_data(tfds):
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        imdb = tfds_dataset("imdb_reviews")
        ag = tfds_dataset("ag_news_subset")
        yelp = tfds_dataset("yelp_polarity_reviews")
        trec6 = tfds_dataset("trec")
        trec50 = tfds_dataset("trec", label_field="label-fine")
        raw = tfds.data_source("ag_news_subset", split="train")
        raw_ag = [raw[i] for i in range(len(raw))]
        ag_docs = list(ag.train)
    assert imdb.labels == ["neg", "pos"] and len(imdb.unsup) == 6 and len(imdb.valid) == 6
    assert ag.labels == ["Business", "Sci/Tech", "Sports", "World"] and ag.unsup is None
    names = ["World", "Sports", "Business", "Sci/Tech"]
    assert ag_docs == [Document(f"xxfld 1 {e['title']} xxfld 2 {e['description']}",
                                names[int(e["label"])]) for e in raw_ag]
    assert yelp.labels == ["1", "2"]
    assert trec6.labels == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert len(trec50.labels) == 47


@pytest.fixture(scope="module")
def prepared_dbpedia(tfds, tmp_path_factory) -> Path:
    """A tiny DBpedia-shaped dataset really prepared in array_record (no TF, no network)."""

    class Dbpedia(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "title": tfds.features.Text(), "content": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=["Company", "Artist", "Athlete"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(30), "test": self._generate_examples(6)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"title": f"t{i}", "content": f"content {i} é", "label": i % 3}

    data_dir = tmp_path_factory.mktemp("tfds")
    Dbpedia(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_prepared_array_record_dataset(prepared_dbpedia):
    ds = tfds_dataset("dbpedia", data_dir=str(prepared_dbpedia))
    assert ds.labels == ["Artist", "Athlete", "Company"]
    assert len(ds.train) == 30 and len(ds.valid) == 6
    names = ["Company", "Artist", "Athlete"]
    expected = {Document(f"xxfld 1 t{i} xxfld 2 content {i} é", names[i % 3]) for i in range(30)}
    assert set(ds.train) == expected
    split = tfds_dataset("dbpedia", data_dir=str(prepared_dbpedia), valid_split=None)
    assert Counter(d.label for d in split.valid) == {n: 2 for n in names}
    again = tfds_dataset("dbpedia", data_dir=str(prepared_dbpedia), valid_split=None)
    assert split.fingerprint() == again.fingerprint() != ds.fingerprint()


def test_tfds_unprepared_dataset_fails_fast_with_instructions(tfds, tmp_path):
    with pytest.raises(DataError, match=r"'imdb_reviews' is not prepared .*download_and_prepare"):
        tfds_dataset("imdb_reviews", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="pass text_fields and label_field"):
        tfds_dataset("some_other_set", data_dir=str(tmp_path))


def test_tfds_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"ulmfit-jax\[tfds\]"):
        tfds_dataset("imdb_reviews")


def test_package_docstring_lists_every_source():
    import ulmfit_jax.text.sources as sources

    for name in ("movie_reviews_imdb", "csv_dataset", "imdb_folder", "tfds_dataset"):
        assert name in sources.__doc__
    assert os.path.basename(movie_reviews_csv()) == "combined_movie_reviews.csv"
