"""Public API: `LanguageModel` and `TextClassifier` (fastai files in and out, save/load, eval).

```python
lm = LanguageModel.from_fastai("lstm_fwd.pth", "itos_wt103.pkl", new_vocab=my_vocab)
logits, state = lm(ids)               # ids int32 [batch, time]; eval mode, zero state
logits, state = lm(ids2, state)       # state carried; a batch-size change is handled as fastai
lm.save("my_lm"); lm = LanguageModel.load("my_lm")
lm.to_fastai("lstm.pth", "itos.pkl")  # fastai's load_pretrained / Learner.load read these
clf = TextClassifier.from_language_model(lm, n_classes=2)
logits = clf(ids)                     # padded batch in fastai layout -> [batch, n_classes]

clf = TextClassifier.load("models/classifier_fwd")      # raw text in, as sklearn / fastai
clf.predict_proba(["A fine film."])   # [n, n_classes]; clf.predict(texts) -> class names
clf.export("serving/")                # jax.export artifact for `ulmfit_jax.serving.load`
Ensemble.load("models/classifier_fwd", "models/classifier_bwd").predict(texts)
lm.generate("The movie", n_words=20, seed=0); lm.predict_next(["The movie"], k=5)
```

Each wrapper holds an NNX module (`.module`), its vocab, the tokenizer it reads raw text with
(`.tokenizer`, None for a model that only takes ids), its direction (`.backward`: the model
reads each document's ids reversed, and reverses them itself) and, for a classifier, its class
names. `with_*` methods return a copy (sharing the module). The directory `save` writes and
`load` reads is `api.saved_model`. The wrappers are thin: the work is in `inference/`,
`convert/` and `model/`.

Modules: `language_model` (LanguageModel), `text_classifier` (TextClassifier), `ensemble`
(Ensemble), `saved_model` (the directory format and its orbax I/O), `module_state` (parameter
trees into NNX modules, shapes checked), `checks` (ids, vocab and tokenizer a user passes).
"""

from ulmfit_jax.api.ensemble import Ensemble
from ulmfit_jax.api.language_model import LanguageModel
from ulmfit_jax.api.text_classifier import CLASSIFIER_DROP_MULT, TextClassifier

__all__ = ["CLASSIFIER_DROP_MULT", "Ensemble", "LanguageModel", "TextClassifier"]
