"""Helpers that build fastai (2.8.12) reference models for live parity tests.

Importable by any test module:
- `fastai_lm(vocab, emb, hidden, n_layers, ...)`, `fastai_classifier(...)`: fastai models built
  with `get_language_model` / `get_text_classifier` (weight_p is kept tiny but > 0, since
  fastai crashes at reset with 0).
- `state_dict_numpy(module)`: torch state dict -> OrderedDict of numpy arrays.
- `DropoutRecorder`: context manager that records every dropout mask fastai draws (or replays
  given masks), so the same masks can be injected into our model.
- `lm_masks_from_fastai`, `classifier_masks_to_fastai`: convert masks between the two layouts.
- `text_learner_step(model, ids, labels, ...)`: one training step of fastai's own
  `TextLearner` (its AR/TAR, Adam, `freeze_to`) on one batch; what it computed and changed.
- `load_pure_dict(model, tree)`: put a pure dict (e.g. from `fastai_weights`) into an nnx model.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections import OrderedDict, defaultdict
from collections.abc import Iterator

import fastai.text.all as fa
import jax
import jax.numpy as jnp
import numpy as np
import torch
from fastai.text.models import awdlstm
from flax import nnx

from ulmfit_jax.model.awd_lstm import AWDLSTMMasks
from ulmfit_jax.model.classifier import ClassifierDropoutMasks
from ulmfit_jax.model.language_model import LMDropoutMasks

TINY_WEIGHT_P = 1e-6


def fastai_lm(vocab: int, emb: int, hidden: int, n_layers: int, drop_mult: float = 1.0,
              seed: int = 0, **dropouts: float) -> torch.nn.Module:
    """A fastai AWD-LSTM language model (fastai LM dropout defaults unless overridden)."""
    torch.manual_seed(seed)
    config = dict(fa.awd_lstm_lm_config, emb_sz=emb, n_hid=hidden, n_layers=n_layers)
    config.update(dropouts)
    if config["weight_p"] * drop_mult == 0:
        config["weight_p"] = TINY_WEIGHT_P
    return fa.get_language_model(fa.AWD_LSTM, vocab, config=config, drop_mult=drop_mult)


def fastai_classifier(vocab: int, emb: int, hidden: int, n_layers: int, n_classes: int,
                      bptt: int, max_len: int, drop_mult: float = 1.0, seed: int = 0,
                      **dropouts: float) -> torch.nn.Module:
    """A fastai AWD-LSTM text classifier; BatchNorm running stats set to random values."""
    torch.manual_seed(seed)
    config = dict(emb_sz=emb, n_hid=hidden, n_layers=n_layers, **dropouts)
    model = fa.get_text_classifier(fa.AWD_LSTM, vocab, n_classes, seq_len=bptt, config=config,
                                   drop_mult=drop_mult, max_len=max_len)
    with torch.no_grad():
        for block in model[1].layers:
            bn = block[0]
            bn.running_mean.normal_(0.0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.1)
    return model


def state_dict_numpy(module: torch.nn.Module) -> OrderedDict[str, np.ndarray]:
    """The module's state dict as numpy arrays, in the same key order."""
    return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in module.state_dict().items())


def load_pure_dict(model: nnx.Module, tree: dict) -> None:
    """Replace the model's state (params and batch stats) by a pure dict of arrays."""
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map(jnp.asarray, tree))
    nnx.update(model, state)


class _HeadDropout(torch.nn.Module):
    """Stand-in for the head's nn.Dropout whose masks a `DropoutRecorder` can see."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * _draw(self, x, (x.size(0), x.size(1)), self.p)


_ACTIVE: list[DropoutRecorder] = []


def _draw(owner: torch.nn.Module, x: torch.Tensor, size: tuple[int, ...], p: float) -> torch.Tensor:
    """fastai's `dropout_mask`, or the replayed mask (first rows) when the recorder has one."""
    recorder = _ACTIVE[-1] if _ACTIVE else None
    if recorder is not None and owner in recorder.replay:
        mask = _fit_rows(recorder.replay[owner], size)
    else:
        mask = awdlstm.dropout_mask(x.data, size, p)
    if recorder is not None:
        recorder.masks[owner].append(mask)
    return mask


def _fit_rows(mask: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Replayed batch masks are cut to the rows fastai runs (it shrinks `real_bs`)."""
    if tuple(mask.shape) == tuple(size):
        return mask
    return mask[: size[0]].reshape(size)


def _rnn_dropout_forward(self: awdlstm.RNNDropout, x: torch.Tensor) -> torch.Tensor:
    if not self.training or self.p == 0.0:
        return x
    return x * _draw(self, x, (x.size(0), 1, *x.shape[2:]), self.p)


def _embedding_dropout_forward(self: awdlstm.EmbeddingDropout, words: torch.Tensor,
                               scale: float | None = None) -> torch.Tensor:
    weight = self.emb.weight
    if self.training and self.embed_p != 0:
        weight = weight * _draw(self, weight, (weight.size(0), 1), self.embed_p)
    return torch.nn.functional.embedding(words, weight, self.emb.padding_idx)


def _weight_dropout_setweights(self: awdlstm.WeightDropout) -> None:
    for layer in self.layer_names:
        raw = getattr(self, f"{layer}_raw")
        if self.training:
            w = raw * _draw(self, raw, tuple(raw.shape), self.weight_p)
        else:
            w = raw.clone()
        setattr(self.module, layer, w)


class DropoutRecorder(contextlib.AbstractContextManager):
    """Within the context, fastai's dropouts record their masks in `masks[module]` (a list, one
    per draw); modules in `replay` use the given mask (cut to the current rows) instead."""

    def __init__(self, replay: dict[torch.nn.Module, torch.Tensor] | None = None):
        self.replay = replay or {}
        self.masks: defaultdict[torch.nn.Module, list[torch.Tensor]] = defaultdict(list)
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> DropoutRecorder:
        patches = [
            (awdlstm.RNNDropout, "forward", _rnn_dropout_forward),
            (awdlstm.EmbeddingDropout, "forward", _embedding_dropout_forward),
            (awdlstm.WeightDropout, "_setweights", _weight_dropout_setweights),
        ]
        for cls, name, fn in patches:
            old = cls.__dict__[name]
            setattr(cls, name, fn)
            self._stack.callback(setattr, cls, name, old)
        _ACTIVE.append(self)
        self._stack.callback(_ACTIVE.pop)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _np(t: torch.Tensor) -> jnp.ndarray:
    return jnp.asarray(t.detach().cpu().numpy())


def lm_masks_from_fastai(model: torch.nn.Module, recorder: DropoutRecorder,
                         draw: int = -1) -> LMDropoutMasks:
    """The masks fastai drew in forward call number `draw`, in our layout."""
    enc, dec = model[0], model[1]
    encoder = AWDLSTMMasks(
        embed=_np(recorder.masks[enc.encoder_dp][draw][:, 0]),
        input=_np(recorder.masks[enc.input_dp][draw][:, 0]),
        hidden=tuple(_np(recorder.masks[dp][draw][:, 0]) for dp in enc.hidden_dps[:-1]),
        weight=tuple(_np(recorder.masks[rnn][draw].T) for rnn in enc.rnns),
    )
    return LMDropoutMasks(encoder=encoder, output=_np(recorder.masks[dec.output_dp][draw][:, 0]))


def install_head_dropouts(model: torch.nn.Module) -> list[_HeadDropout]:
    """Swap the classifier head's nn.Dropout layers for recordable ones (same p)."""
    swapped = []
    for block in model[1].layers:
        for i, layer in enumerate(block):
            if isinstance(layer, torch.nn.Dropout):
                block[i] = _HeadDropout(layer.p)
                swapped.append(block[i])
    return swapped


def classifier_masks_to_fastai(model: torch.nn.Module, masks: ClassifierDropoutMasks,
                               head_dropouts: list[_HeadDropout]) -> dict:
    """Replay table making fastai use our classifier masks (the same ones for every chunk)."""
    enc, ours = model[0].module, masks.encoder
    t = lambda a: torch.from_numpy(np.asarray(a).copy())  # noqa: E731
    replay = {enc.encoder_dp: t(ours.embed)[:, None], enc.input_dp: t(ours.input)[:, None]}
    for dp, m in zip(enc.hidden_dps[:-1], ours.hidden, strict=True):
        replay[dp] = t(m)[:, None]
    for rnn, m in zip(enc.rnns, ours.weight, strict=True):
        replay[rnn] = t(np.asarray(m).T)
    for dp, m in zip(head_dropouts, masks.head, strict=True):
        replay[dp] = t(m)
    return replay


@contextlib.contextmanager
def no_grad_eval(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode, no autograd, hidden state reset."""
    model.eval()
    model.reset()
    with torch.no_grad():
        yield model


@dataclasses.dataclass
class FastaiStep:
    """One fastai training step: `loss` (reported), `loss_grad` (what it differentiated,
    AR/TAR included), `grads` of the trainable parameters and every parameter after the step,
    both by torch name."""

    loss: float
    loss_grad: float
    grads: dict[str, np.ndarray]
    params: dict[str, np.ndarray]


class _StepCapture(fa.Callback):
    """Records the step's losses and gradients; skips validation."""

    order = fa.RNNRegularizer.order + 1  # after the regularizer has added AR/TAR

    def after_loss(self) -> None:
        self.reported, self.differentiated = self.learn.loss.item(), self.learn.loss_grad.item()

    def after_backward(self) -> None:
        self.gradients = {name: p.grad.numpy().copy()
                          for name, p in self.learn.model.named_parameters() if p.grad is not None}

    def before_validate(self) -> None:
        raise fa.CancelValidException()


def text_learner_step(model: torch.nn.Module, ids: np.ndarray, labels: np.ndarray, *,
                      freeze_to: int, lr: float, lr_div: float, replay: dict, wd: float,
                      alpha: float, beta: float) -> FastaiStep:
    """One step of fastai's own `TextLearner` (`RNNRegularizer(alpha, beta)`, cross-entropy,
    Adam with mom 0.9, `freeze_to` with `train_bn`) on one batch, LR `slice(lr / lr_div, lr)`,
    with the dropout masks of `replay` (`classifier_masks_to_fastai`)."""
    batch = (torch.from_numpy(ids).long(), torch.from_numpy(labels).long())
    loader = fa.DataLoader([batch], bs=None)  # one prebatched batch
    capture = _StepCapture()
    learn = fa.TextLearner(fa.DataLoaders(loader, loader), model, alpha=alpha, beta=beta,
                           loss_func=fa.CrossEntropyLossFlat(), opt_func=fa.Adam,
                           splitter=fa.awd_lstm_clas_split, wd=wd, cbs=[capture])
    learn.freeze_to(freeze_to)
    with learn.no_bar(), learn.no_logging(), DropoutRecorder(replay):
        learn.fit(1, slice(lr / lr_div, lr))
    params = {name: p.detach().numpy().copy() for name, p in model.named_parameters()}
    return FastaiStep(capture.reported, capture.differentiated, capture.gradients, params)
