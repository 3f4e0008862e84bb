"""Tiny run for tests: seconds on a CPU, a few hundred embedded IMDb reviews.

    python train.py --config configs/tiny.py --workdir /tmp/ulmfit_tiny --stage all

It only checks that every stage runs, checkpoints and resumes; accuracy is near chance.
"""

from ulmfit_jax.trainer.config import base_config


def get_config():
    """A 2-layer AWD-LSTM with 32-wide embeddings on 120 training / 40 validation reviews."""
    c = base_config()
    c.data.max_train_docs = 120
    c.data.max_valid_docs = 40
    c.data.workers = 0
    c.model.update(emb_size=16, hidden_size=32, n_layers=2, max_vocab=2000, min_freq=2)
    c.lm.update(batch_size=16, bptt=32, epochs=1, lr=1e-2, drop_mult=0.5)
    c.classifier.update(batch_size=16, eval_batch_size=32, bptt=24, max_len=96, max_tokens=96)
    c.classifier.phases = (
        dict(freeze_to=-1, epochs=1, lr_max=2e-2, lr_div=1.0),
        dict(freeze_to=0, epochs=1, lr_max=1e-2, lr_div=2.6**4),
    )
    c.checkpoint.every_steps = 20
    c.log_every_steps = 10
    c.progress = False
    return c
