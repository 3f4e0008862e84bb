"""Word importance as pictures: a self-contained HTML page (each word's background by its
score, the class and probability on top) and text for a terminal (256-colour backgrounds, or
plain), as `predict.py --explain` writes them."""

from __future__ import annotations

import html
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ulmfit_jax.api import Ensemble, TextClassifier
from ulmfit_jax.atomic_io import atomic_write
from ulmfit_jax.explain.importance import WordImportance, word_importance
from ulmfit_jax.inference.text_files import InputError

# xterm-256 backgrounds from white to red: (5,5,5), (5,4,4), ... (5,0,0) of the colour cube.
_RAMP = (231, 224, 217, 210, 203, 196)
_TOP_WORDS = 5
_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>word importance</title>
<style>
body {{ font-family: sans-serif; max-width: 50em; margin: 2em auto; line-height: 1.7; }}
.doc {{ border-bottom: 1px solid #ccc; padding: 0.8em 0; }}
.head {{ font-weight: bold; margin-bottom: 0.3em; }}
.w {{ border-radius: 3px; padding: 0 1px; }}
</style></head><body>
<p>Background: how strongly the probability of the class shown responds to each word (from
the gradient of the probability with respect to the word's embedding, scaled to the
document's largest), not in which direction.</p>
{docs}
</body></html>
"""


def html_document(result: WordImportance) -> str:
    """One document as an HTML fragment: the class and probability, then the text with each
    word's background by its score (its score as tooltip)."""
    parts, end = [], 0
    for word, (start, stop), score in zip(result.words, result.spans, result.scores,
                                          strict=True):
        parts.append(_html_text(result.text[end:start]))
        parts.append(f'<span class="w" title="{score:.2f}" style="background: '
                     f'rgba(220, 38, 38, {score:.3f})">{html.escape(word)}</span>')
        end = stop
    parts.append(_html_text(result.text[end:]))
    head = f"{html.escape(result.class_name)} ({result.probability:.2f})"
    return f'<div class="doc"><div class="head">{head}</div>{"".join(parts)}</div>'


def _html_text(text: str) -> str:
    return html.escape(text).replace("\n", "<br>\n")


def to_html(results: WordImportance | Sequence[WordImportance]) -> str:
    """A self-contained HTML page (no scripts, no external files) of one or more results."""
    results = [results] if isinstance(results, WordImportance) else list(results)
    return _PAGE.format(docs="\n".join(html_document(r) for r in results))


def to_terminal(result: WordImportance, color: bool = True) -> str:
    """The class and probability, the text with 256-colour backgrounds by score (`color`),
    then the most important words with their scores."""
    text = _coloured(result) if color else result.text
    top = ", ".join(f"{word} {score:.2f}" for word, score in result.top(_TOP_WORDS))
    return f"{result.class_name} ({result.probability:.2f}): {text}\n  top words: {top}"


def _coloured(result: WordImportance) -> str:
    parts, end = [], 0
    for (start, stop), score in zip(result.spans, result.scores, strict=True):
        level = round(float(score) * (len(_RAMP) - 1))
        word = result.text[start:stop]
        parts.append(result.text[end:start])
        parts.append(f"\x1b[30;48;5;{_RAMP[level]}m{word}\x1b[0m" if level else word)
        end = stop
    return "".join(parts) + result.text[end:]


def use_color(stream=None) -> bool:
    """Colour for a terminal: when `stream` (stdout) is a tty, unless `NO_COLOR` is set;
    `FORCE_COLOR` forces it (the conventions of no-color.org and force-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    stream = sys.stdout if stream is None else stream
    return hasattr(stream, "isatty") and stream.isatty()


def write_word_importance(model: TextClassifier | Ensemble, texts: Sequence[str],
                          output: str = "-", batch_size: int = 32) -> None:
    """Word importance of `texts` for their predicted classes: `-` prints it for a terminal
    (coloured when stdout is one), `FILE.html` writes the HTML page, `FILE.txt` plain text."""
    suffix = Path(output).suffix.lower()
    if output != "-" and suffix not in (".html", ".htm", ".txt"):
        raise InputError(f"{output}: word importance is written to .html, .txt or - "
                                 "(the terminal)")
    results = word_importance(model, list(texts), batch_size=batch_size)
    assert isinstance(results, list)  # a list of texts in
    if output == "-":
        color = use_color()
        print("\n".join(to_terminal(r, color) for r in results))
    elif suffix == ".txt":
        atomic_write(output, "\n".join(to_terminal(r, False) for r in results) + "\n")
    else:
        atomic_write(output, to_html(results))
