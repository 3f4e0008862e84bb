"""fastai's word tokenizer: fastai's text rules, then spaCy's rule-based English splitter.

`FastaiTokenizer().tokenize(texts)` returns, token for token, what fastai 2.8's default pipeline
(`tokenize_texts` / `tokenize_df` / `Tokenizer.from_df`, i.e. `TokenizeWithRules(SpacyTokenizer())`)
returns: the pre-rules `fix_html, replace_rep, replace_wrep, spec_add_spaces, rm_useless_spaces,
replace_all_caps, replace_maj, lowercase` (which adds `xxbos`), spaCy's `spacy.blank("en")` splitter
with fastai's special tokens as special cases, and the post-rule `replace_space`.

Speed: spaCy splits a text at whitespace first and tokenizes each whitespace-delimited span on
its own (see `Tokenizer._tokenize_affixes` in spaCy), so a text's tokens are the concatenation of
its spans' tokens. We split spans with one regex and memoise each distinct span's tokens:
spaCy only sees spans not seen before (all of a batch's in one call), and no `Doc` is built for
the rest. The one whole-doc step of spaCy, its special-case matcher, can let two neighbouring
spans interact; texts where that is possible (~4% of IMDb reviews) go to spaCy whole.
Texts longer than spaCy's `nlp.max_length` (1M characters), which fastai rejects, are accepted.
"""

from __future__ import annotations

import hashlib
import html
import importlib.metadata
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

UNK, PAD, BOS, EOS, FLD = "xxunk", "xxpad", "xxbos", "xxeos", "xxfld"
TK_REP, TK_WREP, TK_UP, TK_MAJ = "xxrep", "xxwrep", "xxup", "xxmaj"
SPECIAL_TOKENS: tuple[str, ...] = (UNK, PAD, BOS, EOS, FLD, TK_REP, TK_WREP, TK_UP, TK_MAJ)

# Bump when the rules or the span splitting change: it is part of every cache key.
RULES_VERSION = "fastai-2.8.12-rules/1"

_RE_SPEC = re.compile(r"([/#\\])")
_RE_SPACE = re.compile(" {2,}")
_RE_REP = re.compile(r"(\S)(\1{2,})")
_RE_WREP = re.compile(r"(?:\s|^)(\w+)\s+((?:\1\s+)+)\1(\s|\W|$)")
_RE_ALL_CAPS = re.compile(r"(\s|^)([A-Z]+[^a-z\s]*)(?=(\s|$))")
_RE_MAJ = re.compile(r"(\s|^)([A-Z][^A-Z\s]*)(?=(\s|$))")
# spaCy's span split: runs of non-space characters (a single ' ' after one is swallowed as that
# token's trailing whitespace) and runs of whitespace. Python's `\s` is exactly `str.isspace`,
# which is what spaCy uses.
_RE_SPAN = re.compile(r"\S+ ?|\s+")
_RE_SURROGATE = re.compile("[\ud800-\udfff]")

# fastai's fix_html replacements, in fastai's order (order matters: 'amp;' before 'quot;' etc.).
_HTML_FIXES = (
    ("#39;", "'"),
    ("amp;", "&"),
    ("#146;", "'"),
    ("nbsp;", " "),
    ("#36;", "$"),
    ("\\n", "\n"),
    ("quot;", "'"),
    ("<br />", "\n"),
    ('\\"', '"'),
    ("<unk>", UNK),
    (" @.@ ", "."),
    (" @-@ ", "-"),
    ("...", " …"),
)


def fix_html(text: str) -> str:
    """fastai's clean-up of HTML leftovers (`<br />`, entities missing their '&'), then unescape."""
    for old, new in _HTML_FIXES:
        text = text.replace(old, new)
    return html.unescape(text)


def _rep_token(match: re.Match) -> str:
    char, repeats = match.groups()
    return f" {TK_REP} {len(repeats) + 1} {char} "


def replace_rep(text: str) -> str:
    """A character repeated 3+ times -> `xxrep N c`."""
    return _RE_REP.sub(_rep_token, text)


def _wrep_token(match: re.Match) -> str:
    word, repeats, end = match.groups()
    return f" {TK_WREP} {len(repeats.split()) + 2} {word} {end}"


def replace_wrep(text: str) -> str:
    """A word repeated 3+ times -> `xxwrep N word`."""
    return _RE_WREP.sub(_wrep_token, text)


def spec_add_spaces(text: str) -> str:
    """Spaces around `/`, `#` and `\\`."""
    return _RE_SPEC.sub(r" \1 ", text)


def rm_useless_spaces(text: str) -> str:
    """Runs of spaces -> one space."""
    return _RE_SPACE.sub(" ", text)


def _caps_token(match: re.Match) -> str:
    space, word = match.group(1), match.group(2)
    return f"{space}{TK_UP} {word.lower()}" if len(word) > 1 else f"{space}{word.lower()}"


def replace_all_caps(text: str) -> str:
    """A word in capitals -> `xxup word` (a single capital letter is only lowercased)."""
    return _RE_ALL_CAPS.sub(_caps_token, text)


def _maj_token(match: re.Match) -> str:
    space, word = match.group(1), match.group(2)
    return f"{space}{TK_MAJ} {word.lower()}" if len(word) > 1 else f"{space}{word.lower()}"


def replace_maj(text: str) -> str:
    """A Capitalised word -> `xxmaj word`."""
    return _RE_MAJ.sub(_maj_token, text)


def lowercase(text: str, add_bos: bool = True, add_eos: bool = False) -> str:
    """Lowercase and strip; `xxbos ` before (and ` xxeos` after) as fastai's last rule does."""
    return (f"{BOS} " if add_bos else "") + text.lower().strip() + (f" {EOS}" if add_eos else "")


PRE_RULES = (
    fix_html,
    replace_rep,
    replace_wrep,
    spec_add_spaces,
    rm_useless_spaces,
    replace_all_caps,
    replace_maj,
)


def apply_rules(text: str, add_bos: bool = True, add_eos: bool = False) -> str:
    """All of fastai's default pre-rules, in fastai's order, ending with `lowercase`."""
    for rule in PRE_RULES:
        text = rule(text)
    return lowercase(text, add_bos, add_eos)


def replace_space(token: str) -> str:
    """fastai's post-rule: a space inside a token (whitespace tokens such as '\\n ') -> '▁'."""
    return token.replace(" ", "▁")


def _special_case_boundaries(tokenizer):
    """What spaCy's special-case matcher could match across two whitespace-separated spans.

    spaCy matches every special case (as its affix-split token pattern) over the whole doc and
    drops overlapping matches, longest first; a match across spans never applies (its text
    holds a space) but can still suppress one inside a span. Returns the token pairs `(a, b)`
    adjacent in some pattern, and for rules that rewrite their pattern, which pattern token
    can hide behind a rewritten first/last token.
    """
    from spacy.symbols import ORTH
    from spacy.tokenizer import Tokenizer

    # The same affix rules without special cases: how spaCy builds each matcher pattern.
    plain = Tokenizer(
        tokenizer.vocab,
        rules={},
        prefix_search=tokenizer.prefix_search,
        suffix_search=tokenizer.suffix_search,
        infix_finditer=tokenizer.infix_finditer,
        token_match=tokenizer.token_match,
        url_match=tokenizer.url_match,
    )
    pairs, by_first, by_last = set(), {}, {}
    for key, orths in tokenizer.rules.items():
        pattern = [t.text for t in plain(key)]
        pairs.update(zip(pattern[:-1], pattern[1:], strict=True))
        rewritten = [o[ORTH] for o in orths]
        if rewritten != pattern:
            by_first.setdefault(rewritten[0], []).append((key, pattern[0]))
            by_last.setdefault(rewritten[-1], []).append((key, pattern[-1]))
    return frozenset(pairs), by_first, by_last


class _SpacySpans:
    """spaCy's splitter memoised per whitespace-delimited span.

    A text's tokens are its spans' memoised tokens, except in the rare text (about 4% of IMDb
    reviews) where two neighbouring spans could meet in a special-case pattern: that text goes
    to spaCy whole, so the output is always exactly spaCy's.
    """

    def __init__(self, lang: str, special_tokens: Sequence[str], max_spans: int):
        import spacy
        from spacy.symbols import ORTH

        # Typed as a plain callable by spaCy; it is a spacy.tokenizer.Tokenizer (Cython, untyped).
        self._tokenizer = cast(Any, spacy.blank(lang).tokenizer)
        for token in special_tokens:
            self._tokenizer.add_special_case(token, [{ORTH: token}])
        self._pairs, self._by_first, self._by_last = _special_case_boundaries(self._tokenizer)
        self._lefts = frozenset(a for a, _ in self._pairs)
        self._rights = frozenset(b for _, b in self._pairs)
        self._may_end = self._lefts | self._by_last.keys()
        self._may_start = self._rights | self._by_first.keys()
        self._max_spans = max_spans
        self._tokens: dict[str, tuple[str, ...]] = {}
        self._tails: dict[str, frozenset] = {}
        self._heads: dict[str, frozenset] = {}

    def _whole(self, text: str) -> list[str]:
        return [replace_space(t.text) for t in self._tokenizer(text)]

    def _learn(self, spans: set[str]) -> None:
        """Memoise the tokens of new spans with one spaCy call for all non-space ones.

        The spans' cores are joined with newlines: each stays a separate spaCy span, and the
        newline token between two cores keeps the special-case matcher from joining them.
        """
        cores: dict[str, list[str]] = {}
        for span in spans:
            if span[0].isspace():
                self._remember(span, tuple(self._whole(span)))
            else:
                cores.setdefault(span[:-1] if span[-1] == " " else span, []).append(span)
        tokens: list[str] = []
        names = iter(cores)
        for token in self._tokenizer("\n".join(cores) + "\n"):
            if token.text != "\n":
                tokens.append(token.text)
                continue
            for span in cores[next(names)]:
                self._remember(span, tuple(tokens))
            tokens = []

    def _remember(self, span: str, tokens: tuple[str, ...]) -> None:
        self._tokens[span] = tokens
        if span[0].isspace():
            return
        last, first = tokens[-1], tokens[0]
        if last not in self._may_end and first not in self._may_start:
            return  # the common case: no special-case pattern can touch this span
        core = span.rstrip(" ")
        # The pattern token spaCy's matcher saw may hide behind a rewritten boundary token.
        tails = {last} | {p for k, p in self._by_last.get(last, ()) if core.endswith(k)}
        heads = {first} | {p for k, p in self._by_first.get(first, ()) if core.startswith(k)}
        if span[-1] == " " and tails & self._lefts:
            self._tails[span] = frozenset(tails & self._lefts)
        if heads & self._rights:
            self._heads[span] = frozenset(heads & self._rights)

    def _meets_pattern(self, pieces: list[str]) -> bool:
        tails, heads, pairs = self._tails, self._heads, self._pairs
        for i in itertools.compress(range(len(pieces) - 1), map(tails.__contains__, pieces)):
            right = heads.get(pieces[i + 1])
            if right and any((a, b) in pairs for a in tails[pieces[i]] for b in right):
                return True
        return False

    def __call__(self, texts: list[str]) -> list[list[str]]:
        """Tokens of (pre-processed) texts, with fastai's `replace_space` applied."""
        pieces = [_RE_SPAN.findall(t) for t in texts]
        memo = self._tokens
        new = {p for doc in pieces for p in doc if p not in memo}
        if len(memo) + len(new) > self._max_spans:  # bounds memory on huge corpora
            self._tokens, self._tails, self._heads = {}, {}, {}
            memo = self._tokens
            new = {p for doc in pieces for p in doc}
        if new:
            self._learn(new)
        out = []
        for text, doc in zip(texts, pieces, strict=True):
            if self._tails and self._meets_pattern(doc):
                out.append(self._whole(text))
            else:
                out.append(list(itertools.chain.from_iterable(map(memo.__getitem__, doc))))
        return out


class FastaiTokenizer:
    """fastai's default word tokenizer (rules + spaCy), picklable, with a batch and a stream API.

    spaCy is loaded lazily in each process (it is not pickled), so the object can be sent to
    worker processes cheaply.
    """

    def __init__(
        self,
        lang: str = "en",
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
        add_bos: bool = True,
        add_eos: bool = False,
        max_cached_spans: int = 1_000_000,
    ):
        self.lang = lang
        self.special_tokens = list(special_tokens)
        self.add_bos = add_bos
        self.add_eos = add_eos
        # Bounds memory on huge corpora: the memo is dropped when it grows past this.
        self.max_cached_spans = max_cached_spans
        self._spans: _SpacySpans | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_spans"] = None  # spaCy is rebuilt lazily in each process
        return state

    def _splitter(self) -> _SpacySpans:
        if self._spans is None:
            self._spans = _SpacySpans(self.lang, self.special_tokens, self.max_cached_spans)
        return self._spans

    def preprocess(self, text: str) -> str:
        """The text after fastai's pre-rules (what fastai hands to spaCy)."""
        return apply_rules(text, self.add_bos, self.add_eos)

    def _tokenize_batch(self, texts: list[str], first_index: int) -> list[list[str]]:
        for i, text in enumerate(texts, first_index):
            if not isinstance(text, str):
                raise TypeError(f"FastaiTokenizer: text #{i} is {type(text).__name__}, not str")
        try:
            return self._splitter()([apply_rules(t, self.add_bos, self.add_eos) for t in texts])
        except UnicodeEncodeError as err:  # spaCy hashes UTF-8; fastai fails the same way
            bad = next(i for i, t in enumerate(texts, first_index) if _RE_SURROGATE.search(t))
            raise ValueError(
                f"FastaiTokenizer: text #{bad} has a character UTF-8 cannot encode "
                f"({err.object[err.start : err.end]!r}, a lone surrogate); clean the text first"
            ) from err

    def tokenize_stream(self, texts: Iterable[str], batch_size: int = 512) -> Iterator[list[str]]:
        """Tokens of each text, lazily: iterable of strings in, iterator of token lists out.

        Texts are read `batch_size` at a time (new spans of a batch go to spaCy in one call).
        """
        it = iter(texts)
        for start in itertools.count(0, batch_size):
            batch = list(itertools.islice(it, batch_size))
            if not batch:
                return
            yield from self._tokenize_batch(batch, start)

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """Tokens of each text; equal to fastai's `tokenize_texts(texts)`."""
        if isinstance(texts, str):
            raise TypeError("FastaiTokenizer.tokenize takes a list of texts, got one str")
        return list(self.tokenize_stream(texts))

    def fingerprint(self) -> str:
        """Stable hash of everything that decides the output (a token-cache key)."""
        settings = {
            "class": "FastaiTokenizer",
            "rules": RULES_VERSION,
            "spacy": importlib.metadata.version("spacy"),
            "lang": self.lang,
            "special_tokens": self.special_tokens,
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
