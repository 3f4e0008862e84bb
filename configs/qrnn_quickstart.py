"""The quickstart with a QRNN encoder: the same words, LM budget and classifier recipe.

    python train.py --config configs/qrnn_quickstart.py --workdir runs/qrnn --stage all

`configs/quickstart.py` (spaCy word tokens, 8k vocab, one LM pass over 4,000 documents,
gradual unfreezing) with fastai's AWD-QRNN encoder in place of the AWD-LSTM: 2 QRNN layers,
the first 256 wide over a window of 2 inputs, the last 128 (tied to the embedding). A QRNN
layer has no matmul in its recurrence (only the element-wise forget-mult runs step by step),
and these two do about 0.3M multiply-adds per token against the AWD-LSTM's 0.6M.
Measured (2-core Intel Xeon, 2026-12-06, `benchmarks/quickstart_frontier.py`, same session,
seeds 0, 1, 2): 87.3%, 87.1%, 87.3% in 4.4-4.7 minutes, against the AWD-LSTM quickstart's
88.3%, 86.6%, 88.1% in 5.6-5.9 (1.27x faster, 0.4 points lower on average). Wider
(2 x 512), deeper (3 layers), longer (192 tokens, a third unfrozen epoch) or more LM documents
(6,000) each ended between 86.8% and 87.7%, slower (benchmarks/RESULTS.md). Longer reviews
did it: `configs/qrnn_quickstart_240.py`.
"""

from pathlib import Path

from ulmfit_jax.trainer.config import load_config

QUICKSTART = Path(__file__).with_name("quickstart.py")


def get_config():
    """configs/quickstart.py with a 2-layer QRNN (256, then 128) as the encoder."""
    c = load_config(QUICKSTART)
    c.model.update(encoder="qrnn", hidden_size=256, n_layers=2)
    return c
