"""A torch reference of fastai's QRNN and AWD_QRNN, for live parity tests.

fastai 2.8 no longer ships the QRNN, so its published definition is restated here:
fastai v1's `fastai/text/models/qrnn.py` (`QRNNLayer`, `QRNN`) and early fastai v2's
`fastai/text/models/awdlstm.py` (`AWD_QRNN`, `awd_qrnn_lm_config`, `awd_qrnn_clas_config`),
whose `_get_source` zero-pads or cuts the saved input when the batch size changes. Everything
else is the installed fastai itself: `AWD_LSTM` (which `AWD_QRNN` subclasses, as it did),
`WeightDropout`, the embedding / input / hidden dropouts, `get_language_model` and
`get_text_classifier` (`AWD_QRNN` is registered in fastai's `_model_meta`, as it was).
The forget-mult is fastai's CPU loop (`forget_mult_CPU`). Zoneout masks are drawn through
`fastai_reference`'s recorder, so a test can inject ours.
"""
from __future__ import annotations

from collections import OrderedDict

import fastai.text.all as fa
import numpy as np
import torch
from fastai.text.models import awdlstm, core
from torch import nn

from tests.fastai_reference import TINY_WEIGHT_P, _draw

# early fastai v2's configs (fastai v1 used the AWD-LSTM's with qrnn=True)
AWD_QRNN_LM_CONFIG = dict(emb_sz=400, n_hid=1552, n_layers=4, pad_token=1, bidir=False,
                          output_p=0.1, hidden_p=0.15, input_p=0.25, embed_p=0.02, weight_p=0.2,
                          tie_weights=True, out_bias=True)
AWD_QRNN_CLAS_CONFIG = dict(emb_sz=400, n_hid=1552, n_layers=4, pad_token=1, bidir=False,
                            output_p=0.4, hidden_p=0.3, input_p=0.4, embed_p=0.05, weight_p=0.5)


def forget_mult_loop(z: torch.Tensor, f: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
    """fastai's CPU forget-mult, batch first: c_t = f_t z_t + (1 - f_t) c_{t-1}; without a
    hidden state the first step is c = f z."""
    cells, prev = [], None if hidden is None else hidden
    for t in range(z.shape[1]):
        z_t, f_t = z[:, t], f[:, t]
        prev = f_t * z_t if prev is None else f_t * z_t + (1 - f_t) * prev
        cells.append(prev)
    return torch.stack(cells, dim=1)


class QRNNLayer(nn.Module):
    """fastai's `QRNNLayer` (forward direction, batch first, output gate)."""

    def __init__(self, input_size: int, hidden_size: int, save_prev_x: bool = False,
                 zoneout: float = 0.0, window: int = 1):
        super().__init__()
        assert window in (1, 2)
        self.save_prev_x, self.zoneout, self.window = save_prev_x, zoneout, window
        # one Linear for the three gates z, f, o
        self.linear = nn.Linear(window * input_size, 3 * hidden_size)
        self.prev_x: torch.Tensor | None = None

    def reset(self) -> None:
        self.prev_x = None

    def forward(self, inp: torch.Tensor, hid: torch.Tensor | None = None):
        z, f, o = self.linear(self._source(inp)).chunk(3, dim=2)
        z, f = z.tanh(), f.sigmoid()
        if self.zoneout and self.training:
            f = f * _draw(self, f, tuple(f.shape), self.zoneout)
        c = forget_mult_loop(z, f, hid)
        output = torch.sigmoid(o) * c
        if self.window > 1 and self.save_prev_x:
            self.prev_x = inp[:, -1:].detach()
        return output, c[:, -1]

    def _source(self, inp: torch.Tensor) -> torch.Tensor:
        """[x_t, x_{t-1}] for window 2: the saved input (rows zero-padded or cut to the
        batch) or zeros before the first step."""
        if self.window == 1:
            return inp
        prev = torch.zeros_like(inp[:, :1]) if self.prev_x is None else self.prev_x
        if prev.shape[0] < inp.shape[0]:
            prev = torch.cat([prev, torch.zeros_like(inp[prev.shape[0]:, :1])], dim=0)
        prev = prev[: inp.shape[0]]
        return torch.cat([inp, torch.cat([prev, inp[:, :-1]], dim=1)], dim=2)


class QRNN(nn.Module):
    """fastai's `QRNN` with one layer (what `AWD_QRNN` builds per layer); hidden [1, bs, nh]."""

    def __init__(self, input_size: int, hidden_size: int, save_prev_x: bool, zoneout: float,
                 window: int):
        super().__init__()
        self.layers = nn.ModuleList([QRNNLayer(input_size, hidden_size, save_prev_x, zoneout,
                                               window)])

    def reset(self) -> None:
        self.layers[0].reset()

    def forward(self, inp: torch.Tensor, hid: torch.Tensor | None = None):
        out, h = self.layers[0](inp, None if hid is None else hid[0])
        return out, torch.stack([h], 0)


class AWD_QRNN(awdlstm.AWD_LSTM):  # noqa: N801 (fastai's name)
    """fastai's `AWD_QRNN`: the AWD-LSTM with one QRNN per layer (window 2 for layer 0, 1
    after), `WeightDropout` on each layer's linear weight. `first_window` and `zoneout`
    (fastai: 2 and 0) are class attributes so tests can vary them."""

    first_window = 2
    zoneout = 0.0

    def _one_rnn(self, n_in, n_out, bidir, weight_p, l):
        rnn = QRNN(n_in, n_out, save_prev_x=not bidir, zoneout=self.zoneout,
                   window=self.first_window if l == 0 else 1)
        rnn.layers[0].linear = awdlstm.WeightDropout(rnn.layers[0].linear, weight_p,
                                                     layer_names="weight")
        return rnn

    def _one_hidden(self, l):
        nh = (self.n_hid if l != self.n_layers - 1 else self.emb_sz) // self.n_dir
        return fa.one_param(self).new_zeros(self.n_dir, self.bs, nh)

    def _change_one_hidden(self, l, bs):
        if self.bs < bs:
            nh = (self.n_hid if l != self.n_layers - 1 else self.emb_sz) // self.n_dir
            return torch.cat([self.hidden[l],
                              self.hidden[l].new_zeros(self.n_dir, bs - self.bs, nh)], dim=1)
        if self.bs > bs:
            return self.hidden[l][:, :bs]
        return self.hidden[l]


core._model_meta.setdefault(AWD_QRNN, {
    "hid_name": "emb_sz", "url": None, "config_lm": AWD_QRNN_LM_CONFIG,
    "split_lm": awdlstm.awd_lstm_lm_split, "config_clas": AWD_QRNN_CLAS_CONFIG,
    "split_clas": awdlstm.awd_lstm_clas_split})


def qrnn_arch(first_window: int = 2, zoneout: float = 0.0) -> type[AWD_QRNN]:
    """`AWD_QRNN`, or a subclass with another first window / zoneout (registered alike)."""
    if (first_window, zoneout) == (2, 0.0):
        return AWD_QRNN
    arch = type("AWD_QRNN_variant", (AWD_QRNN,),
                {"first_window": first_window, "zoneout": zoneout})
    core._model_meta[arch] = core._model_meta[AWD_QRNN]
    return arch


def qrnn_lm(vocab: int, emb: int, hidden: int, n_layers: int, drop_mult: float = 1.0,
            seed: int = 0, first_window: int = 2, zoneout: float = 0.0,
            **dropouts: float) -> nn.Module:
    """fastai's AWD-QRNN language model (`awd_qrnn_lm_config` dropouts unless overridden)."""
    torch.manual_seed(seed)
    config = dict(AWD_QRNN_LM_CONFIG, emb_sz=emb, n_hid=hidden, n_layers=n_layers)
    config.update(dropouts)
    if config["weight_p"] * drop_mult == 0:
        config["weight_p"] = TINY_WEIGHT_P
    return fa.get_language_model(qrnn_arch(first_window, zoneout), vocab, config=config,
                                 drop_mult=drop_mult)


def qrnn_classifier(vocab: int, emb: int, hidden: int, n_layers: int, n_classes: int,
                    bptt: int, max_len: int, drop_mult: float = 1.0, seed: int = 0,
                    **dropouts: float) -> nn.Module:
    """fastai's AWD-QRNN text classifier; BatchNorm running stats set to random values."""
    torch.manual_seed(seed)
    config = dict(emb_sz=emb, n_hid=hidden, n_layers=n_layers, **dropouts)
    model = fa.get_text_classifier(AWD_QRNN, vocab, n_classes, seq_len=bptt, config=config,
                                   drop_mult=drop_mult, max_len=max_len)
    with torch.no_grad():
        for block in model[1].layers:
            block[0].running_mean.normal_(0.0, 0.5)
            block[0].running_var.uniform_(0.5, 2.0)
    return model


def qrnn_layers(encoder: AWD_QRNN) -> list[QRNNLayer]:
    """The QRNN layer of each AWD layer."""
    return [rnn.layers[0] for rnn in encoder.rnns]


def qrnn_grads(encoder: AWD_QRNN) -> dict:
    """The encoder's gradients in our parameter layout (`encoder/...` pure dict)."""
    layers = {}
    for l, layer in enumerate(qrnn_layers(encoder)):
        layers[l] = {"kernel": layer.linear.weight_raw.grad.numpy().T,
                     "bias": layer.linear.module.bias.grad.numpy()}
    return {"embedding": encoder.encoder.weight.grad.numpy(), "layers": layers}


def v1_state_dict(state_dict: OrderedDict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    """The same weights as fastai v1 saved them: its `WeightDropout` also kept the dropped copy
    `....linear.module.weight` (here a copy of the raw weight, as in eval) before the bias."""
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for key, value in state_dict.items():
        out[key] = value
        if key.endswith(".linear.weight_raw"):
            out[key.replace(".weight_raw", ".module.weight")] = value.copy()
    return out


def _tensor(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def encoder_replay(encoder: AWD_QRNN, masks, zoneouts) -> dict:
    """Replay table (`DropoutRecorder(replay=...)`) making fastai's AWD_QRNN draw our
    `QRNNMasks`; zoneouts: per layer [batch, time, hid] (`qrnn.zoneout_masks`) or None."""
    replay = {encoder.encoder_dp: _tensor(masks.embed)[:, None],
              encoder.input_dp: _tensor(masks.input)[:, None]}
    for dp, m in zip(encoder.hidden_dps[:-1], masks.hidden, strict=True):
        replay[dp] = _tensor(m)[:, None]
    for layer, m in zip(qrnn_layers(encoder), masks.weight, strict=True):
        replay[layer.linear] = _tensor(np.asarray(m).T)
    if zoneouts is not None:
        for layer, m in zip(qrnn_layers(encoder), zoneouts, strict=True):
            replay[layer] = _tensor(m)
    return replay


def lm_replay(model: nn.Module, masks, zoneouts=None) -> dict:
    """Replay table for an AWD-QRNN language model and our `LMDropoutMasks`."""
    replay = encoder_replay(model[0], masks.encoder, zoneouts)
    replay[model[1].output_dp] = _tensor(masks.output)[:, None]
    return replay
