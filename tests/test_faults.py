"""Faults and bad input: one-line user errors, data refused before training, a workdir owned by
one config and one process, damaged token caches, disk full (see README, "What happens when
things go wrong"). Damaged checkpoints and preemption: tests/test_preemption.py."""

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import separable_documents
from tests.test_token_cache import (
    ListVocab,
    Source,
    WhitespaceTokenizer,
    make_docs,
    visible_entries,
)
from ulmfit_jax.errors import (
    ConfigError,
    DataError,
    DiskFullError,
    ModelFileError,
    UserError,
    WorkdirError,
)
from ulmfit_jax.text import token_cache
from ulmfit_jax.text.token_cache import build_token_cache
from ulmfit_jax.text.tokenized_corpus import TokenizedCorpus
from ulmfit_jax.trainer.config import (
    FASTAI_CLASSIFIER_PHASES,
    base_config,
    check_config,
    load_config,
)
from ulmfit_jax.trainer.data import PreparedData
from ulmfit_jax.trainer.validate_data import check_classifier_data, check_lm_data
from ulmfit_jax.trainer.workdir import claim

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def tiny_config():
    return load_config(ROOT / "configs" / "tiny.py")


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)


def run_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", "--config", "configs/tiny.py", *args],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


# ------------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize("args, needles", [
    (["--config.lm.lrr=0.1"], ["'lrr'", 'Did you mean "lr"']),
    (["--config.lm.lr=abc"], ["--config.lm.lr=abc", "could not convert"]),
    (["--config=configs/nope.py"], ["--config", "configs/nope.py"]),
    (["--config.data.source=csv", "--config.data.path=/nonexistent/train.csv"],
     ["/nonexistent/train.csv: not found"]),
    (["--config.lm.schedule=cosine"], ["config.lm.schedule='cosine'", "one_cycle"]),
    (["--config.data.source=csv"], ["config.data.path=''", "config.data.source='csv'"]),
    (["--config.data.lm_source=text_files", "--config.data.path=corpus.txt",
      "--config.data.valid_fraction=0"],
     ["config.data.valid_fraction=0.0", "its validation split would be empty"]),
])
def test_user_errors_are_one_line_exit_2_and_leave_no_run(tmp_path, args, needles):
    proc = run_train("--workdir", str(tmp_path / "w"), *args)
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "w" / "run_config.json").exists()


def test_verbose_adds_the_traceback(tmp_path):
    proc = run_train("--workdir", str(tmp_path), "--verbose", "--config.data.source=csv",
                     "--config.data.path=/nonexistent/train.csv")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "DataError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: /nonexistent/train.csv: not found"


def test_run_cli_prints_user_errors_in_one_line_and_keeps_tracebacks_of_bugs():
    code = """
        import sys
        from ulmfit_jax.cli import run_cli
        from ulmfit_jax.errors import ModelFileError
        def main(argv):
            if sys.argv[-1] == "user":
                raise ModelFileError("m.pth: not a readable torch checkpoint")
            raise RuntimeError("a bug")
        run_cli(main)
    """
    assert_one_line_error(run_python(code, "user"), "m.pth: not a readable torch checkpoint")
    bug = run_python(code, "bug")
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "RuntimeError: a bug" in bug.stderr


def test_error_types_keep_the_builtins_callers_catch():
    assert issubclass(DataError, ValueError) and issubclass(ConfigError, ValueError)
    assert issubclass(ModelFileError, ValueError) and issubclass(DiskFullError, OSError)
    from ulmfit_jax.convert.safe_pickle import UnsafePickleError
    from ulmfit_jax.text.sources import DataError as SourcesDataError

    assert SourcesDataError is DataError and issubclass(UnsafePickleError, UserError)


@pytest.mark.parametrize("data, needles", [
    ({"source": "nope"}, ["config.data.source='nope'", "'csv'", "'wikitext'"]),
    ({"lm_source": "nope"}, ["config.data.lm_source='nope'", "'movie_reviews_lm'"]),
    ({"source": "imdb_folder"}, ["config.data.path=''", "config.data.source='imdb_folder'"]),
    ({"lm_source": "wikitext"}, ["config.data.path=''", "config.data.lm_source='wikitext'"]),
])
def test_check_config_refuses_unknown_sources_and_missing_required_keys(data, needles):
    config = base_config()
    config.data.update(**data)
    with pytest.raises(ConfigError) as e:
        check_config(config)
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)


def test_check_config_names_key_value_and_what_is_allowed():
    config = base_config()
    check_config(config)
    config.classifier.phases = (dict(freeze_to=-9, epochs=1, lr_max=1e-2, lr_div=1.0),)
    with pytest.raises(ConfigError, match=r"config\.classifier\.phases\[0\]\.freeze_to=-9 is "
                                          r"not allowed: an integer in \[-5, 5\]"):
        check_config(config)
    # The positional form of earlier versions, a missing key and an unknown one: named.
    for bad, key in [((-1, 1, 1e-2, 1.0), r"phases\[1\]=\(-1, 1, 0\.01, 1\.0\)"),
                     (dict(freeze_to=0, epochs=1, lr_max=1e-2), r"phases\[1\]=\{'freeze_to'"),
                     (dict(freeze_to=0, epochs=1, lr_max=1e-2, lr_div=1.0, lr=1), r"phases\[1\]")]:
        config.classifier.phases = (dict(freeze_to=-1, epochs=1, lr_max=1e-2, lr_div=1.0), bad)
        with pytest.raises(ConfigError, match=key + r".* not allowed: a dict with exactly the "
                                                     r"keys freeze_to, epochs, lr_max, lr_div"):
            check_config(config)
    config.classifier.phases = (dict(freeze_to=-1, epochs=0, lr_max=1e-2, lr_div=1.0),)
    with pytest.raises(ConfigError, match=r"phases\[0\]\.epochs=0 is not allowed"):
        check_config(config)


@pytest.mark.parametrize("key", ["classifier.alpha", "classifier.beta", "lm.alpha", "lm.beta"])
def test_check_config_refuses_negative_or_infinite_ar_tar_weights(key):
    config = base_config()
    assert (config.classifier.alpha, config.classifier.beta) == (2.0, 1.0)  # fastai's
    section, name = key.split(".")
    for bad in (-0.5, float("inf"), float("nan")):
        config[section][name] = bad
        with pytest.raises(ConfigError, match=rf"config\.{key}={bad!r} is not allowed: a "
                                              r"finite number >= 0"):
            check_config(config)
    config[section][name] = 0.0  # off
    check_config(config)


# ------------------------------------------------------------------------- data refused


def prepared(train_docs, train_labels, valid_docs, valid_labels, lm_docs=None,
             class_names=("neg", "pos")):
    lm = TokenizedCorpus.from_lists(lm_docs if lm_docs is not None else train_docs)
    return PreparedData(
        vocab=None, tokenizer=None, class_names=list(class_names),
        clf_train=TokenizedCorpus.from_lists(train_docs, train_labels),
        clf_valid=TokenizedCorpus.from_lists(valid_docs, valid_labels),
        lm_train=lm, lm_valid=lm,
    )


def small_config(batch_size=2):
    config = base_config()
    config.data.update(source="csv", path="reviews.csv")
    config.lm.batch_size = config.classifier.batch_size = batch_size
    return config


DOCS = [[2, 5, 6, 7]] * 40


@pytest.mark.parametrize("data, message", [
    (prepared([], [], DOCS[:4], [0, 1, 0, 1]), r"'csv' \(reviews.csv\), train split: no documents"),
    (prepared([[]] * 4, [0, 1, 0, 1], DOCS[:4], [0, 1, 0, 1]), "train split: 4 documents but no "
     "tokens"),
    (prepared(DOCS[:6], [1] * 6, DOCS[:2], [1, 1]), r"fewer than two classes \(\['pos'\]\)"),
    (prepared(DOCS[:6], [0, 1, 0, 1, 0, 1], DOCS[:3], [0, 1, 2], class_names=("a", "b", "c")),
     r"validation split: classes \['c'\] never occur in the train split"),
    (prepared(DOCS[:6], [0, 1] * 3, DOCS[:2], [0, 1]), None),
])
def test_classifier_data_that_cannot_train_is_refused(data, message):
    config = small_config()
    if message is None:  # six training documents cannot fill a batch of eight
        config.classifier.batch_size = 8
        message = r"6 documents cannot fill one batch of config.classifier.batch_size=8"
    with pytest.raises(DataError, match=message):
        check_classifier_data(data, config)


def test_lm_batch_size_larger_than_the_corpus_is_refused():
    config = small_config(batch_size=16)
    data = prepared(DOCS[:8], [0, 1] * 4, DOCS[:2], [0, 1], lm_docs=[[2, 3, 4]] * 3)
    with pytest.raises(DataError, match=r"LM training documents: 9 tokens cannot fill "
                                        r"config.lm.batch_size=16 rows; lower .* to 8"):
        check_lm_data(data, config)
    config.lm.batch_size = 8
    check_lm_data(data, config)


def test_few_documents_and_imbalance_are_warnings(caplog):
    data = prepared(DOCS[:24], [0] * 22 + [1] * 2, DOCS[:5], [0, 1, 0, 0, 0])
    with caplog.at_level(logging.WARNING, logger="ulmfit_jax.trainer.validate_data"):
        check_classifier_data(data, small_config())
    messages = [r.getMessage() for r in caplog.records]
    assert any("validation split: only 5 documents" in m for m in messages), messages
    assert any("strongly imbalanced classes (neg: 22, pos: 2)" in m for m in messages), messages
    assert not any("train split: only" in m for m in messages)


def write_csv(path: Path, rows) -> Path:
    path.write_text("".join(f'{label},"{text}"\n' for label, text in rows))
    return path


def csv_config(path: Path):
    config = tiny_config()
    config.data.update(source="csv", path=str(path), max_train_docs=0, max_valid_docs=0)
    return config


def test_single_class_corpus_is_refused_before_any_training_and_leaves_no_run(tmp_path):
    from ulmfit_jax.trainer import train_and_evaluate

    path = write_csv(tmp_path / "one.csv", [("pos", f"a fine film number {i}") for i in range(30)])
    with pytest.raises(DataError, match="one.csv.*train split: fewer than two classes"):
        train_and_evaluate(csv_config(path), tmp_path / "w", "all")
    left = sorted(p.name for p in (tmp_path / "w").iterdir())
    assert left == [".lock", "cache"]  # no checkpoints, vocab or run config for a corrected rerun


def test_refused_data_never_deletes_an_earlier_runs_results(tmp_path):
    from ulmfit_jax.trainer import train_and_evaluate

    (tmp_path / "w" / "models" / "lm_fwd").mkdir(parents=True)  # made before run_config.json
    path = write_csv(tmp_path / "one.csv", [("pos", f"a fine film number {i}") for i in range(30)])
    with pytest.raises(DataError, match="fewer than two classes"):
        train_and_evaluate(csv_config(path), tmp_path / "w", "all")
    assert (tmp_path / "w" / "models" / "lm_fwd").is_dir()


@pytest.mark.parametrize("data, refused", [
    ({"source": "text_files", "path": "c.txt"}, "with config.data.source='text_files' and no "
     "config.data.valid_path: its validation split would be empty; a fraction in (0, 1) or a "
     "config.data.valid_path"),
    ({"lm_source": "text_files", "path": "c.txt"}, "with config.data.source="
     "'movie_reviews_imdb': its validation split would be empty; a fraction in (0, 1)"),
    ({"source": "csv", "path": "t.csv", "valid_path": "v.csv"}, None),
    ({"source": "text_files", "path": "c.txt", "valid_path": "v.txt"}, None),
    ({"source": "wikitext", "path": "wt103"}, None),
    ({"source": "imdb_folder", "path": "aclImdb"}, None),
    # The LM re-splits a labelled LM corpus by lm_valid_fraction: its own split is not needed.
    ({"source": "csv", "path": "t.csv", "valid_path": "v.csv", "lm_source": "movie_reviews_lm"},
     None),
])
def test_check_config_refuses_a_valid_fraction_that_leaves_no_validation_split(data, refused):
    config = base_config()
    config.data.update(valid_fraction=0.0, **data)
    if refused is None:
        check_config(config)
        return
    with pytest.raises(ConfigError) as e:
        check_config(config)
    assert str(e.value) == "config.data.valid_fraction=0.0 is not allowed " + refused


def write_text_corpus(path: Path, n_docs: int) -> Path:
    """A `text_files` corpus: one file, its documents separated by blank lines."""
    path.write_text("\n\n".join(text for _, text in separable_documents(n_docs, 0)) + "\n")
    return path


def empty_lm_validation_config(tmp_path: Path):
    """configs/tiny.py with a text_files LM corpus whose validation file holds no document."""
    config = tiny_config()
    config.data.update(lm_source="text_files",
                       path=str(write_text_corpus(tmp_path / "corpus.txt", 30)),
                       valid_path=str(tmp_path / "empty.txt"))
    (tmp_path / "empty.txt").write_text("\n\n\n")
    return config


def test_an_empty_lm_validation_split_is_refused_by_name_in_every_stage_that_needs_it(tmp_path):
    from ulmfit_jax.trainer import train_and_evaluate

    config = empty_lm_validation_config(tmp_path)
    message = (f"data source 'text_files' ({tmp_path / 'corpus.txt'}), LM validation "
               "documents: no documents")
    for stage in ("lm", "lr_find", "all"):
        with pytest.raises(DataError) as e:
            train_and_evaluate(config, tmp_path / "w", stage)
        assert str(e.value) == message
    # The classifier stage reads no LM validation text: its data passes, and it asks for the LM.
    with pytest.raises(UserError, match=r"run `--stage lm`"):
        train_and_evaluate(config, tmp_path / "w", "classifier")


def test_train_py_refuses_an_empty_lm_validation_split_in_one_line(tmp_path):
    config = empty_lm_validation_config(tmp_path)
    proc = run_train("--workdir", str(tmp_path / "w"), "--config.data.lm_source=text_files",
                     f"--config.data.path={config.data.path}",
                     f"--config.data.valid_path={config.data.valid_path}")
    assert_one_line_error(proc, "data source 'text_files'", "LM validation documents: no "
                          "documents")
    assert not (tmp_path / "w" / "run_config.json").exists()


def test_a_sentencepiece_tokenizer_without_training_documents_is_refused_by_name(tmp_path):
    from ulmfit_jax.trainer.data import prepare_data

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("\n")
    config = tiny_config()
    config.data.update(source="text_files", path=str(tmp_path / "empty"),
                       valid_path=str(write_text_corpus(tmp_path / "valid.txt", 5)),
                       tokenizer="sentencepiece")
    with pytest.raises(DataError) as e:
        prepare_data(config, tmp_path / "w")
    assert str(e.value) == (f"data source 'text_files' ({tmp_path / 'empty'}), train split: "
                            "no documents to train the SentencePiece tokenizer on")


# ------------------------------------------------------------------------- workdir


def test_a_workdir_refuses_a_config_that_changes_results_and_lists_the_keys(tmp_path):
    a = base_config()
    with claim(tmp_path, a, "all") as first:
        assert first
    b = base_config()
    b.update(progress=False, log_every_steps=7, tensorboard=False)  # may differ
    b.checkpoint.keep = 5
    with claim(tmp_path, b, "all") as first:
        assert not first
    b.model.hidden_size, b.lm.lr = 64, 0.5
    with pytest.raises(WorkdirError) as e, claim(tmp_path, b, "all"):
        pass
    assert "lm.lr: 0.002 -> 0.5; model.hidden_size: 1152 -> 64" in str(e.value)
    assert "--fresh" in str(e.value) and "progress" not in str(e.value)


def test_a_run_config_of_positional_phases_reads_as_named_phases(tmp_path):
    """run_config.json of ulmfit_jax before named phases stored them as lists."""
    with claim(tmp_path, base_config(), "all"):
        pass
    path = tmp_path / "run_config.json"
    stored = json.loads(path.read_text())
    stored["config"]["classifier.phases"] = [[p["freeze_to"], p["epochs"], p["lr_max"],
                                              p["lr_div"]] for p in FASTAI_CLASSIFIER_PHASES]
    path.write_text(json.dumps(stored))
    with claim(tmp_path, base_config(), "all") as first:  # the same recipe
        assert not first
    other = base_config()
    other.classifier.phases = FASTAI_CLASSIFIER_PHASES[:1]
    changed = r"classifier\.phases: \[\{'freeze_to': -1, 'epochs': 1, 'lr_max': 0\.02, "
    with pytest.raises(WorkdirError, match=changed), claim(tmp_path, other, "all"):
        pass


def test_lr_find_fixes_only_the_data_keys(tmp_path):
    finder = base_config()
    with claim(tmp_path, finder, "lr_find"):
        pass
    train = base_config()
    train.lm.lr = 0.01  # chosen after the LR finder
    with claim(tmp_path, train, "all"):
        pass
    train.data.max_train_docs = 10
    with pytest.raises(WorkdirError, match="data.max_train_docs: 0 -> 10"), \
            claim(tmp_path, train, "lr_find"):
        pass


def test_fresh_removes_the_old_run_but_keeps_the_token_cache(tmp_path):
    with claim(tmp_path, base_config(), "all"):
        for name in ("checkpoints/lm_fwd/20", "models/lm_fwd", "cache/abc", "tensorboard/x"):
            (tmp_path / name).mkdir(parents=True)
        for name in ("vocab.json", "metrics.csv", "metrics.json", "lr_find_lm_fwd.png"):
            (tmp_path / name).write_text("x")
    other = base_config()
    other.model.n_layers = 2
    with claim(tmp_path, other, "all", fresh=True) as first:
        assert first
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "cache", "run_config.json"]
    assert (tmp_path / "cache" / "abc").is_dir()
    assert json.loads((tmp_path / "run_config.json").read_text())["config"]["model.n_layers"] == 2


def test_cli_rerun_with_another_model_size_is_refused_in_one_line(tmp_path):
    with claim(tmp_path, tiny_config(), "all"):
        pass
    proc = run_train("--workdir", str(tmp_path), "--config.model.hidden_size=48")
    assert_one_line_error(proc, "model.hidden_size: 32 -> 48", "--fresh")


HOLD_LOCK = """
    import sys, time
    from ulmfit_jax.trainer.config import base_config
    from ulmfit_jax.trainer.workdir import claim
    with claim(sys.argv[1], base_config(), "all"):
        print("held", flush=True)
        time.sleep(120)
"""


def test_a_second_run_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD_LOCK), str(tmp_path)],
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = f"workdir {tmp_path} is in use by pid {holder.pid} on host {socket.gethostname()}"
        with pytest.raises(WorkdirError, match=busy), claim(tmp_path, base_config(), "all"):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with claim(tmp_path, base_config(), "all") as first:  # the dead holder's lock is gone
        assert not first
    assert (tmp_path / ".lock").read_text().split() == [str(os.getpid()), socket.gethostname()]


def test_train_py_on_a_held_workdir_says_who_holds_it_and_takes_a_dead_holders_lock(tmp_path):
    workdir = tmp_path / "w"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD_LOCK), str(workdir)],
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert_one_line_error(run_train("--workdir", str(workdir)), f"workdir {workdir} is in "
                              f"use by pid {holder.pid} on host {socket.gethostname()}")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The killed holder's lock is taken over: --fresh starts over (a warning), then the
    # (single-class) data is refused.
    path = write_csv(tmp_path / "one.csv", [("pos", f"a fine film number {i}") for i in range(30)])
    proc = run_train("--workdir", str(workdir), "--fresh", "--config.data.source=csv",
                     f"--config.data.path={path}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"warning: {workdir}: starting afresh (checkpoints, models, vocab, metrics removed)",
        f"error: data source 'csv' ({path}), train split: fewer than two classes (['pos']); a "
        "classifier needs at least two"]


# ------------------------------------------------------------------------- token cache


class CountingTokenizer(WhitespaceTokenizer):
    calls = 0

    def tokenize(self, texts):
        CountingTokenizer.calls += 1
        return super().tokenize(texts)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-5])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


# A truncated or missing file is seen by the size check every open does; a flipped byte that
# keeps the size only when hashes are verified (asked for here; always right after a build).
@pytest.mark.parametrize("name, damage, verify", [
    ("raw_ids.bin", _truncate, "sizes"), ("raw_ids.bin", _flip_byte, "hashes"),
    ("offsets.npy", _flip_byte, "hashes"), ("raw_itos.json", _truncate, "sizes"),
    ("meta.json", _flip_byte, "sizes"), ("labels.npy", Path.unlink, "sizes"),
])
def test_a_damaged_token_cache_is_detected_and_rebuilt(tmp_path, caplog, name, damage, verify):
    docs = make_docs()
    first = build_token_cache(Source(docs), CountingTokenizer(), tmp_path, workers=0,
                              progress=False)
    expected = [first.doc_tokens(i) for i in range(first.num_docs)]
    damage(first.path / name)
    CountingTokenizer.calls = 0
    with caplog.at_level(logging.WARNING, logger="ulmfit_jax.text.token_cache"):
        again = build_token_cache(Source(docs), CountingTokenizer(), tmp_path, workers=0,
                                  progress=False, verify=verify)
    assert CountingTokenizer.calls > 0 and "damaged" in caplog.text and name in caplog.text
    assert [again.doc_tokens(i) for i in range(again.num_docs)] == expected
    np.testing.assert_array_equal(again.labels, [label for _, label in docs])
    assert visible_entries(tmp_path) == [again.path.name]


def test_a_same_size_garbled_byte_passes_the_size_check_and_fails_the_hash_check(tmp_path):
    cache = build_token_cache(Source(make_docs()), WhitespaceTokenizer(), tmp_path, workers=0,
                              progress=False)
    _flip_byte(cache.path / "raw_ids.bin")
    assert token_cache.TokenCache(cache.path).num_docs == cache.num_docs  # sizes only
    with pytest.raises(token_cache.DamagedCacheError, match="raw_ids.bin: checksum differs"):
        token_cache.TokenCache(cache.path, verify="hashes")


@pytest.mark.parametrize("damage, verify", [(_truncate, "sizes"), (_flip_byte, "hashes")])
def test_a_damaged_vocab_id_file_is_rewritten(tmp_path, caplog, damage, verify):
    cache = build_token_cache(Source(make_docs()), WhitespaceTokenizer(), tmp_path, workers=0,
                              progress=False)
    vocab = ListVocab(["xxunk", "xxpad", "xxbos"] + [f"w{i}" for i in range(0, 40, 2)])
    expected = np.asarray(cache.numericalize(vocab).ids).copy()
    (target,) = cache.path.glob("vocab-*.npy")
    damage(target)
    with caplog.at_level(logging.WARNING, logger="ulmfit_jax.text.token_cache"):
        ids = token_cache.TokenCache(cache.path, verify=verify).numericalize(vocab).ids
    np.testing.assert_array_equal(np.asarray(ids), expected)
    assert "damaged" in caplog.text and target.name in caplog.text


# ------------------------------------------------------------------------- disk full


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_the_token_cache_keeps_the_other_caches(tmp_path, monkeypatch):
    kept = build_token_cache(Source(make_docs(10), fp="kept"), WhitespaceTokenizer(), tmp_path,
                             workers=0, progress=False)
    monkeypatch.setattr(token_cache, "_save_npy", _no_space)
    with pytest.raises(DiskFullError, match="no space left on device while writing the token "
                                            "cache .*; the previous files are intact") as e:
        build_token_cache(Source(make_docs(), fp="new"), WhitespaceTokenizer(), tmp_path,
                          workers=0, progress=False)
    assert e.value.errno == errno.ENOSPC and "\n" not in str(e.value)
    assert visible_entries(tmp_path) == [kept.path.name]
    assert token_cache.TokenCache(kept.path).num_docs == 10


def test_disk_full_while_saving_a_model_keeps_the_previous_model(tmp_path, monkeypatch):
    import jax

    from ulmfit_jax import api
    from ulmfit_jax.api import saved_model
    from ulmfit_jax.model.config import AWDLSTMConfig

    itos = ["xxunk", "xxpad", "xxbos"] + [f"w{i}" for i in range(13)]
    config = AWDLSTMConfig(vocab_size=len(itos), emb_size=8, hidden_size=8, n_layers=1)
    old, new = (api.LanguageModel.create(config, itos, seed=s) for s in (1, 2))
    old.save(tmp_path / "lm")
    before = sorted(p.name for p in tmp_path.iterdir())  # lm, a link to its version
    monkeypatch.setattr(saved_model, "_write_json", _no_space)
    with pytest.raises(DiskFullError, match=f"while writing the model {tmp_path / 'lm'}"):
        new.save(tmp_path / "lm", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    loaded = api.LanguageModel.load(tmp_path / "lm")
    for a, b in zip(jax.tree.leaves(old.params), jax.tree.leaves(loaded.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_train_py_on_a_full_disk_says_so_in_one_line_and_leaves_no_cache(tmp_path):
    code = """
        import errno, runpy, sys
        from ulmfit_jax.text import token_cache

        def no_space(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        token_cache._save_npy = no_space
        sys.argv = ["train.py", "--config", "configs/tiny.py", "--workdir", sys.argv[1]]
        runpy.run_path("train.py", run_name="__main__")
    """
    proc = run_python(code, str(tmp_path / "w"))
    assert_one_line_error(proc, "error: no space left on device while writing the token cache ",
                          "; the previous files are intact: free some space and rerun the "
                          "same command")
    assert visible_entries(tmp_path / "w" / "cache") == []


def test_a_workdir_checkpointed_by_an_older_version_is_refused_in_one_line(tmp_path):
    """train.py on a workdir whose LM checkpoint has no format (ulmfit_jax before typed train
    states): exit 2 with one line saying so, not a tree-structure traceback."""
    import orbax.checkpoint as ocp

    workdir = tmp_path / "w"
    manager = ocp.CheckpointManager(workdir / "checkpoints" / "lm_fwd",
                                    item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(create=True))
    manager.save(3, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": {"w": np.zeros(2)}, "step": np.int32(3)}),
        meta=ocp.args.JsonSave({"step": 3, "rng": [0, 0]})))
    manager.wait_until_finished()
    manager.close()
    proc = run_train("--workdir", str(workdir), "--stage", "lm")
    line = assert_one_line_error(proc, "lm_fwd/3 was written by an older ulmfit_jax",
                                 "--fresh", "the ulmfit_jax version that started it")
    assert "Traceback" not in proc.stderr, line
    assert (workdir / "checkpoints" / "lm_fwd" / "3").exists()
