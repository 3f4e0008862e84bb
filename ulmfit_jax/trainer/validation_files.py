"""Where the trained classifier fails on the validation split, as files in the workdir beside
`metrics.json`: `confusion_matrix.png` (a panel per classifier: fwd, bwd, their ensemble),
`classification_report.json` (per class precision, recall, F1 and support, per classifier) and
`top_losses.csv` (the final model's, the ensemble when there is a backward classifier).

They are made from the validation probabilities the classifier stage saved beside each model,
so no document is predicted again; only the top losses' documents are turned back into text
(from their tokens: words outside the vocab read `xxunk`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ulmfit_jax.atomic_io import atomic_write
from ulmfit_jax.explain.interpretation import Interpretation, TopLoss
from ulmfit_jax.explain.plots import confusion_matrix_figure
from ulmfit_jax.text.tokenized_corpus import TokenizedCorpus
from ulmfit_jax.text.tokenizer_spec import Tokenizer, tokens_to_text
from ulmfit_jax.trainer.classifier_stage import VALID_PROBS, classifier_name
from ulmfit_jax.trainer.data import PreparedData

CONFUSION_MATRIX_PNG = "confusion_matrix.png"
REPORT_JSON = "classification_report.json"
TOP_LOSSES_CSV = "top_losses.csv"
VALIDATION_FILES = (CONFUSION_MATRIX_PNG, REPORT_JSON, TOP_LOSSES_CSV)
TOP_LOSSES = 50  # rows of top_losses.csv


class DocumentTexts(Sequence[str]):
    """Readable text of each document of a corpus, made when asked for."""

    def __init__(self, corpus: TokenizedCorpus, itos: Sequence[str], tokenizer: Tokenizer):
        self.corpus, self.itos, self.tokenizer = corpus, itos, tokenizer

    def __len__(self) -> int:
        return self.corpus.num_docs

    def __getitem__(self, i):  # an int index: all that is read
        return tokens_to_text(self.tokenizer, [self.itos[t] for t in self.corpus.doc(i)])


def write_validation_files(workdir: Path, data: PreparedData, backward: bool,
                           threshold: float) -> None:
    """Write the three files from the saved validation probabilities of the classifiers."""
    interps = validation_interpretations(workdir, data, backward, threshold)
    report = {name: interp.report() for name, interp in interps.items()}
    atomic_write(workdir / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    png = io.BytesIO()
    confusion_matrix_figure(list(interps.items())).savefig(png, format="png", dpi=100)
    atomic_write(workdir / CONFUSION_MATRIX_PNG, png.getvalue())
    final = interps["ensemble" if backward else classifier_name(False)]
    atomic_write(workdir / TOP_LOSSES_CSV, top_losses_csv(final.top_losses(TOP_LOSSES),
                                                          final.class_names))


def validation_interpretations(workdir: Path, data: PreparedData, backward: bool,
                               threshold: float) -> dict[str, Interpretation]:
    """`Interpretation`s of `classifier_fwd`, `classifier_bwd` and `ensemble` (the last two
    with a backward classifier) on the validation split, by name."""
    names = [classifier_name(b) for b in ([False, True] if backward else [False])]
    probs = {name: np.load(workdir / "models" / name / VALID_PROBS) for name in names}
    if backward:
        probs["ensemble"] = (probs[names[0]] + probs[names[1]]) / 2
    texts = DocumentTexts(data.clf_valid, data.vocab.itos, data.tokenizer)
    labels = np.asarray(data.clf_valid.labels)
    return {name: Interpretation(p, labels, data.class_names, data.multi_label, threshold,
                                 texts) for name, p in probs.items()}


def top_losses_csv(rows: Sequence[TopLoss], class_names: Sequence[str]) -> str:
    """CSV: rank, validation document index, loss, actual and predicted class(es) (joined by
    `|` for multi-label), the probability of every class, the text."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["rank", "index", "loss", "actual", "predicted",
                     *(f"p_{c}" for c in class_names), "text"])
    for rank, row in enumerate(rows, 1):
        writer.writerow([rank, row.index, f"{row.loss:.6g}", _joined(row.actual),
                         _joined(row.predicted), *(f"{p:.6g}" for p in row.probabilities),
                         row.text])
    return out.getvalue()


def _joined(labels: str | list[str]) -> str:
    return labels if isinstance(labels, str) else "|".join(labels)
