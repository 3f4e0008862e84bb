"""benchmarks/quickstart_frontier.py: the fastai side reads the documents and vocab our trainer
reads, the poller times every validation row once, and the smoke run of every side records
real points that the report turns into a table and a plot."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "quickstart_frontier.py"


@pytest.fixture
def frontier(monkeypatch):
    """The benchmark script as a module (it imports `benchmarks/common.py`)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("quickstart_frontier")


@pytest.fixture
def common(frontier):
    """The benchmarks' shared module (`chosen_documents`, `tfidf_accuracy`)."""
    return importlib.import_module("common")


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_documents_and_vocab_are_the_trainers(frontier, common, tmp_path):
    """Same classifier reviews, LM split and `max_lm_docs` draw as `prepare_data`, and
    fastai's tokens and `make_vocab` on them give our vocab, token for token."""
    import fastai.text.all as fa
    from frontier_fastai import tokenize

    from ulmfit_jax.trainer.data import prepare_data

    config = frontier.load_config(frontier.SMOKE_CONFIG,
                                  ["data.max_lm_docs=60", "data.lm_valid_fraction=0.2"])
    docs = common.chosen_documents(config)
    prepared = prepare_data(config, tmp_path)
    lm_tokens, counts = tokenize(docs.lm_texts, 0)
    assert fa.make_vocab(counts, min_freq=config.model.min_freq,
                         max_vocab=config.model.max_vocab) == prepared.vocab.itos

    def same_docs(indices, corpus):
        assert len(indices) == corpus.num_docs
        for k, i in enumerate(indices):
            np.testing.assert_array_equal(prepared.vocab.numericalize(lm_tokens[i]),
                                          corpus.doc(k))

    assert len(docs.lm_train) == 60
    same_docs(docs.lm_train, prepared.lm_train)
    same_docs(docs.lm_valid, prepared.lm_valid)
    clf_tokens, _ = tokenize([text for text, _ in docs.train + docs.valid], 0)
    for pairs, corpus, offset in ((docs.train, prepared.clf_train, 0),
                                  (docs.valid, prepared.clf_valid, len(docs.train))):
        assert [label for _, label in pairs] == corpus.labels.tolist()
        for k in range(corpus.num_docs):
            np.testing.assert_array_equal(
                prepared.vocab.numericalize(clf_tokens[offset + k]), corpus.doc(k))


def test_quickstart_documents_with_a_separate_lm_corpus(frontier, common):
    """configs/quickstart.py's sizes: every embedded text (30,091 + 3,343) for the LM, 2% of
    them held out, a 4,000-document sample trained on; 12,000 of the 19,924 training reviews."""
    docs = common.chosen_documents(frontier.load_config(ROOT / "configs" / "quickstart.py", []))
    assert len(docs.lm_texts) == 30_091 + 3_343
    assert len(docs.lm_valid) == round(0.02 * len(docs.lm_texts)) and len(docs.lm_train) == 4000
    assert np.intersect1d(docs.lm_train, docs.lm_valid).size == 0
    assert (len(docs.train), len(docs.valid)) == (12_000, 4_980)


def test_poller_times_each_complete_row_once(frontier, tmp_path):
    csv_path = tmp_path / "metrics.csv"
    header = "stage,step,split,name,value\n"
    first = ("lm_fwd,10,valid,accuracy,0.2\nclassifier_fwd,5,train,accuracy,0.9\n"
             "classifier_fwd,5,valid,loss,0.6\nclassifier_fwd,5,valid,accuracy,0.75\n")
    csv_path.write_text(header + first + "classifier_fwd,10,valid,accuracy,0.8")  # half written
    seen: set = set()
    points = frontier.new_valid_points(frontier.complete_rows(csv_path), seen, 1.5)
    assert points == [
        {"stage": "lm_fwd", "epoch": 1, "minutes": 1.5, "accuracy": 0.2},
        {"stage": "classifier_fwd", "epoch": 1, "minutes": 1.5, "accuracy": 0.75},
    ]
    csv_path.write_text(header + first + "classifier_fwd,10,valid,accuracy,0.81\n")
    points = frontier.new_valid_points(frontier.complete_rows(csv_path), seen, 2.0)
    assert points == [{"stage": "classifier_fwd", "epoch": 2, "minutes": 2.0, "accuracy": 0.81}]


@pytest.mark.parametrize("override, key", [("classifier.schedule=stlr", "classifier.schedule"),
                                           ("data.no_such_key=1", "no_such_key")])
def test_a_config_fastai_cannot_run_is_one_line(tmp_path, override, key):
    out = tmp_path / "results.jsonl"
    proc = _run("--side", "fastai", "--config", "configs/tiny.py", "--set", override,
                "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and key in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_15min_config_changes_only_budget_knobs(frontier):
    quickstart = _flat(frontier.load_config(ROOT / "configs" / "quickstart.py", []).to_dict())
    budget = _flat(frontier.load_config(ROOT / "configs" / "quickstart_15min.py", []).to_dict())
    changed = {k for k, v in budget.items() if quickstart[k] != v}
    # More data, longer reviews, more epochs: the model, tokenizer and LRs stay the quickstart's.
    assert changed == {"data.max_train_docs", "data.max_lm_docs", "classifier.max_len",
                       "classifier.max_tokens", "classifier.phases"}
    assert budget["data.max_train_docs"] == 0  # every training review
    def lrs(phases):
        return [{k: v for k, v in p.items() if k != "epochs"} for p in phases]

    assert lrs(budget["classifier.phases"]) == lrs(quickstart["classifier.phases"])


def _increasing(minutes: list[float]) -> bool:
    return minutes == sorted(minutes) and minutes[0] < minutes[-1]


@pytest.mark.slow
def test_smoke_run_of_every_side_and_report(frontier, common, tmp_path):
    out, plot, runs = tmp_path / "results.jsonl", tmp_path / "frontier.png", tmp_path / "runs"
    proc = _run("--smoke", "--side", "ours", "fastai", "tfidf", "--out", str(out), "--poll",
                "0.2", "--workdir", str(runs), "--keep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, fastai, tfidf = frontier.read_records(out)
    assert [r["side"] for r in (ours, fastai, tfidf)] == ["ours", "fastai", "tfidf"]
    for record in (ours, fastai, tfidf):
        assert record["config"] == "configs/tiny.py" and record["smoke"]
        assert record["cores"] == os.cpu_count() and len(record["load_before"]) == 3

    # configs/tiny.py: one LM epoch, then two classifier epochs (two phases).
    workdir = next(runs.glob("frontier-ours-*")) / "workdir"
    summary = json.loads((workdir / "metrics.json").read_text())
    valid_rows = [line.split(",") for line in (workdir / "metrics.csv").read_text().splitlines()
                  if line.startswith("classifier_fwd,") and ",valid,accuracy," in line]
    for record in (ours, fastai):
        clf = frontier.classifier_points(record)
        assert [p["epoch"] for p in clf] == [1, 2]
        assert [p["stage"] for p in record["points"]] == ["lm_fwd"] + ["classifier_fwd"] * 2
        minutes = [p["minutes"] for p in record["points"]] + [record["minutes"]]
        assert minutes[0] > 0 and _increasing(minutes)
        assert record["accuracy"] == clf[-1]["accuracy"]  # no ensemble: the last epoch's
    assert [p["accuracy"] for p in frontier.classifier_points(ours)] == [
        float(row[-1]) for row in valid_rows]
    assert ours["accuracy"] == summary["classifier_fwd"]["accuracy"]

    _, train, valid = common.classifier_documents(frontier.load_config(frontier.SMOKE_CONFIG, []))
    assert tfidf["accuracy"] == common.tfidf_accuracy(train, valid) and tfidf["points"] == []

    report = _run("--report", "--out", str(out), "--plot", str(plot))
    assert report.returncode == 0, report.stderr[-3000:]
    rows = [line for line in report.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3
    for record, row in zip((ours, fastai, tfidf), rows[1:], strict=True):
        assert row.startswith(f"| {record['side']} tiny (smoke) | {record['accuracy']:.1%} |")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
