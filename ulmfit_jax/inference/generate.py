"""Language-model text generation and next-word prediction on raw text.

fastai's `LMLearner.predict(text, n_words, no_unk=True, temperature=1.)` re-reads the whole
sequence for every new word. Here the prompt is read once (right-padded to a bucketed length,
padding steps leave the state untouched) and then each word costs one call of a single
compiled step that feeds the last word and the carried LSTM state, and samples the next word.
The sampling key is `fold_in(key(seed), step)`: the same seed gives the same text.

As fastai: `xxunk` is never sampled, the temperature divides the logits (fastai's
`probs ** (1/T)`), `xxbos`/`xxpad` are dropped from the decoded text, and the prompt's own
tokens are part of the returned text. Also never sampled: `xxpad` and `xxfake` (vocab filler),
which are not text. `top_k` / `top_p` (nucleus) filtering are applied after the temperature;
`temperature=0` picks the most likely word.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ulmfit_jax.model.encoder import EncoderState
from ulmfit_jax.model.language_model import AWDLSTMLanguageModel, tied_decoder
from ulmfit_jax.text.fastai_tokenizer import BOS, PAD, UNK
from ulmfit_jax.text.prediction_batches import check_texts
from ulmfit_jax.text.vocab import FAKE_TOKEN, Vocab

NEVER_SAMPLED = (UNK, PAD, FAKE_TOKEN)
MIN_READ_LEN = 8  # prompt lengths are padded to powers of two from here: few compiles


@functools.partial(jax.jit, static_argnums=0)
def _read(graphdef: nnx.GraphDef, params: nnx.State, ids: jax.Array,
          lengths: jax.Array) -> tuple[jax.Array, EncoderState]:
    """ids [batch, time] right-padded, lengths [batch] -> next-word logits [batch, vocab] after
    each row's last real token, and the state there."""
    model = nnx.merge(graphdef, params)
    step_mask = jnp.arange(ids.shape[1])[None, :] < lengths[:, None]
    raw, state = model.encoder(ids, None, None, step_mask)
    last = jnp.take_along_axis(raw, (lengths - 1)[:, None, None], axis=1)
    logits = tied_decoder(last, model.encoder.embedding[...], model.decoder_bias[...],
                          model.config)
    return logits[:, 0], state


def filter_logits(logits: jax.Array, top_k: int | None, top_p: float | None) -> jax.Array:
    """logits [vocab] with everything outside the top k / the nucleus of mass top_p at -inf."""
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][-1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        desc = jnp.sort(logits)[::-1]
        probs = jax.nn.softmax(desc)
        # Keep the most likely words until their mass reaches top_p (always at least one).
        n_keep = jnp.sum(jnp.cumsum(probs) - probs < top_p)
        logits = jnp.where(logits < desc[jnp.maximum(n_keep - 1, 0)], -jnp.inf, logits)
    return logits


@functools.partial(jax.jit, static_argnums=(0, 7, 8, 9))
def _sample_step(graphdef: nnx.GraphDef, params: nnx.State, logits: jax.Array,
                 state: EncoderState, banned: jax.Array, key: jax.Array,
                 temperature: jax.Array, greedy: bool, top_k: int | None, top_p: float | None,
                 ) -> tuple[jax.Array, jax.Array, EncoderState]:
    """Sample a word from logits [vocab] (never a `banned` [vocab] one), feed it to the LM
    with `state`: (word id, next logits [vocab], new state)."""
    logits = jnp.where(banned, -jnp.inf, logits)
    if greedy:
        word = jnp.argmax(logits)
    else:
        word = jax.random.categorical(key, filter_logits(logits / temperature, top_k, top_p))
    out = nnx.merge(graphdef, params)(word.reshape(1, 1).astype(jnp.int32), state)
    return word, out.logits[0, -1], out.state


class Generator:
    """Samples words after a prompt with an LM module, its vocab and tokenizer."""

    def __init__(self, module: AWDLSTMLanguageModel, vocab: Vocab, tokenizer,
                 backward: bool = False):
        self.graphdef, self.params = nnx.split(module)
        self.vocab, self.tokenizer, self.backward = vocab, tokenizer, backward
        self.pad_id = module.config.pad_id
        banned = np.zeros(len(vocab.itos), bool)
        banned[[i for i, t in enumerate(vocab.itos) if t in NEVER_SAMPLED]] = True
        self.banned = jnp.asarray(banned)

    def _prompt_ids(self, texts: Sequence[str]) -> list[np.ndarray]:
        docs = [self.vocab.numericalize(t) for t in self.tokenizer.tokenize(check_texts(texts))]
        if self.backward:  # read right to left; the text starts after the generated words
            bos = self.vocab.stoi.get(BOS)
            docs = [d[1:] if len(d) and d[0] == bos else d for d in docs]
            docs = [d[::-1].copy() for d in docs]
        return docs

    def read(self, texts: Sequence[str]) -> tuple[jax.Array, EncoderState, list[np.ndarray]]:
        """Next-word logits [batch, vocab], state and ids of each text read whole."""
        docs = self._prompt_ids(texts)
        longest = max([len(d) for d in docs] + [1])
        width = max(MIN_READ_LEN, 1 << (longest - 1).bit_length())
        ids = np.full((len(docs), width), self.pad_id, np.int32)
        for row, doc in enumerate(docs):
            ids[row, :len(doc)] = doc
        lengths = np.array([max(len(d), 1) for d in docs], np.int32)
        logits, state = _read(self.graphdef, self.params, jnp.asarray(ids), jnp.asarray(lengths))
        return logits, state, docs

    def predict_next(self, texts: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """The k most likely next tokens of each text, with their probabilities (the model's,
        not renormalised; tokens that are never sampled are left out)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        logits, _, _ = self.read(texts)
        probs = jnp.where(self.banned, 0.0, jax.nn.softmax(logits, axis=-1))
        probs, ids = jax.lax.top_k(probs, min(k, logits.shape[-1]))
        return [[(self.vocab.itos[i], float(p)) for i, p in zip(row_i, row_p, strict=True)]
                for row_i, row_p in zip(np.asarray(ids), np.asarray(probs), strict=True)]

    def generate(self, prompt: str, n_words: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 seed: int = 0) -> list[str]:
        """Tokens of `prompt` followed by `n_words` sampled ones (in reading order)."""
        _check_sampling(n_words, temperature, top_k, top_p)
        logits, state, docs = self.read([prompt])
        logits, key, words = logits[0], jax.random.key(seed), []
        for step in range(n_words):
            word, logits, state = _sample_step(
                self.graphdef, self.params, logits, state, self.banned,
                jax.random.fold_in(key, step), jnp.float32(temperature or 1.0),
                temperature == 0, top_k, top_p)
            words.append(word)  # no int() here: the steps are dispatched without waiting
        ids = [*docs[0].tolist(), *(int(w) for w in jax.device_get(words))]
        return self.vocab.ids_to_tokens(ids[::-1] if self.backward else ids)


def _check_sampling(n_words: int, temperature: float, top_k: int | None,
                    top_p: float | None) -> None:
    if n_words < 0:
        raise ValueError(f"n_words must be >= 0, got {n_words}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
