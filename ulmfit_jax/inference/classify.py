"""The classifier's eval forward, and the probabilities of raw texts it gives in input order.

`classifier_eval` is the one eval forward every user shares: `TextClassifier.__call__` and
`predict_proba`, the serving export and the trainer's validation step. The host side of
`RawTextPredictor` (tokenize, sort by length, pad to a few bucketed shapes, restore the
order) is `text.prediction_batches`; its batches are split over the local devices
(`inference.local_devices`). A document's probabilities do not depend on its batch:
leading padding leaves the state at zero and BatchNorm uses its running statistics (see
`model.classifier`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ulmfit_jax.inference.cached_split import CachedSplit
from ulmfit_jax.inference.local_devices import LocalDevices
from ulmfit_jax.model.classifier import AWDLSTMClassifier
from ulmfit_jax.model.config import AWDLSTMConfig
from ulmfit_jax.text import prediction_batches as pb
from ulmfit_jax.text.vocab import Vocab


class ClassifierEval(NamedTuple):
    """Eval outputs: logits and probabilities, both `[batch, n_classes]`."""

    logits: jax.Array
    probs: jax.Array


def classifier_eval(graphdef: nnx.GraphDef, ids: jax.Array | np.ndarray,
                    *states: nnx.State | dict, multi_label: bool = False) -> ClassifierEval:
    """ids [batch, time] in fastai's padded layout -> logits and float32 probabilities
    [batch, n_classes], eval mode (no dropout, BatchNorm's running statistics).

    `states` are what `nnx.merge(graphdef, *states)` rebuilds the classifier from (one state,
    or the trainer's params and batch_stats). Probabilities are the softmax, or each class's
    sigmoid for a multi-label classifier. Unused outputs cost nothing under jit.
    """
    # Positional and a plain bool: jit keys its cache on how a static argument is passed, so
    # a caller passing `multi_label=False` and one leaving the default share one compile.
    return _classifier_eval(graphdef, bool(multi_label), ids, *states)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _classifier_eval(graphdef: nnx.GraphDef, multi_label: bool, ids: jax.Array,
                     *states: nnx.State | dict) -> ClassifierEval:
    logits = nnx.merge(graphdef, *states)(ids, masks=None, train=False)
    as_f32 = logits.astype(jnp.float32)
    probs = jax.nn.sigmoid(as_f32) if multi_label else jax.nn.softmax(as_f32, axis=-1)
    return ClassifierEval(logits, probs)


class RawTextPredictor:
    """Probabilities of raw texts from a classifier module, keeping what repeated calls share:
    the module's split (`CachedSplit`: a warm single-text call does not walk the module again)
    and its state's copy on every device (`LocalDevices.for_model`)."""

    def __init__(self) -> None:
        self._split = CachedSplit()
        self._devices: LocalDevices | None = None
        self._devices_for: AWDLSTMConfig | None = None

    def devices(self, config: AWDLSTMConfig) -> LocalDevices:
        """The devices an encoder of `config` splits its batches over."""
        if self._devices is None or self._devices_for != config:
            self._devices, self._devices_for = LocalDevices.for_model(config), config
        return self._devices

    def forward(self, module: AWDLSTMClassifier,
                multi_label: bool = False) -> Callable[[np.ndarray], np.ndarray]:
        """The device call of one padded batch: ids [rows, time] -> probabilities
        [rows, n_classes] on the host, run on `devices`."""
        graphdef, state = self._split(module)
        devices = self.devices(module.config.encoder)

        def probs(ids: np.ndarray, state: nnx.State) -> jax.Array:
            return classifier_eval(graphdef, ids, state, multi_label=multi_label).probs

        return lambda ids: np.asarray(devices.run(probs, ids, state))

    def __call__(self, module: AWDLSTMClassifier, vocab: Vocab, tokenizer,
                 texts: Sequence[str], batch_size: int, backward: bool,
                 progress: bool | None, multi_label: bool = False) -> np.ndarray:
        """Probabilities `[len(texts), n_classes]` of raw texts, in input order."""
        config = module.config
        return pb.texts_to_probabilities(
            self.forward(module, multi_label), tokenizer, vocab, texts,
            batch_size=batch_size, bptt=config.bptt, pad_id=config.encoder.pad_id,
            n_classes=config.n_classes, backward=backward, progress=progress,
            row_multiple=self.devices(config.encoder).count)
