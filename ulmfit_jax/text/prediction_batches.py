"""Raw texts -> ids -> length-sorted padded batches -> per-document outputs in input order.

The host side of classifier inference, shared by `TextClassifier.predict_proba` and
`ulmfit_jax.serving` (no jax here: the model is a callable on padded id batches).

Documents are sorted longest first (as fastai's `get_preds` on a `test_dl`) and cut into
batches; a batch is padded in fastai's layout inside a bucketed number of `bptt` chunks
(`pad_bucketed`), and its row count is rounded up to a power of two (at most `batch_size`;
per device where devices share it: `batch_rows`) with all-pad filler rows, so a whole corpus
compiles a handful of shapes. Documents are read whole (no truncation): BPT3C itself keeps the
last `max_len` tokens' chunks, as fastai.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ulmfit_jax.text.classifier_batches import pad_bucketed, sorted_order
from ulmfit_jax.text.vocab import Vocab

# Inputs at least this long get a progress bar unless `progress=False`.
PROGRESS_MIN_TEXTS = 1000


def check_texts(texts: Sequence[str]) -> list[str]:
    """`texts` as a list; a lone str or a non-str item raises TypeError naming its position."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("expected a list of texts, got a single text; wrap it: [text]")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text #{i} is {type(text).__name__}, not str")
    return texts


def show_progress(progress: bool | None, n: int) -> bool:
    """Whether to draw a bar: as asked, or (None) when the input is large."""
    return n >= PROGRESS_MIN_TEXTS if progress is None else bool(progress)


def _bar(items, total: int, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, unit="doc")


def encode_texts(tokenizer, vocab: Vocab, texts: Sequence[str], backward: bool = False,
                 progress: bool = False) -> list[np.ndarray]:
    """Token ids `[time]` of each text (reversed for a backward model, as it was trained)."""
    texts = check_texts(texts)
    tokens = _bar(tokenizer.tokenize_stream(texts) if hasattr(tokenizer, "tokenize_stream")
                  else tokenizer.tokenize(texts), len(texts), "tokenize", progress)
    docs = [vocab.numericalize(t) for t in tokens]
    return [d[::-1].copy() for d in docs] if backward else docs


def batch_rows(n_docs: int, batch_size: int, row_multiple: int = 1) -> int:
    """Rows of a batch holding `n_docs` documents, split over `row_multiple` devices: each
    device's share rounded up to a power of two, the whole at most `batch_size` (rounded up to
    a multiple of the devices). A batch with fewer documents than devices is not split (a
    single text stays one row)."""
    if n_docs < row_multiple:
        return min(batch_size, _next_power_of_two(n_docs))
    per_device = _next_power_of_two(-(-n_docs // row_multiple))
    return min(row_multiple * per_device, -(-batch_size // row_multiple) * row_multiple)


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def padded_batches(docs: Sequence[np.ndarray], batch_size: int, bptt: int, pad_id: int,
                   row_multiple: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(document indices `[n]`, ids `[rows, time]`) batches, longest documents first.

    Rows past `n` are all padding; `time` is a bucketed multiple of `bptt`; `rows` is given by
    `batch_rows`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted_order(np.array([len(d) for d in docs], dtype=np.int64))
    for start in range(0, len(order), batch_size):
        members = order[start:start + batch_size]
        rows = [docs[i] for i in members]
        filler = batch_rows(len(members), batch_size, row_multiple) - len(members)
        rows += [np.zeros(0, np.int32)] * filler
        yield members, pad_bucketed(rows, pad_id, bptt)


def predict_in_batches(forward: Callable[[np.ndarray], np.ndarray], docs: Sequence[np.ndarray],
                       batch_size: int, bptt: int, pad_id: int, n_outputs: int,
                       progress: bool = False, row_multiple: int = 1) -> np.ndarray:
    """`forward(ids [rows, time]) -> [rows, n_outputs]` over `docs`, back in input order."""
    out = np.zeros((len(docs), n_outputs), np.float32)
    bar = _bar(None, len(docs), "predict", progress) if progress else None
    for members, ids in padded_batches(docs, batch_size, bptt, pad_id, row_multiple):
        out[members] = np.asarray(forward(ids))[:len(members)]
        if bar is not None:
            bar.update(len(members))
    if bar is not None:
        bar.close()
    return out


def texts_to_probabilities(forward: Callable[[np.ndarray], np.ndarray], tokenizer, vocab: Vocab,
                           texts: Sequence[str], *, batch_size: int, bptt: int, pad_id: int,
                           n_classes: int, backward: bool, progress: bool | None,
                           row_multiple: int = 1) -> np.ndarray:
    """Raw texts -> `forward` over sorted, bucketed batches -> `[len(texts), n_classes]`;
    `row_multiple`: see `batch_rows`."""
    texts = check_texts(texts)
    show = show_progress(progress, len(texts))
    docs = encode_texts(tokenizer, vocab, texts, backward, progress=show)
    return predict_in_batches(forward, docs, batch_size, bptt, pad_id, n_classes, show,
                              row_multiple)


def best_labels(probs: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """The class name of each row's largest probability, probs `[n, n_classes]`."""
    return [class_names[i] for i in np.asarray(probs).argmax(axis=1)]


def predicted_labels(probs: np.ndarray, class_names: Sequence[str], multi_label: bool,
                     threshold: float) -> list[str] | list[list[str]]:
    """Single-label: `best_labels`; multi-label: per row, every class name whose probability
    exceeds `threshold` (possibly none), probs `[n, n_classes]`."""
    if not multi_label:
        return best_labels(probs, class_names)
    return [[n for n, p in zip(class_names, row, strict=True) if p > threshold] for row in probs]
