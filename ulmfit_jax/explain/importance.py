"""Word importance: one score per word of a text for a class, from the gradient of the class
probability with respect to the embedding output (`explain.saliency`).

What the score means (default `method="input_x_gradient"`): the size of the first-order
estimate of how much the probability of the class would change if a token's embedding were
zeroed, summed over the word's tokens and scaled so the document's largest is 1.
`method="intrinsic_attention"` is fastai v1's score instead: the size of the gradient alone
(how sensitive the probability is to the word's embedding moving a little).

What it does not mean: it is unsigned (it does not say whether the word pushes towards the
class or away from it); it is a local, linear estimate, not what deleting or replacing the
word would really do; scores of different documents are not on one scale.

What it cannot see, as fastai's: a word's influence through the recurrent state carried into
later `bptt` chunks (the classifier cuts that gradient, as fastai does), and tokens more than about
`max_len` before a document's end (BPT3C does not pool them). A prediction near certainty has
gradients near zero; at probability exactly 1.0 in float32 every score is 0.

Words are the whitespace-separated pieces of the text as given (`text.word_alignment`): the
scores of fastai's marker tokens (`xxmaj`, `xxup`, `xxrep`, `xxwrep`) go to the word they
mark, SentencePiece pieces to the word they are part of. A backward model's scores are mapped
back to reading order. An ensemble's are the mean of its members' (each scaled to 1 first).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from ulmfit_jax.api import Ensemble, TextClassifier
from ulmfit_jax.api.checks import require_tokenizer
from ulmfit_jax.explain.saliency import METHODS, token_saliency
from ulmfit_jax.text.classifier_batches import pad_front
from ulmfit_jax.text.prediction_batches import check_texts, padded_batches
from ulmfit_jax.text.vocab import Vocab
from ulmfit_jax.text.word_alignment import text_words, word_scores


@dataclasses.dataclass(frozen=True)
class WordImportance:
    """A text's words, their `(start, end)` spans in it, a score each (see module doc; the
    largest is 1, all 0 if the gradient vanished), the class explained and its probability."""

    text: str
    words: list[str]
    spans: list[tuple[int, int]]
    scores: np.ndarray
    class_name: str
    probability: float

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The `k` most important `(word, score)` pairs, largest first."""
        order = np.argsort(-self.scores, kind="stable")[:k]
        return [(self.words[i], float(self.scores[i])) for i in order]


@dataclasses.dataclass(frozen=True)
class _Explained:
    """One member's view of one text: scaled word scores and the class probabilities."""

    scores: np.ndarray
    probs: np.ndarray
    class_index: int


def word_importance(model: TextClassifier | Ensemble, texts: str | Sequence[str],
                    class_name: str | None = None, batch_size: int = 32,
                    method: str = "input_x_gradient") -> WordImportance | list[WordImportance]:
    """Word importance of each text for `class_name`, or for its predicted class (the mean
    probabilities' for an ensemble; multi-label: the most likely class), by `method` (see
    module doc). One text in, one `WordImportance` out; a list in, a list out. Texts are
    batched like `predict_proba`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    single = isinstance(texts, str)
    texts = check_texts([texts] if isinstance(texts, str) else texts)
    members = _members(model)
    names = members[0].class_names
    target = _class_index(class_name, names)
    if target is None and len(members) > 1:
        targets = model.predict_proba(texts, batch_size=batch_size).argmax(-1)
    else:
        targets = np.full(len(texts), -1 if target is None else target)
    views = [_explain(clf, texts, targets, batch_size, method) for clf in members]
    results = [_combine(text, [v[i] for v in views], names)
               for i, text in enumerate(texts)]
    return results[0] if single else results


def _members(model: TextClassifier | Ensemble) -> list[TextClassifier]:
    members: list[Any] = model.classifiers if isinstance(model, Ensemble) else [model]
    for clf in members:
        if not isinstance(clf, TextClassifier):
            raise TypeError(f"word importance needs the model's gradients: a TextClassifier "
                            f"(or an Ensemble of them), not {type(clf).__name__}")
    return members


def _class_index(class_name: str | None, names: list[str]) -> int | None:
    if class_name is None:
        return None
    if class_name not in names:
        raise ValueError(f"class {class_name!r} is not one of the classes {names}")
    return names.index(class_name)


def _explain(clf: TextClassifier, texts: list[str], targets: np.ndarray, batch_size: int,
             method: str) -> list[_Explained]:
    """Scaled word scores of every text for `targets[i]` (-1: the predicted class)."""
    tokens = require_tokenizer(clf.tokenizer, "classifier").tokenize(texts)
    vocab = Vocab(clf.vocab)
    docs = [vocab.numericalize(t) for t in tokens]
    docs = [d[::-1].copy() for d in docs] if clf.backward else docs
    graphdef, state = nnx.split(clf.module)
    pure, config = nnx.to_pure_dict(state), clf.config
    out: dict[int, _Explained] = {}
    for members, ids in padded_batches(docs, batch_size, config.bptt, config.encoder.pad_id):
        classes = np.full(len(ids), -1, np.int32)
        classes[:len(members)] = targets[members]
        found = jax.device_get(token_saliency(graphdef, pure, ids, classes,
                                              pad_id=config.encoder.pad_id,
                                              multi_label=clf.multi_label))
        for row, i in enumerate(members):
            start = pad_front(ids.shape[1], len(docs[i]), config.bptt)
            token_scores = getattr(found, method)[row, start:start + len(docs[i])]
            scores = word_scores(texts[i], tokens[i],
                                 token_scores[::-1] if clf.backward else token_scores).scores
            out[i] = _Explained(_scaled(scores), found.probs[row], int(found.classes[row]))
    return [out[i] for i in range(len(texts))]


def _scaled(scores: np.ndarray) -> np.ndarray:
    top = scores.max(initial=0.0)
    return scores / top if top > 0 else np.zeros_like(scores)


def _combine(text: str, views: list[_Explained], names: list[str]) -> WordImportance:
    index = views[0].class_index
    words, spans = text_words(text)
    return WordImportance(
        text=text, words=words, spans=spans,
        scores=np.mean([v.scores for v in views], axis=0),
        class_name=names[index],
        probability=float(np.mean([v.probs[index] for v in views])))
