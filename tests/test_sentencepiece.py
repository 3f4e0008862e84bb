"""SentencePieceTokenizer: training from a stream, caching, fastai special ids, encode/decode."""

import collections
import pickle

import pytest

from ulmfit_jax.text import sentencepiece_tokenizer as spt
from ulmfit_jax.text.fastai_tokenizer import SPECIAL_TOKENS
from ulmfit_jax.text.sentencepiece_tokenizer import SentencePieceTokenizer

from .test_tokenize import imdb_reviews


@pytest.fixture(scope="module")
def corpus():
    return imdb_reviews(300)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    cache = tmp_path_factory.mktemp("spm")
    tok = SentencePieceTokenizer(vocab_size=600, cache_dir=cache, num_threads=2)
    path = tok.train(corpus)
    return tok, path, cache


def test_special_tokens_get_fastai_ids(trained):
    tok, path, _ = trained
    assert path.exists() and path.parent == trained[2]
    assert tok.itos[:9] == list(SPECIAL_TOKENS) == tok.special_tokens
    assert 500 <= tok.vocab_size_actual <= 600
    ids = tok.encode(["xxmaj The film xxup was xxfld 1 fine."])[0]
    pieces = tok.tokenize(["xxmaj The film xxup was xxfld 1 fine."])[0]
    assert ids[0] == 2 and pieces[0] == "xxbos"
    assert [tok.itos[i] for i in ids] == pieces
    for special, sid in [("xxmaj", 8), ("xxup", 7), ("xxfld", 4)]:  # never split
        assert special in pieces and sid in ids


def test_decode_inverts_encode(trained):
    tok, _, _ = trained
    texts = ["This movie was great, truly great.", "", "Two<br />lines &quot;quoted&quot;"]
    # fastai's fix_html: <br /> -> newline (sentencepiece normalises it to a space), and its
    # quirk of replacing 'quot;' before unescaping, which leaves the '&'.
    assert tok.decode(tok.encode(texts)) == [texts[0], "", "Two lines &'quoted&'"]
    assert tok.encode([""]) == [[2]]


def test_cached_model_is_reused_not_retrained(trained, corpus, monkeypatch):
    tok, path, cache = trained

    def no_training(self, texts):
        raise AssertionError("retrained although a cached model exists")

    monkeypatch.setattr(SentencePieceTokenizer, "_train_model", no_training)
    again = SentencePieceTokenizer(vocab_size=600, cache_dir=cache, num_threads=2)
    assert again.train(corpus) == path
    assert again.fingerprint() == tok.fingerprint()
    other = SentencePieceTokenizer(vocab_size=500, cache_dir=cache)
    with pytest.raises(AssertionError, match="retrained"):
        other.train(corpus)  # different settings: a different key


def test_streamed_corpus_needs_a_key(corpus, tmp_path):
    tok = SentencePieceTokenizer(vocab_size=400, model_type="bpe", cache_dir=tmp_path)
    with pytest.raises(TypeError, match="one-shot iterator"):
        tok.train(iter(corpus))
    path = tok.train((t for t in corpus), corpus_key="imdb300")
    assert path.name == "spm-imdb300.model"
    assert tok.tokenize(["ok"])[0][0] == "xxbos"


def test_long_documents_are_not_dropped(tmp_path, monkeypatch):
    """sentencepiece's default max_sentence_length (4192 bytes) would skip the long document."""
    short = [f"short review number {i} was fine" for i in range(200)]
    long_doc = "a long review " * 400 + "ᚠ"  # the rune appears only in this 5.6 kB document
    tok = SentencePieceTokenizer(vocab_size=80, character_coverage=1.0, cache_dir=tmp_path)
    tok.train([*short, long_doc])
    assert "ᚠ" in "".join(tok.itos)
    monkeypatch.setattr(spt, "MAX_SENTENCE_BYTES", 4192)  # sentencepiece's default
    tok.train([*short, long_doc])
    assert "ᚠ" not in "".join(tok.itos)


def test_surrogates_and_pickling(trained):
    tok, _, _ = trained
    assert tok.encode(["bad \ud800 text"])[0][0] == 2  # sanitised, no UnicodeEncodeError
    blob = pickle.dumps(tok)
    assert b"SentencePieceProcessor" not in blob  # the processor is rebuilt per process
    clone = pickle.loads(blob)
    assert clone.tokenize(["Same output"]) == tok.tokenize(["Same output"])
    assert clone.fingerprint() == tok.fingerprint()
    no_bos = pickle.loads(pickle.dumps(tok))
    no_bos.add_bos = False
    assert no_bos.fingerprint() != tok.fingerprint()
    assert no_bos.tokenize(["Same output"])[0] == tok.tokenize(["Same output"])[0][1:]


def test_bad_settings_and_untrained_use():
    with pytest.raises(ValueError, match="model_type"):
        SentencePieceTokenizer(model_type="wordpiece")
    with pytest.raises(ValueError, match="rules"):
        SentencePieceTokenizer(rules="lowercase")
    with pytest.raises(RuntimeError, match="train"):
        SentencePieceTokenizer().tokenize(["x"])
    with pytest.raises(RuntimeError, match="train"):
        SentencePieceTokenizer().fingerprint()


def test_fastai_rules_option(corpus, tmp_path):
    tok = SentencePieceTokenizer(vocab_size=500, rules="fastai", cache_dir=tmp_path)
    tok.train(corpus[:150])
    pieces = tok.tokenize(["The END"])[0]
    assert "xxmaj" in pieces and "xxup" in pieces and pieces.count("xxbos") == 1


def test_fastai_lm_trained_with_sentencepiece_converts(trained, corpus, tmp_path):
    """A fastai LM whose itos is SentencePiece pieces (in fastai's count order, not the
    model's id order) reads raw text through the SentencePiece tokenizer attached to it."""
    from ulmfit_jax.api import LanguageModel
    from ulmfit_jax.model.config import AWDLSTMConfig
    from ulmfit_jax.text.vocab import Vocab

    tok = trained[0]
    fastai_tok = SentencePieceTokenizer.from_model(trained[1], rules="fastai")
    counts = collections.Counter(p for doc in fastai_tok.tokenize(corpus) for p in doc)
    itos = list(SPECIAL_TOKENS) + sorted(
        (p for p in tok.itos[9:] if counts[p]), key=lambda p: (-counts[p], p))
    assert itos[9:] != [p for p in tok.itos[9:] if counts[p]]  # really a different order
    config = AWDLSTMConfig.lm_defaults(len(itos), emb_size=16, hidden_size=32, n_layers=2)
    LanguageModel.create(config, itos, seed=0).to_fastai(tmp_path / "lm.pth",
                                                          tmp_path / "itos.pkl")
    lm = LanguageModel.from_fastai(tmp_path / "lm.pth", tmp_path / "itos.pkl",
                                   tokenizer=fastai_tok)
    assert list(lm.vocab) == itos
    text = "The film was a delight."
    pieces = fastai_tok.tokenize([text])[0]
    assert all(p in itos for p in pieces)
    assert list(Vocab(lm.vocab).numericalize(pieces)) == [itos.index(p) for p in pieces]
    ((best, _), *_), = lm.predict_next([text], k=3)
    assert best in itos
    generated = lm.generate(text, n_words=5, seed=0)
    assert generated.startswith(fastai_tok.detokenize(pieces)) and "\u2581" not in generated
    assert len(generated) > len(fastai_tok.detokenize(pieces))
