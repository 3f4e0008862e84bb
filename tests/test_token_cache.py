"""Token cache: parallel == serial, cache hits do no tokenizing, atomic under interruption."""

import collections
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ulmfit_jax.text import token_cache, tokenize_pool
from ulmfit_jax.text.token_cache import DamagedCacheError, TokenCache, build_token_cache
from ulmfit_jax.text.tokenized_corpus import TokenizedCorpus

REPO = Path(__file__).resolve().parents[1]


class WhitespaceTokenizer:
    """Tiny stand-in for FastaiTokenizer: xxbos + lowercased whitespace split."""

    special_tokens = ["xxunk", "xxpad", "xxbos"]

    def tokenize(self, texts):
        return [["xxbos", *t.lower().split()] for t in texts]

    def fingerprint(self):
        return "whitespace-v1"


class MustNotRunTokenizer(WhitespaceTokenizer):
    def tokenize(self, texts):
        raise AssertionError("tokenizer called on a cache hit")


class InterruptingTokenizer(WhitespaceTokenizer):
    """Raises `exc` on its `at`-th call (Ctrl-C or a crash in the middle of a build)."""

    def __init__(self, at, exc):
        self.calls, self.at, self.exc = 0, at, exc

    def tokenize(self, texts):
        self.calls += 1
        if self.calls == self.at:
            raise self.exc
        return super().tokenize(texts)


class FailingInWorker(WhitespaceTokenizer):
    def tokenize(self, texts):
        if any("boom" in t for t in texts):
            raise ValueError("bad document")
        return super().tokenize(texts)


class Source:
    """Re-iterable (text, label) documents with a fingerprint, like ulmfit_jax.text.sources."""

    def __init__(self, docs, fp="src-1"):
        self.docs, self.fp = docs, fp

    def __iter__(self):
        return iter(self.docs)

    def fingerprint(self):
        return self.fp


class ListVocab:
    """Stand-in for Vocab: unknown tokens -> 0 (xxunk)."""

    def __init__(self, itos):
        self.itos = list(itos)
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    def numericalize(self, tokens):
        return np.array([self.stoi.get(t, 0) for t in tokens], dtype=np.int64)


def make_docs(n=57, seed=0):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(40)]
    return [(" ".join(rng.choice(words, size=rng.integers(0, 30))), int(i % 3))
            for i in range(n)]


def visible_entries(root):
    return sorted(p.name for p in Path(root).iterdir())


def test_parallel_build_matches_serial_and_tokenizer(tmp_path):
    docs = make_docs()
    tok = WhitespaceTokenizer()
    serial = build_token_cache(Source(docs), tok, tmp_path / "a", workers=0, chunk_size=5,
                               progress=False)
    par = build_token_cache(Source(docs), tok, tmp_path / "b", workers=2, chunk_size=4,
                            max_in_flight=3, progress=False)
    assert isinstance(par.raw_ids, np.memmap)
    for a, b in [(serial.raw_ids, par.raw_ids), (serial.offsets, par.offsets),
                 (serial.raw_counts, par.raw_counts), (serial.labels, par.labels)]:
        np.testing.assert_array_equal(a, b)
    assert serial.raw_itos == par.raw_itos
    expected = tok.tokenize([t for t, _ in docs])
    assert [par.doc_tokens(i) for i in range(len(docs))] == expected
    # raw ids are given in order of first appearance in the corpus
    first_seen = list(dict.fromkeys(t for doc in expected for t in doc))
    assert par.raw_itos == first_seen
    assert par.counts() == collections.Counter(t for doc in expected for t in doc)
    np.testing.assert_array_equal(par.labels, [lab for _, lab in docs])
    assert par.num_docs == len(docs) and par.num_tokens == sum(map(len, expected))


def test_cache_hit_never_calls_tokenizer(tmp_path):
    docs = make_docs()
    first = build_token_cache(Source(docs), WhitespaceTokenizer(), tmp_path, workers=0,
                              progress=False)
    again = build_token_cache(Source(docs), MustNotRunTokenizer(), tmp_path, workers=2,
                              progress=False)
    assert again.path == first.path
    np.testing.assert_array_equal(again.raw_ids, first.raw_ids)
    # another corpus or another tokenizer gets its own directory
    other = build_token_cache(Source(docs[:5], fp="src-2"), WhitespaceTokenizer(), tmp_path,
                              workers=0, progress=False)
    assert other.path != first.path and other.num_docs == 5


def test_content_fingerprint_when_source_has_none(tmp_path):
    docs = [t for t, _ in make_docs(10)]
    a = build_token_cache(docs, WhitespaceTokenizer(), tmp_path, workers=0, progress=False)
    b = build_token_cache(list(docs), MustNotRunTokenizer(), tmp_path, workers=0,
                          progress=False)
    c = build_token_cache(docs[:-1] + ["changed text"], WhitespaceTokenizer(), tmp_path,
                          workers=0, progress=False)
    assert a.path == b.path != c.path
    assert a.labels is None


def test_numericalize_maps_through_lookup_and_caches_per_vocab(tmp_path):
    docs = make_docs()
    cache = build_token_cache(Source(docs), WhitespaceTokenizer(), tmp_path, workers=0,
                              progress=False)
    vocab = ListVocab(["xxunk", "xxpad", "xxbos"] + [f"w{i}" for i in range(0, 40, 2)])
    corpus = cache.numericalize(vocab, chunk_tokens=7)
    assert isinstance(corpus, TokenizedCorpus)
    assert corpus.ids.dtype == np.int32 and isinstance(corpus.ids, np.memmap)
    for i in range(cache.num_docs):
        np.testing.assert_array_equal(corpus.doc(i), vocab.numericalize(cache.doc_tokens(i)))
    np.testing.assert_array_equal(corpus.labels, [lab for _, lab in docs])
    # a second vocab is a second file; the first one is reused, not rewritten
    small = ListVocab(["xxunk", "xxpad", "xxbos", "w1"])
    assert not np.array_equal(cache.numericalize(small).ids, corpus.ids)
    files = sorted(p.name for p in cache.path.glob("vocab-*.npy"))
    assert len(files) == 2
    mtime = (cache.path / files[0]).stat().st_mtime_ns
    TokenCache(cache.path).numericalize(vocab)
    TokenCache(cache.path).numericalize(small)
    assert (cache.path / files[0]).stat().st_mtime_ns == mtime


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("disk on fire")])
def test_interrupted_build_leaves_nothing_then_rebuilds(tmp_path, exc):
    docs = make_docs()
    with pytest.raises(type(exc)):
        build_token_cache(Source(docs), InterruptingTokenizer(3, exc), tmp_path, workers=0,
                          chunk_size=5, progress=False)
    assert visible_entries(tmp_path) == []
    cache = build_token_cache(Source(docs), WhitespaceTokenizer(), tmp_path, workers=0,
                              chunk_size=5, progress=False)
    assert cache.num_docs == len(docs)


def test_worker_error_propagates_and_leaves_nothing(tmp_path):
    docs = make_docs(40) + [("boom", 0)] + make_docs(40)
    with pytest.raises(ValueError, match="bad document"):
        build_token_cache(Source(docs), FailingInWorker(), tmp_path, workers=2, chunk_size=4,
                          progress=False)
    assert visible_entries(tmp_path) == []


def _start_slow_build(cache_root, workers, pause=0.05):
    """A real build in a child process (own process group), slow enough to interrupt; each
    chunk takes `pause` seconds. SIGUSR1 makes it print every thread's stack (faulthandler)."""
    script = textwrap.dedent(f"""
        import faulthandler, signal, time
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        from ulmfit_jax.text.token_cache import build_token_cache
        class Slow:
            def tokenize(self, texts):
                time.sleep({pause})
                return [["xxbos", *t.split()] for t in texts]
            def fingerprint(self):
                return "whitespace-v1"
        docs = [f"doc number {{i}}" for i in range(10_000)]
        build_token_cache(docs, Slow(), {str(cache_root)!r}, corpus_fp="killed",
                          workers={workers}, chunk_size=2, progress=False)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(_answering_ctrl_c([sys.executable, "-c", script]), env=env,
                            start_new_session=True, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        written = list(Path(cache_root).glob("*.tmp-*/raw_ids.bin"))
        if written and written[0].stat().st_size > 0:
            return proc
        assert proc.poll() is None, "build finished or crashed before it could be interrupted"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("build never started writing")


def _answering_ctrl_c(argv: list[str]) -> list[str]:
    """`argv` run with SIGINT at its default, so that Python installs its KeyboardInterrupt
    handler. A shell starts background jobs (`make test &`, nohup) with SIGINT ignored, and an
    ignored signal stays ignored across exec: without this the tests would measure the runner's
    shell, not our Ctrl-C handling. (An exec'ing wrapper, not `preexec_fn`: forking a process
    whose jax threads run is what jax warns against.)"""
    reset = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
             "os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", reset, *argv]


def _stderr_after_exit(proc, timeout):
    """The child's stderr once it exits; if it does not within `timeout` seconds, fail with
    the stacks of every process of its group (a hang)."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGUSR1)
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"no exit within {timeout} s; stacks and stderr:\n{proc.communicate()[1]}")


@pytest.mark.parametrize("pause", [0.05, 0.001])  # workers mostly busy / mostly idle
def test_ctrl_c_with_workers_leaves_nothing(tmp_path, pause):
    """SIGINT to the whole process group, as a terminal's Ctrl-C: no cache, no temp dir,
    and no worker left behind."""
    proc = _start_slow_build(tmp_path, workers=2, pause=pause)
    os.killpg(proc.pid, signal.SIGINT)
    stderr = _stderr_after_exit(proc, timeout=30)
    assert proc.returncode != 0, stderr
    assert "KeyboardInterrupt" in stderr and "_process_worker" not in stderr, stderr
    assert visible_entries(tmp_path) == []
    with pytest.raises(ProcessLookupError):  # the workers (same group) are gone too
        os.killpg(proc.pid, 0)


def test_killed_build_leaves_no_cache_and_next_run_cleans_up(tmp_path):
    """SIGKILL a real build midway: only a temp dir remains, and the next build removes it."""
    proc = _start_slow_build(tmp_path, workers=0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    leftovers = visible_entries(tmp_path)
    assert len(leftovers) == 1 and ".tmp-" in leftovers[0]
    assert not list(tmp_path.glob("*/meta.json"))

    docs = [f"doc number {i}" for i in range(30)]
    cache = build_token_cache(docs, WhitespaceTokenizer(), tmp_path, corpus_fp="killed",
                              workers=0, progress=False)
    assert visible_entries(tmp_path) == [cache.path.name]
    assert cache.doc_tokens(7) == ["xxbos", "doc", "number", "7"]


def test_in_flight_chunks_are_bounded():
    pulled = []

    def chunks():
        for i in range(30):
            pulled.append(i)
            yield [f"text {i}"]

    outstanding = []
    encoded = tokenize_pool.encoded_chunks(chunks(), WhitespaceTokenizer(), workers=2,
                                           max_in_flight=3, mp_context="fork")
    for k, (n, (itos, _ids, _lengths)) in enumerate(encoded):
        outstanding.append(len(pulled) - k)
        assert n == 1 and itos == ["xxbos", "text", str(k)]
    assert max(outstanding) <= 3 and len(pulled) == 30


def test_bad_documents_give_clear_errors(tmp_path):
    with pytest.raises(TypeError, match="cannot read a document"):
        build_token_cache([3.5], WhitespaceTokenizer(), tmp_path, workers=0, progress=False)
    with pytest.raises(ValueError, match="have no label"):
        build_token_cache([("a b", 1), ("c", None)], WhitespaceTokenizer(), tmp_path,
                          workers=0, progress=False)
    assert visible_entries(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="not a token cache"):
        TokenCache(tmp_path)


def test_tokenized_corpus_from_lists_validates():
    corpus = TokenizedCorpus.from_lists([[1, 2, 3], [], [4]], labels=[0, 1, 0])
    np.testing.assert_array_equal(corpus.lengths, [3, 0, 1])
    np.testing.assert_array_equal(corpus.doc(2), [4])
    with pytest.raises(ValueError, match="labels"):
        TokenizedCorpus(corpus.ids, corpus.offsets, np.zeros(2, np.int64))


def test_real_fastai_tokenizer_and_csv_source_in_workers(tmp_path):
    """FastaiTokenizer in 2 forked workers == in-process; a DocStream gives class indices."""
    from ulmfit_jax.text.fastai_tokenizer import FastaiTokenizer
    from ulmfit_jax.text.sources import csv_dataset

    rows = ["pos,\"This movie was GREAT!! I loved it.\"", "neg,\"Terrible... <br />Just bad.\"",
            "pos,\"Wow wow wow, what a film\"", "neg,It's not worth $10.",
            "pos,\"Best. Film. Ever.\"", "neg,\"I can't recommend it\""]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "valid.csv").write_text(rows[0] + "\n")
    dataset = csv_dataset(tmp_path / "train.csv", tmp_path / "valid.csv")
    tok = FastaiTokenizer()
    cache = build_token_cache(dataset.train, tok, tmp_path / "cache", workers=2, chunk_size=2,
                              progress=False)
    docs = list(dataset.train)
    expected = tok.tokenize([d.text for d in docs])
    assert [cache.doc_tokens(i) for i in range(len(docs))] == expected
    assert expected[0][:2] == ["xxbos", "xxmaj"]
    np.testing.assert_array_equal(cache.labels,
                                  [dataset.labels.index(d.label) for d in docs])
    hit = build_token_cache(dataset.train, tok, tmp_path / "cache", workers=2, progress=False)
    assert hit.path == cache.path


def test_real_vocab_from_counts_and_numericalize(tmp_path):
    """Vocab.from_counts on the cached counts; a new min_freq only re-maps, never re-tokenizes."""
    from ulmfit_jax.text.vocab import Vocab

    docs = make_docs(200)
    cache = build_token_cache(Source(docs), WhitespaceTokenizer(), tmp_path, workers=0,
                              progress=False)
    for min_freq in (1, 300):
        hit = build_token_cache(Source(docs), MustNotRunTokenizer(), tmp_path, workers=0,
                                progress=False)
        vocab = Vocab.from_counts(hit.counts(), min_freq=min_freq, max_vocab=60000)
        corpus = hit.numericalize(vocab)
        for i in (0, 17, 199):
            np.testing.assert_array_equal(corpus.doc(i),
                                          vocab.numericalize(cache.doc_tokens(i)))
    assert len(list(cache.path.glob("vocab-*.npy"))) == 2


def test_opening_checks_sizes_and_hashes_only_once_after_writing_or_on_request(
        tmp_path, monkeypatch):
    """A cache hit reads no file whole (sha256 would read WikiText-103's 400 MB each time)."""
    docs = make_docs()
    hashed = []
    real_sha = token_cache.sha256_file
    monkeypatch.setattr(token_cache, "sha256_file", lambda f: hashed.append(f.name) or
                        real_sha(f))
    cache = build_token_cache(Source(docs), WhitespaceTokenizer(), tmp_path, workers=0,
                              progress=False)
    # Written: each file hashed for the manifest, then read back once to check it.
    assert collections.Counter(hashed)["raw_ids.bin"] == 2
    vocab = ListVocab(["xxunk", "xxpad", "xxbos", "w1"])
    cache.numericalize(vocab)
    hashed.clear()
    hit = build_token_cache(Source(docs), MustNotRunTokenizer(), tmp_path, workers=0,
                            progress=False)
    hit.numericalize(vocab)
    TokenCache(cache.path).numericalize(vocab)
    assert hashed == []
    TokenCache(cache.path, verify="hashes").numericalize(vocab)
    assert "raw_ids.bin" in hashed and any(n.startswith("vocab-") for n in hashed)
    # A truncated file is caught without hashing.
    (cache.path / "offsets.npy").write_bytes((cache.path / "offsets.npy").read_bytes()[:-8])
    hashed.clear()
    with pytest.raises(DamagedCacheError, match="offsets.npy: missing or not"):
        TokenCache(cache.path)
    assert hashed == []
    with pytest.raises(ValueError, match="verify must be"):
        TokenCache(cache.path, verify="none")


def test_stale_temps_of_dead_local_writers_only_are_removed(tmp_path):
    import socket

    from ulmfit_jax.atomic_io import temp_owner, temp_sibling
    from ulmfit_jax.text.stale_temps import remove_stale_temps

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    host = socket.gethostname()
    gone_dir = tmp_path / f"k1.tmp-{host}-{dead.stdout.strip()}-abc"
    gone_file = tmp_path / f"vocab-1.npy.tmp-{host}-{dead.stdout.strip()}-def"
    live = Path(temp_sibling(tmp_path / "k2"))
    other_host = tmp_path / f"k3.tmp-some-other-host-{dead.stdout.strip()}-abc"
    not_ours = tmp_path / "k4.tmp-0123456789abcdef"
    for d in (gone_dir, live, other_host, not_ours):
        d.mkdir()
    gone_file.write_bytes(b"half")
    assert temp_owner(live.name) == (host, os.getpid())
    assert temp_owner(other_host.name) == ("some-other-host", int(dead.stdout))
    assert temp_owner(not_ours.name) is None
    assert sorted(remove_stale_temps(tmp_path)) == sorted([gone_dir, gone_file])
    assert visible_entries(tmp_path) == sorted(p.name for p in (live, other_host, not_ours))


@pytest.mark.slow  # train.py tokenizing every embedded review: about 30 s of CPU
def test_ctrl_c_while_train_py_tokenizes_says_interrupted_and_leaves_no_cache(tmp_path):
    """A terminal's Ctrl-C (SIGINT to the process group) while train.py's workers tokenize:
    `interrupted`, exit code 130, no token cache and no temporary directory."""
    proc = subprocess.Popen(
        _answering_ctrl_c([
            sys.executable, "train.py", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
            "--stage", "lm", "--config.data.max_train_docs=0", "--config.data.workers=2"]),
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu"),
        start_new_session=True, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not any(p.stat().st_size for p in tmp_path.glob("cache/*.tmp-*/raw_ids.bin")):
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"train.py never started tokenizing:\n{proc.communicate()[1]}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    stderr = _stderr_after_exit(proc, timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted", stderr
    assert visible_entries(tmp_path / "cache") == []
