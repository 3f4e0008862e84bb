"""ULMFiT on IMDb at full size: fastai's recipe from the converted WikiText-103 weights.

Download fastai's `wt103-fwd.tgz` and `wt103-bwd.tgz` (https://s3.amazonaws.com/fast-ai-modelzoo/)
and unpack them here: they hold `wt103-fwd/` (`lstm_fwd.pth`, `itos_wt103.pkl`) and
`wt103-bwd/` (`lstm_bwd.pth`, `itos_wt103.pkl`). Then:

    python train.py --config configs/imdb.py --workdir runs/imdb --stage all

CI runs this config at this model size from fastai files with random weights, on a few
reviews (tests/test_pretrained_path.py).

For the real 100k-review aclImdb (train + test + unsup) instead of the embedded 25k reviews add
`--config.data.source=imdb_folder --config.data.path=/path/to/aclImdb`.
Expected (aclImdb, as the fastai v1/v2 notebooks): LM fine-tuning validation perplexity ~35
after 10 epochs, classifier accuracy ~94-95% forward, ~95.4% for the fwd+bwd ensemble
(paper: 4.6% test error). It needs an accelerator: ~0.27 GFLOP per trained token and 44M
parameters; fastai took ~12 min per LM epoch on one GPU.
"""

from ulmfit_jax.trainer.config import base_config


def get_config():
    """fastai's IMDb tutorial: LM drop_mult 0.3, 1 frozen epoch at 2e-2 then 10 at 2e-3;
    classifier drop_mult 0.5 with gradual unfreezing (FASTAI_CLASSIFIER_PHASES)."""
    c = base_config()
    c.model.update(emb_size=400, hidden_size=1152, n_layers=3, max_vocab=60000, min_freq=3)
    c.lm.update(
        init_from="wt103-fwd/lstm_fwd.pth", init_itos="wt103-fwd/itos_wt103.pkl",
        init_from_backward="wt103-bwd/lstm_bwd.pth",
        init_itos_backward="wt103-bwd/itos_wt103.pkl",
        backward=True, batch_size=64, bptt=72, drop_mult=0.3, wd=0.01, clip=0.4,
        frozen_epochs=1, frozen_lr=2e-2, epochs=10, lr=2e-3,
    )
    c.classifier.update(batch_size=64, bptt=72, max_len=72 * 20, drop_mult=0.5, wd=0.01)
    c.checkpoint.every_steps = 1000
    return c
