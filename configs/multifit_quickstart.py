"""MultiFiT's recipe at quickstart size: SentencePiece subwords and a QRNN encoder.

    python train.py --config configs/multifit_quickstart.py --workdir runs/multifit --stage all

Eisenschlos et al. (2019), "MultiFiT: Efficient Multi-lingual Language Model Fine-tuning":
ULMFiT's three stages with a 4-layer QRNN (fastai's AWD-QRNN: the first layer's window is 2
steps, later layers 1; the forget-mult runs as a parallel scan) on a unigram SentencePiece
vocab (MultiFiT: 15k pieces). Everything else is `configs/quickstart.py`: the same embedded
reviews, LM token budget and gradual-unfreezing classifier, so the two can be compared.
Sized for a 2-core CPU: 4 QRNN layers of 256 (the last 128 wide, tied to the embedding),
about 0.69M recurrent weights against the quickstart AWD-LSTM's 0.59M, 8k pieces.
MultiFiT's full size: `--config.model.emb_size=400 --config.model.hidden_size=1552
--config.data.sp_vocab_size=15000 --config.model.max_vocab=15000`.
Result (2-core Xeon, 2026-12-05, benchmarks/RESULTS.md): 81.9% in 7.3 minutes, against the
AWD-LSTM quickstart's 88.0% in 7.1; the recipe is not tuned for the QRNN yet.
"""

from pathlib import Path

from ulmfit_jax.trainer.config import load_config

QUICKSTART = Path(__file__).with_name("quickstart.py")


def get_config():
    """configs/quickstart.py with SentencePiece (8k unigram pieces) and a 4-layer QRNN."""
    c = load_config(QUICKSTART)
    c.data.update(tokenizer="sentencepiece", sp_vocab_size=8000, sp_model_type="unigram")
    # Every piece the model has is a vocab entry: sentencepiece already chose the vocab.
    c.model.update(max_vocab=8000, min_freq=1, encoder="qrnn", hidden_size=256, n_layers=4)
    return c
