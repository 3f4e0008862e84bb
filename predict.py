"""ULMFiT in JAX: classify raw texts with saved classifiers (averaged when several, e.g. fwd+bwd).

    python predict.py --model runs/quickstart/models/classifier_fwd "A fine film." "Dull."
    python predict.py --model runs/q/models/classifier_fwd --model runs/q/models/classifier_bwd \
        --input reviews.csv --text_column review --output predictions.jsonl
    cat reviews.txt | python predict.py --model DIR --input - --output -

Inputs: texts as arguments, or `--input` FILE.txt (one text per line), FILE.csv /
FILE.jsonl (`--text_column`, default `text`) or `-` (stdin, one text per line unless
`--input_format`). Output (`--output`, default `-` = stdout, CSV unless `--output_format`):
one row per text with the label and every class's probability. A multi-label model gives
each text the set of classes whose probability exceeds its threshold (as
`TextClassifier.predict`): in CSV the column `labels`, class names joined by `|` (empty for
none); in JSONL the key `labels`, a list.
jax gets one CPU device per core (`--cpu_devices`), as in train.py; a small AWD-LSTM's batches
are split over them (see ulmfit_jax/inference/local_devices.py).
`--explain` writes instead each text's word importance for its predicted class
(`ulmfit_jax.explain`): coloured text on the terminal (`--output -`), or `--output words.html`
(a page) / `words.txt`.
"""

# ruff: noqa: E402 (the allocator is chosen before anything else is imported)
from ulmfit_jax.host_allocator import use_fast_allocator

use_fast_allocator()  # may re-execute this command once, with a faster heap allocator

from absl import flags

from ulmfit_jax.cli import run_cli
from ulmfit_jax.inference import text_files
from ulmfit_jax.text.prediction_batches import predicted_labels

_MODELS = flags.DEFINE_multi_string(
    "model", None, "Saved classifier directory; repeat for an ensemble (e.g. fwd and bwd).")
_INPUT = flags.DEFINE_string("input", None, "FILE.txt, FILE.csv, FILE.jsonl or - (stdin).")
_INPUT_FORMAT = flags.DEFINE_enum("input_format", None, text_files.FORMATS,
                                  "Input format (default: from the extension; stdin: txt).")
_TEXT_COLUMN = flags.DEFINE_string("text_column", "text", "CSV column / JSONL key of the text.")
_OUTPUT = flags.DEFINE_string("output", "-", "FILE.csv, FILE.jsonl or - (stdout).")
_OUTPUT_FORMAT = flags.DEFINE_enum("output_format", None, ("csv", "jsonl"),
                                   "Output format (default: from the extension; stdout: csv).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Documents per batch.", lower_bound=1)
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "On a CPU, jax devices sharing each batch: 0 = one per core, N = N.",
    lower_bound=0)
_EXPLAIN = flags.DEFINE_boolean(
    "explain", False, "Write each text's word importance instead: coloured text for the "
    "terminal (--output -), or --output FILE.html / FILE.txt.")
flags.mark_flags_as_required(["model"])


def _texts(argv: list[str]) -> list[str]:
    if _INPUT.value is not None and len(argv) > 1:
        raise text_files.InputError("give texts as arguments or --input, not both")
    if _INPUT.value is None:
        if len(argv) == 1:
            raise text_files.InputError("no texts: pass them as arguments or with --input")
        return argv[1:]
    fmt = text_files.file_format(_INPUT.value, _INPUT_FORMAT.value, "txt")
    return text_files.read_texts(_INPUT.value, fmt, _TEXT_COLUMN.value)


def _model():
    from ulmfit_jax.api import Ensemble, TextClassifier

    classifiers = [TextClassifier.load(d) for d in _MODELS.value]
    return classifiers[0] if len(classifiers) == 1 else Ensemble(classifiers)


def main(argv: list[str]) -> None:
    from ulmfit_jax.trainer import cpu_devices

    # Before anything runs jax: one time loop per core (see ulmfit_jax.use_cpu_cores).
    cpu_devices.set_cpu_device_count(_CPU_DEVICES.value or cpu_devices.available_cores())
    texts = _texts(argv)
    if _EXPLAIN.value:
        from ulmfit_jax import explain

        return explain.write_word_importance(_model(), texts, _OUTPUT.value, _BATCH_SIZE.value)
    out_fmt = text_files.file_format(_OUTPUT.value, _OUTPUT_FORMAT.value, "csv")
    if out_fmt == "txt":
        raise text_files.InputError(f"{_OUTPUT.value}: output must be .csv or .jsonl")
    model = _model()
    probs = model.predict_proba(texts, batch_size=_BATCH_SIZE.value)
    labels = predicted_labels(probs, model.class_names, model.multi_label, model.threshold)
    text_files.write_output(
        _OUTPUT.value, text_files.format_predictions(probs, labels, model.class_names, out_fmt,
                                                      model.multi_label))


if __name__ == "__main__":
    run_cli(main)
