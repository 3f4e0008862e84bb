"""Pretrain the general-domain AWD-LSTM on WikiText-103 (ULMFiT stage 1), as fastai did.

WikiText-103 is not bundled. Unpack the distributed `wikitext-103` archive (the folder holding
`wiki.train.tokens`, `wiki.valid.tokens`, `wiki.test.tokens`), then:

    python train.py --config configs/wt103_pretrain.py --workdir runs/wt103 --stage lm \
        --config.data.path=wikitext-103

Each article (from its ` = Title = ` heading to the next) is one document, read with fastai's
tokenizer rules (`<unk>` becomes `xxunk`, ` @.@ ` and ` @-@ ` are joined back); the LM
validates on `wiki.valid.tokens`. The files are streamed into the token cache, so memory
holds the token ids (~400 MB), never the text.

Expected: fastai reached validation perplexity ~30 (accuracy ~0.39) after 12 epochs with
bs 256, bptt 80 (6 h on one Titan RTX at ~57k tokens/s in fp16). The resulting
`runs/wt103/models/lm_fwd` is a `LanguageModel` directory; export it for fastai with
`LanguageModel.load(...).to_fastai(...)` or start IMDb fine-tuning from it.
"""

from ulmfit_jax.trainer.config import base_config


def get_config():
    """12 epochs, bs 256, bptt 80, drop_mult 0.1, wd 0.1, lr 1e-2 (one-cycle), 60k vocab."""
    c = base_config()
    c.data.update(source="wikitext")
    c.model.update(emb_size=400, hidden_size=1152, n_layers=3, max_vocab=60000, min_freq=3)
    c.lm.update(batch_size=256, bptt=80, drop_mult=0.1, wd=0.1, lr=1e-2, epochs=12, clip=0.1,
                moms=(0.95, 0.85, 0.95))
    c.checkpoint.every_steps = 2000
    c.predict_examples = False
    return c
