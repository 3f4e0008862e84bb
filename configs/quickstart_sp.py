"""The quickstart with a SentencePiece tokenizer instead of fastai's word rules (as MultiFiT).

    python train.py --config configs/quickstart_sp.py --workdir runs/quickstart_sp --stage all

A unigram SentencePiece model of 8,000 pieces is trained on the LM's training texts (every
embedded review), stored in `runs/quickstart_sp/tokenizer/` and inside every saved model, so
`TextClassifier.load("runs/quickstart_sp/models/classifier_fwd").predict(texts)` reads raw
text through it. Everything else is `configs/quickstart.py`. For another language, point
`data.source` at your corpus (e.g. `text_files`) and pretrain the LM on it first.
"""

from pathlib import Path

from ulmfit_jax.trainer.config import load_config

QUICKSTART = Path(__file__).with_name("quickstart.py")


def get_config():
    """configs/quickstart.py with `data.tokenizer="sentencepiece"` (8k unigram pieces)."""
    c = load_config(QUICKSTART)
    c.data.update(tokenizer="sentencepiece", sp_vocab_size=8000, sp_model_type="unigram")
    # Every piece the model has is a vocab entry: sentencepiece already chose the vocab.
    c.model.update(max_vocab=8000, min_freq=1)
    return c
