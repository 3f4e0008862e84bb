"""Quickstart: ULMFiT end to end on the embedded IMDb reviews, sized for a 2-core CPU.

    python train.py --config configs/quickstart.py --workdir runs/quickstart --stage all

A small AWD-LSTM (emb 128, hidden 256, 2 layers, 8k vocab) first learns the language of the
reviews (one epoch on 4,000 reviews, from scratch), then the classifier is fine-tuned on its
encoder with gradual unfreezing (head, then the last LSTM, then everything for 2 epochs) on
8,000 reviews' last 160 tokens, and is evaluated on 2,000 held-out reviews.
Target: <= 15 minutes on a 2-core CPU and >= 85% validation accuracy. Measured so far (2 cores
shared with other jobs): LM valid perplexity 115 (accuracy 0.21) in ~8 min, classifier
74.7% validation accuracy after its 4 epochs (~6.5 min), ~20 min in all; not yet tuned to the
target (the LM softmax and the sequential LSTM scan limit CPU throughput to ~3k LM tokens/s).
"""

from ulmfit_jax.trainer.config import base_config


def get_config():
    """Small model, subsampled data, fastai's recipe shortened (1 LM epoch, 4 classifier)."""
    c = base_config()
    c.data.update(max_train_docs=8000, max_valid_docs=2000, max_lm_docs=4000)
    c.model.update(emb_size=128, hidden_size=256, n_layers=2, max_vocab=8000, min_freq=3)
    c.lm.update(batch_size=32, bptt=64, epochs=1, lr=1e-2, drop_mult=0.3, wd=0.01, clip=0.4)
    c.classifier.update(batch_size=32, eval_batch_size=128, bptt=80, max_len=160,
                        max_tokens=160, drop_mult=0.5, wd=0.01)
    c.classifier.phases = ((-1, 1, 2e-2, 1.0), (-2, 1, 1e-2, 2.6**4), (0, 2, 5e-3, 2.6**4))
    c.checkpoint.every_steps = 200
    c.log_every_steps = 50
    return c
