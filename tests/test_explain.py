"""ulmfit_jax.explain: confusion matrix and report against scikit-learn, top losses against an
independent sort, word importance on a task one planted word decides (forward, backward and
their ensemble), each score against the gradient of the whole embedding matrix, the mapping
from fastai's and SentencePiece's tokens to words, the pictures and `predict.py --explain`."""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from sklearn import metrics as sk

from ulmfit_jax import Ensemble, TextClassifier, explain
from ulmfit_jax.explain.interpretation import Interpretation
from ulmfit_jax.inference.classify import classifier_eval
from ulmfit_jax.inference.text_files import InputError
from ulmfit_jax.model.classifier import sample_classifier_masks
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.text import FastaiTokenizer
from ulmfit_jax.text.classifier_batches import pad_chunks
from ulmfit_jax.text.vocab import Vocab
from ulmfit_jax.text.word_alignment import word_scores

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["neg", "pos"]
FILLER = [f"w{i}" for i in range(20)]
PLANTED = {"pos": "splendid", "neg": "dreadful"}


# ------------------------------------------------------------------ a planted-word task
def planted_documents(n: int, seed: int) -> list[tuple[str, str]]:
    """(text, label): 6-15 filler words and, somewhere among them, the one word that decides
    the class (capitalised in about a third of the documents: fastai's `xxmaj`)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = CLASSES[i % 2]
        words = [str(w) for w in rng.choice(FILLER, int(rng.integers(6, 16)))]
        word = PLANTED[label].capitalize() if rng.random() < 0.3 else PLANTED[label]
        words.insert(int(rng.integers(0, len(words) + 1)), word)
        rows.append((" ".join(words), label))
    return rows


ADAM = optax.adam(1e-2)


@functools.partial(jax.jit, static_argnums=0)
def _train_step(graphdef, params, rest, opt_state, key, ids, labels):
    def loss(p):
        model = nnx.merge(graphdef, p, rest)
        masks = sample_classifier_masks(key, model.config, ids.shape[0])
        logits = model(ids, masks)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    updates, opt_state = ADAM.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def train_planted(train: list[tuple[str, str]], vocab: Vocab, backward: bool,
                  steps: int = 60) -> TextClassifier:
    """A tiny classifier trained from scratch on `train` (full batch, Adam, AWD dropouts)."""
    tok = FastaiTokenizer()
    encoder = AWDLSTMConfig.classifier_defaults(len(vocab), drop_mult=0.5, emb_size=16,
                                                hidden_size=16, n_layers=1)
    config = ClassifierConfig(encoder=encoder, n_classes=2, bptt=32, max_len=64,
                              head_sizes=(16,), head_ps=(0.1,))
    clf = TextClassifier.create(config, vocab.itos, seed=0, tokenizer=tok, class_names=CLASSES,
                                backward=backward)
    docs = [np.asarray(vocab.numericalize(t)) for t in tok.tokenize([t for t, _ in train])]
    ids = jnp.asarray(pad_chunks([d[::-1] if backward else d for d in docs], 1, config.bptt))
    labels = jnp.asarray([CLASSES.index(label) for _, label in train])
    graphdef, params, rest = nnx.split(clf.module, nnx.Param, ...)
    opt_state = ADAM.init(params)
    for i in range(steps):
        params, opt_state = _train_step(graphdef, params, rest, opt_state, jax.random.key(i),
                                        ids, labels)
    nnx.update(clf.module, params)
    return clf


@pytest.fixture(scope="module")
def planted():
    """Forward and backward classifiers trained on the planted task, and held-out documents."""
    train = planted_documents(256, seed=0)
    vocab = Vocab.from_tokens(FastaiTokenizer().tokenize([t for t, _ in train]), min_freq=1)
    fwd, bwd = (train_planted(train, vocab, backward) for backward in (False, True))
    return fwd, bwd, planted_documents(32, seed=1)


@pytest.mark.parametrize("which", ["fwd", "bwd", "ensemble"])
def test_the_planted_word_is_the_most_important_word(planted, which):
    fwd, bwd, test = planted
    model = {"fwd": fwd, "bwd": bwd, "ensemble": Ensemble([fwd, bwd])}[which]
    texts, labels = [t for t, _ in test], [label for _, label in test]
    assert np.mean(np.array(model.predict(texts)) == labels) >= 0.95  # it learned the task
    results = explain.word_importance(model, texts)
    top = [r.top(1)[0][0].lower() for r in results]
    planted_words = [next(w.lower() for w in t.split() if w.lower() in PLANTED.values())
                     for t in texts]
    hits = np.mean([a == b for a, b in zip(top, planted_words, strict=True)])
    assert hits >= 0.8, list(zip(top, planted_words, strict=True))
    assert [r.class_name for r in results] == model.predict(texts)
    # Why input x gradient is the default: fastai's gradient size finds the word less often.
    fastai = explain.word_importance(model, texts, method="intrinsic_attention")
    fastai_top = [r.top(1)[0][0].lower() for r in fastai]
    assert np.mean([a == b for a, b in zip(fastai_top, planted_words, strict=True)]) < hits


def test_top_losses_equal_an_independent_sort_of_the_losses(planted):
    fwd, _, test = planted
    texts = [t for t, _ in test]
    labels = [label if i % 5 else CLASSES[1 - CLASSES.index(label)]  # some labels wrong
              for i, (_, label) in enumerate(test)]
    # Independently: the documents in input order as one padded batch through the model's
    # logits, then torch's cross-entropy.
    vocab = Vocab(fwd.vocab)
    docs = [vocab.numericalize(t) for t in fwd.tokenizer.tokenize(texts)]
    logits = np.asarray(fwd(pad_chunks(docs, 1, fwd.config.bptt)))
    losses = torch.nn.functional.cross_entropy(
        torch.tensor(logits), torch.tensor([CLASSES.index(y) for y in labels]),
        reduction="none").numpy()
    expected = sorted(range(len(texts)), key=lambda i: -losses[i])[:7]
    top = explain.top_losses(fwd, texts, labels, k=7)
    assert [row.index for row in top] == expected
    np.testing.assert_allclose([row.loss for row in top], losses[expected], rtol=1e-4)
    for row in top:
        assert row.text == texts[row.index] and row.actual == labels[row.index]
        assert row.predicted == CLASSES[int(np.argmax(logits[row.index]))]
        np.testing.assert_allclose(row.probabilities, torch.softmax(
            torch.tensor(logits[row.index]), 0).numpy(), atol=1e-6)


# -------------------------------------------------- each score against the whole gradient
# 18 tokens, all distinct; with bptt 4, five chunks.
LONG = "A splendid film with w1 w2 w3 w4 w5 w6 w7 w8 w9 and an ending"


def _random_classifier(multi_label: bool, backward: bool,
                       kind: str = "awd_lstm") -> TextClassifier:
    vocab = Vocab.from_tokens(FastaiTokenizer().tokenize([LONG + " Hi"]), min_freq=1)
    encoder = AWDLSTMConfig(len(vocab), 12, 16, 1, encoder_kind=kind)
    config = ClassifierConfig(encoder, 3, bptt=4, max_len=12)
    clf = TextClassifier.create(config, vocab.itos, seed=3, tokenizer=FastaiTokenizer(),
                                class_names=["x", "y", "z"], backward=backward)
    return clf.with_multi_label(0.5) if multi_label else clf


@functools.partial(jax.jit, static_argnums=(0, 4))
def _embedding_gradient(graphdef, pure, ids, class_index, multi_label):
    """d p[class] / d (the whole embedding matrix), one document `ids [1, time]`."""
    def probability(table):
        tree = {**pure, "encoder": {**pure["encoder"], "embedding": table}}
        return classifier_eval(graphdef, ids, tree, multi_label=multi_label).probs[0, class_index]

    return jax.grad(probability)(pure["encoder"]["embedding"])


def expected_word_scores(clf: TextClassifier, text: str, class_index: int) -> dict:
    """Each method's word scores from the gradient of the class probability with respect to
    the whole embedding matrix, on the text alone: with every token of `text` distinct, token
    t's row of that gradient is its position's. Tokens in reading order whatever the
    direction."""
    tokens = clf.tokenizer.tokenize([text])[0]
    ids = np.asarray(Vocab(clf.vocab).numericalize(tokens))
    assert len(set(ids.tolist())) == len(ids)
    graphdef, state = nnx.split(clf.module)
    pure = nnx.to_pure_dict(state)
    read = ids[::-1] if clf.backward else ids
    grads = np.asarray(_embedding_gradient(graphdef, pure, jnp.asarray(read[None]), class_index,
                                           clf.multi_label))[ids]
    rows = np.asarray(pure["encoder"]["embedding"])[ids]
    per_token = {"intrinsic_attention": np.abs(grads).sum(-1),
                 "input_x_gradient": np.abs((grads * rows).sum(-1))}
    scores = {m: word_scores(text, tokens, s).scores for m, s in per_token.items()}
    return {m: s / s.max() for m, s in scores.items()}


@pytest.mark.parametrize(("multi_label", "backward", "kind"), [
    (False, False, "awd_lstm"), (False, True, "awd_lstm"), (True, False, "awd_lstm"),
    (False, False, "qrnn")])
def test_each_word_gets_its_own_gradient_in_reading_order(multi_label, backward, kind):
    # LONG next to a short text: batch padding, chunks and (backward) reversed reading all
    # stand between a token and its word; any encoder kind.
    clf = _random_classifier(multi_label, backward, kind)
    expected = expected_word_scores(clf, LONG, 1)
    for method, scores in expected.items():
        results = explain.word_importance(clf, [LONG, "Hi w1"], class_name="y", method=method)
        np.testing.assert_allclose(results[0].scores, scores, rtol=2e-4, atol=1e-6)
        assert results[0].words == LONG.split() and results[0].class_name == "y"
    assert not np.allclose(expected["intrinsic_attention"], expected["input_x_gradient"])
    probs = clf.predict_proba([LONG, "Hi w1"])[0]
    assert results[0].probability == pytest.approx(float(probs[1]), abs=1e-6)


def test_an_ensemble_averages_its_directions_for_the_class_it_predicts():
    fwd, bwd = _random_classifier(False, False), _random_classifier(False, True)
    texts = [LONG, ""]  # the empty text has no word to score
    ensemble = Ensemble([fwd, bwd])
    got = explain.word_importance(ensemble, texts)
    predicted = ensemble.predict(texts)
    for result, name, text in zip(got, predicted, texts, strict=True):
        members = [explain.word_importance(m, [text, text], class_name=name)[0]
                   for m in (fwd, bwd)]
        np.testing.assert_allclose(result.scores, (members[0].scores + members[1].scores) / 2,
                                   rtol=1e-5)
        assert result.class_name == name and len(result.scores) == len(text.split())
        assert result.probability == pytest.approx(
            float(np.mean([m.probability for m in members])), abs=1e-6)


def test_word_importance_refuses_what_it_cannot_explain():
    clf = _random_classifier(False, False)
    with pytest.raises(ValueError, match="'nope' is not one of the classes"):
        explain.word_importance(clf, "a film", class_name="nope")
    with pytest.raises(ValueError, match="method must be one of"):
        explain.word_importance(clf, "a film", method="attention")

    class Served:
        class_names = clf.class_names

        def predict_proba(self, texts, batch_size=64, progress=None):
            return clf.predict_proba(texts)

    with pytest.raises(TypeError, match="needs the model's gradients"):
        explain.word_importance(Ensemble([clf, Served()]), "a film")


# ------------------------------------------------------------------ tokens -> words
def _one_hot_words(text: str, tokens: list[str]) -> dict[str, dict[str, float]]:
    """For each token, which words of `text` its score lands on (and how much)."""
    out = {}
    for i, token in enumerate(tokens):
        scores = np.zeros(len(tokens))
        scores[i] = 1.0
        ws = word_scores(text, tokens, scores)
        out[f"{i}:{token}"] = {w: round(float(s), 3) for w, s in zip(ws.words, ws.scores,
                                                                     strict=True) if s}
    return out


def test_fastai_tokens_map_to_the_words_of_the_original_text():
    text = "This movie is GREAT!!! <br />I didn't like... the &amp; end, very very very bad"
    tokens = FastaiTokenizer().tokenize([text])[0]
    got = _one_hot_words(text, tokens)
    by_token = {key.split(":", 1)[1]: words for key, words in got.items()}
    assert by_token["xxbos"] == {}  # no word of the text
    assert got["1:xxmaj"] == got["2:this"] == {"This": 1.0}  # the marker goes to its word
    assert by_token["xxup"] == by_token["great"] == {"GREAT!!!": 1.0}
    assert by_token["xxrep"] == by_token["!"] == {"GREAT!!!": 1.0}
    assert by_token["did"] == by_token["n't"] == {"didn't": 1.0}
    assert by_token["i"] == {"/>I": 1.0}
    amp = tokens.index("&")  # fastai reads `&amp;` as two `&`: the text has one
    assert got[f"{amp}:&"] == {"&amp;": 1.0} and got[f"{amp + 1}:&"] == {}
    assert by_token[","] == {"end,": 1.0}
    assert by_token["\n"] == {}  # the newline `<br />` became
    # `xxwrep 3 very` stands for three words: each gets a third.
    ws = word_scores(text, tokens, np.array([t == "xxwrep" for t in tokens], float))
    assert [round(s, 3) for w, s in zip(ws.words, ws.scores, strict=True) if s] == [0.333] * 3
    # Scores are only moved, never made up: what reaches words is the aligned tokens' sum.
    scores = np.random.default_rng(0).random(len(tokens))
    unaligned = [i for i, t in enumerate(tokens) if t in ("xxbos", "\n", "…")]
    total = scores.sum() - scores[unaligned].sum() - scores[tokens.index("&") + 1]
    assert word_scores(text, tokens, scores).scores.sum() == pytest.approx(total)


def test_sentencepiece_pieces_map_to_their_words():
    from ulmfit_jax.text.sentencepiece_tokenizer import SentencePieceTokenizer

    corpus = [f"The splendid film number {i} had a dreadful ending." for i in range(200)]
    sp = SentencePieceTokenizer(vocab_size=60, model_type="bpe")
    sp.train(corpus)
    text = "A splendid, dreadful FILM!"
    pieces = sp.tokenize([text])[0]
    assert len(pieces) > len(text.split()) + 1  # words are split into pieces
    words = text.split()
    for i, piece in enumerate(pieces):
        scores = np.zeros(len(pieces))
        scores[i] = 1.0
        got = word_scores(text, pieces, scores).scores
        if piece.replace("▁", "") and piece != "xxbos":
            owner = [w for w in words if piece.replace("▁", "").lower() in w.lower()]
            assert words[int(got.argmax())] in owner and got.sum() == pytest.approx(1.0), piece


# ------------------------------------------------------------------ confusion and report
def flat(report: dict) -> dict:
    """A report's numbers by (row, column) key, for `pytest.approx`."""
    return {(row, col): v for row, cols in report.items()
            for col, v in (cols.items() if isinstance(cols, dict) else [("", cols)])}


@pytest.mark.parametrize("seed", range(3))
def test_confusion_matrix_and_report_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    names = ["a", "b", "c", "d"]
    labels = rng.integers(0, 3, 120)  # class "d" is never true
    probs = rng.dirichlet(np.ones(4), 120)
    interp = Interpretation(probs, [names[i] for i in labels], names)
    predictions = probs.argmax(-1)
    expected = sk.confusion_matrix(labels, predictions, labels=range(4))
    np.testing.assert_array_equal(interp.confusion_matrix(), expected)
    assert flat(interp.report()) == pytest.approx(flat(sk.classification_report(
        labels, predictions, labels=range(4), target_names=names, output_dict=True,
        zero_division=0)))
    confused = [(names[t], names[p], int(expected[t, p])) for t in range(4) for p in range(4)
                if t != p and expected[t, p] >= 2]
    assert interp.most_confused(min_count=2) == sorted(confused, key=lambda r: -r[2])


def test_multi_label_confusion_and_report_per_label_equal_scikit_learn():
    rng = np.random.default_rng(0)
    names = ["sports", "music", "food"]
    truth = (rng.random((80, 3)) < 0.4).astype(int)
    truth[:, 2] = 0  # a label never present
    probs = rng.random((80, 3))
    label_lists = [[n for n, y in zip(names, row, strict=True) if y] for row in truth]
    interp = Interpretation(probs, label_lists, names, multi_label=True, threshold=0.6)
    predicted = (probs > 0.6).astype(int)
    np.testing.assert_array_equal(interp.confusion_matrix(),
                                  sk.multilabel_confusion_matrix(truth, predicted))
    expected = sk.classification_report(truth, predicted, target_names=names, output_dict=True,
                                        zero_division=0)
    del expected["samples avg"]
    assert flat(interp.report()) == pytest.approx(flat(expected))
    np.testing.assert_array_equal(Interpretation(probs, truth, names, True, 0.6).labels, truth)
    losses = interp.losses()
    bce = torch.nn.functional.binary_cross_entropy(torch.tensor(probs), torch.tensor(
        truth, dtype=torch.float64), reduction="none").mean(1).numpy()
    np.testing.assert_allclose(losses, bce, rtol=1e-9)
    with pytest.raises(ValueError, match="single-label"):
        interp.most_confused()


def test_a_label_that_is_no_class_is_named():
    with pytest.raises(ValueError, match=r"label #1 is 'maybe', not one of the classes"):
        Interpretation(np.full((2, 2), 0.5), ["neg", "maybe"], CLASSES)
    with pytest.raises(ValueError, match="label #0 is 2, not a class index below 2"):
        Interpretation(np.full((1, 2), 0.5), [2], CLASSES)


# ------------------------------------------------------------------ pictures
def test_confusion_matrix_png_needs_no_display(tmp_path):
    code = ("import numpy as np, sys\n"
            "from ulmfit_jax.explain.interpretation import Interpretation\n"
            "i = Interpretation(np.eye(3)[[0, 1, 2, 1]], [0, 1, 2, 2], ['a', 'b', 'c'])\n"
            f"i.plot_confusion_matrix({str(tmp_path / 'cm.png')!r})\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**env, "MPLBACKEND": "TkAgg"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _result(text: str, scores: list[float]) -> explain.WordImportance:
    from ulmfit_jax.text.word_alignment import text_words

    words, spans = text_words(text)
    return explain.WordImportance(text, words, spans, np.asarray(scores), "pos", 0.875)


def test_html_is_self_contained_and_colours_each_word_by_its_score():
    page = explain.to_html([_result("A <b>bold</b>\nclaim & more", [0.0, 0.5, 1.0, 0.25, 0.0])])
    assert page.startswith("<!DOCTYPE html>") and "pos (0.88)" in page
    assert not re.search(r"<script|https?://|src=", page)
    spans = re.findall(r'title="([\d.]+)" style="background: rgba\(220, 38, 38, ([\d.]+)\)">'
                       r'([^<]*)</span>', page)
    assert spans == [("0.00", "0.000", "A"), ("0.50", "0.500", "&lt;b&gt;bold&lt;/b&gt;"),
                     ("1.00", "1.000", "claim"), ("0.25", "0.250", "&amp;"),
                     ("0.00", "0.000", "more")]
    assert "</span><br>\n<span" in page  # the text's newline kept


def test_terminal_text_colours_the_important_words():
    result = _result("a splendid film", [0.0, 1.0, 0.4])
    plain = explain.to_terminal(result, color=False)
    assert plain == "pos (0.88): a splendid film\n  top words: splendid 1.00, film 0.40, a 0.00"
    coloured = explain.to_terminal(result, color=True)
    assert "a \x1b[30;48;5;196msplendid\x1b[0m \x1b[30;48;5;217mfilm\x1b[0m" in coloured


def test_predict_explain_prints_coloured_words_and_writes_html(planted, tmp_path):
    fwd, _, test = planted
    fwd.save(tmp_path / "fwd")
    texts = [t for t, _ in test[:2]]
    run = [sys.executable, "predict.py", "--model", str(tmp_path / "fwd"), "--explain"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "FORCE_COLOR": "1"}
    proc = subprocess.run([*run, *texts], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = explain.word_importance(fwd, texts)
    lines = proc.stdout.splitlines()
    for result, head, top in zip(expected, lines[0::2], lines[1::2], strict=True):
        assert head.startswith(f"{result.class_name} ({result.probability:.2f}): ")
        assert "\x1b[30;48;5;196m" in head  # the top word's background
        assert top.startswith(f"  top words: {result.top(1)[0][0]} 1.00")
    # predict.py --explain --output FILE: what the CLI calls (a UserError is its one-line error)
    with pytest.raises(InputError, match="w.csv: word importance is written to .html, .txt"):
        explain.write_word_importance(fwd, texts, str(tmp_path / "w.csv"))
    explain.write_word_importance(fwd, texts, str(tmp_path / "w.html"))
    page = (tmp_path / "w.html").read_text()
    assert page.count('<div class="doc">') == 2 and expected[0].top(1)[0][0] in page


# ------------------------------------------------------------------ train.py's files
def test_validation_files_of_a_multi_label_run_and_fresh_removes_them(tmp_path):
    from ulmfit_jax.text.tokenized_corpus import TokenizedCorpus
    from ulmfit_jax.trainer.data import PreparedData
    from ulmfit_jax.trainer.validation_files import VALIDATION_FILES, write_validation_files
    from ulmfit_jax.trainer.workdir import FRESH_REMOVES, forget_run

    tok = FastaiTokenizer()
    texts = ["A goal and a guitar.", "Spicy recipe!", "The referee sang a melody.", "Oven."]
    vocab = Vocab.from_tokens(tok.tokenize(texts), min_freq=1)
    names = ["sports", "music", "food"]
    truth = np.array([[1, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 1]])
    corpus = TokenizedCorpus.from_lists([vocab.numericalize(t) for t in tok.tokenize(texts)])
    corpus = TokenizedCorpus(corpus.ids, corpus.offsets, truth)
    data = PreparedData(vocab, tok, names, corpus, corpus, corpus, corpus, multi_label=True)
    probs = np.array([[0.9, 0.2, 0.1], [0.3, 0.1, 0.8], [0.6, 0.7, 0.4], [0.1, 0.9, 0.2]],
                     np.float32)
    for name, p in (("classifier_fwd", probs), ("classifier_bwd", probs[:, ::-1])):
        (tmp_path / "models" / name).mkdir(parents=True)
        np.save(tmp_path / "models" / name / "valid_probs.npy", np.ascontiguousarray(p))
    write_validation_files(tmp_path, data, backward=True, threshold=0.5)

    report = json.loads((tmp_path / "classification_report.json").read_text())
    ensemble = (probs + probs[:, ::-1]) / 2
    expected = sk.classification_report(truth, ensemble > 0.5, target_names=names,
                                        output_dict=True, zero_division=0)
    del expected["samples avg"]
    assert set(report) == {"classifier_fwd", "classifier_bwd", "ensemble"}
    assert flat(report["ensemble"]) == pytest.approx(flat(expected))
    with (tmp_path / "top_losses.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    bce = -np.where(truth > 0, np.log(ensemble), np.log(1 - ensemble)).mean(1)
    assert [int(r["index"]) for r in rows] == np.argsort(-bce, kind="stable").tolist()
    first = rows[0]
    assert first["actual"] == "|".join(n for n, y in zip(names, truth[int(first["index"])],
                                                         strict=True) if y)
    assert [float(first[f"p_{n}"]) for n in names] == pytest.approx(
        ensemble[int(first["index"])].tolist(), rel=1e-5)
    assert first["text"] == texts[int(first["index"])]  # read back from its tokens
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000
    assert set(VALIDATION_FILES) <= set(FRESH_REMOVES)
    forget_run(tmp_path)
    assert not any((tmp_path / name).exists() for name in VALIDATION_FILES)
