"""The package's layers as rules: what each layer may import, checked on the source and live.

Layers (ARCHITECTURE.md), bottom up: the shared modules (errors, atomic_io, cli, tree_paths,
serving_format); text (host pipeline, no jax) and model (jax/flax only) side by side; convert
(the only torch user) and optim; inference; the public `api` package; `explain` (looking
inside a trained classifier) on it; the trainer on top.
`serving` runs an export with the text layer alone. `MAY_IMPORT` below is that diagram; every
other test names one rule of it. The static checks read every import statement, also those
inside functions (lazy imports), and follow imports inside the package transitively.
"""

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ulmfit_jax"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def direct_imports(name: str) -> frozenset[str]:
    """Absolute names of every module imported anywhere in module `name`'s source."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _walk_skipping_lazy_exports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            # `from pkg import module` imports a module too.
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
    return frozenset(found)


def _walk_skipping_lazy_exports(tree: ast.AST):
    """`ast.walk` minus module `__getattr__` bodies: a package's lazy exports (`ulmfit_jax`'s
    LanguageModel) load only when that attribute is asked for, not on import."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo += [child for child in ast.iter_child_nodes(node)
                 if not (isinstance(child, ast.FunctionDef) and child.name == "__getattr__")]


def reachable(name: str) -> set[str]:
    """Every module (ours and third-party) that importing `name` can import, lazily or not."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        for imported in direct_imports(current):
            if imported in seen:
                continue
            seen.add(imported)
            parts = imported.split(".")
            # importing a.b.c runs a/__init__ and a/b/__init__ first
            todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1)
                     if ".".join(parts[:i]) in MODULES]
    return seen


def third_party_roots(name: str) -> set[str]:
    return {m.split(".")[0] for m in reachable(name) if not m.startswith("ulmfit_jax")}


def layer(prefix: str) -> list[str]:
    return [m for m in MODULES if m == prefix or m.startswith(prefix + ".")]


# Module (or package) -> its layer; the longest prefix decides.
LAYER_OF = {
    "ulmfit_jax": "shared",  # the package facade; its lazy exports are not imports
    "ulmfit_jax.errors": "shared",
    "ulmfit_jax.atomic_io": "shared",
    "ulmfit_jax.cli": "shared",
    "ulmfit_jax.tree_paths": "shared",
    "ulmfit_jax.serving_format": "shared",
    "ulmfit_jax.text": "text",
    "ulmfit_jax.model": "model",
    "ulmfit_jax.convert": "convert",
    "ulmfit_jax.optim": "optim",
    "ulmfit_jax.inference": "inference",
    "ulmfit_jax.serving": "serving",
    "ulmfit_jax.api": "api",
    "ulmfit_jax.explain": "explain",
    "ulmfit_jax.trainer": "trainer",
}
# Each layer and the layers it may import besides itself: only layers below it.
MAY_IMPORT = {
    "shared": set(),
    "text": {"shared"},
    "model": {"shared"},
    "convert": {"shared", "model"},
    "optim": {"shared"},
    "inference": {"shared", "text", "model"},
    "serving": {"shared", "text"},
    "api": {"shared", "text", "model", "convert", "inference"},
    "explain": {"shared", "text", "model", "inference", "api"},
    "trainer": {"shared", "text", "model", "convert", "optim", "inference", "api", "explain"},
}


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in LAYER_OF:
            return LAYER_OF[".".join(parts[:i])]
    return None


def package_imports(name: str) -> set[str]:
    return {m for m in direct_imports(name) if m.split(".")[0] == "ulmfit_jax"}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_has_a_layer(name):
    # A new top-level module must be placed in the diagram (LAYER_OF, ARCHITECTURE.md).
    assert layer_of(name) in MAY_IMPORT, f"{name}: no layer; add it to LAYER_OF"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_layer_imports_only_layers_below_it(name):
    own = layer_of(name)
    allowed = MAY_IMPORT[own] | {own}
    wrong = sorted(f"{m} ({layer_of(m)})" for m in package_imports(name)
                   if layer_of(m) not in allowed)
    assert not wrong, f"{name} ({own}) imports {wrong}"


@pytest.mark.parametrize("name", layer("ulmfit_jax.text"))
def test_text_layer_never_imports_jax(name):
    banned = {"jax", "flax", "optax", "orbax", "torch"} & third_party_roots(name)
    assert not banned, f"{name} can import {banned}"


@pytest.mark.parametrize("name", layer("ulmfit_jax.text"))
def test_text_layer_imports_nothing_of_the_package_above_it(name):
    above = [m for m in reachable(name) if m.startswith("ulmfit_jax.")
             and not m.startswith(("ulmfit_jax.text", "ulmfit_jax.atomic_io", "ulmfit_jax.errors"))]
    assert not above, f"{name} can import {above}"


@pytest.mark.parametrize("name", layer("ulmfit_jax.model"))
def test_model_layer_imports_no_torch_config_or_tensorflow(name):
    banned = {"torch", "ml_collections", "tensorflow", "tensorflow_datasets"}
    assert not banned & third_party_roots(name), name
    assert not [m for m in reachable(name) if m.startswith(("ulmfit_jax.trainer",
                                                             "ulmfit_jax.convert"))]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_conversion_layer_imports_torch(name):
    if name.startswith("ulmfit_jax.convert"):
        return
    assert "torch" not in {m.split(".")[0] for m in direct_imports(name)}, name


@pytest.mark.parametrize("name", [m for m in MODULES if not m.startswith("ulmfit_jax.trainer")])
def test_nothing_below_the_trainer_imports_it(name):
    assert not [m for m in reachable(name) if m.startswith("ulmfit_jax.trainer")], name


@pytest.mark.parametrize("name", layer("ulmfit_jax.text"))
def test_text_never_imports_convert(name):
    # The host pipeline reads and writes its own files; fastai's formats live in convert.
    assert not [m for m in reachable(name) if m.startswith("ulmfit_jax.convert")], name


@pytest.mark.parametrize("name", layer("ulmfit_jax.inference"))
def test_inference_never_imports_api(name):
    # The public wrappers delegate down to inference, never the other way round.
    assert not [m for m in reachable(name) if m.startswith("ulmfit_jax.api")], name


def test_the_serving_export_does_not_import_its_reader():
    # The format both sides share is `serving_format`; the writer never imports `serving`.
    assert "ulmfit_jax.serving" not in reachable("ulmfit_jax.inference.export")
    assert "ulmfit_jax.serving_format" in direct_imports("ulmfit_jax.inference.export")
    assert "ulmfit_jax.serving_format" in direct_imports("ulmfit_jax.serving")


def test_serving_runs_with_jax_and_the_text_layer_only():
    banned = {"flax", "optax", "orbax", "torch"} & third_party_roots("ulmfit_jax.serving")
    assert not banned, banned
    ours = {layer_of(m) for m in reachable("ulmfit_jax.serving") if m.startswith("ulmfit_jax")}
    assert ours <= {"shared", "text", "serving"}, ours


@pytest.mark.parametrize("name", [m for m in MODULES if layer_of(m) == "shared"])
def test_the_shared_modules_import_nothing_above_them(name):
    # errors, atomic_io, ... serve every layer, so they import none (no circles).
    assert {layer_of(m) for m in reachable(name) if m.startswith("ulmfit_jax")} <= {"shared"}


def test_the_public_api_sits_below_the_trainer_and_above_inference():
    assert "ulmfit_jax.api" in package_imports("ulmfit_jax.trainer.classifier_stage")
    assert "ulmfit_jax.inference.classify" in direct_imports("ulmfit_jax.api.text_classifier")
    assert not [m for m in reachable("ulmfit_jax.api") if m.startswith("ulmfit_jax.trainer")]


def test_the_rules_see_lazy_and_relative_imports():
    # the SentencePiece tokenizer imports its library inside a function; sources import
    # `.core` relatively.
    assert "sentencepiece" in direct_imports("ulmfit_jax.text.sentencepiece_tokenizer")
    # saved_model imports orbax inside a function; sources import `.core` relatively.
    assert "orbax.checkpoint" in direct_imports("ulmfit_jax.api.saved_model")
    assert "ulmfit_jax.text.sources.core" in direct_imports("ulmfit_jax.text.sources.csv_files")
    assert "torch" in third_party_roots("ulmfit_jax.api")  # through convert, lazily
    assert layer_of("ulmfit_jax.text.sources.core") == "text"
    assert layer_of("ulmfit_jax.serving_format") == "shared"  # longest prefix, not `serving`


def test_the_layer_rule_fails_on_an_upward_import(monkeypatch):
    # The rule can fail: a lazy import of the api from inference is caught.
    monkeypatch.setattr(sys.modules[__name__], "direct_imports",
                        lambda name: frozenset({"ulmfit_jax.api"}))
    with pytest.raises(AssertionError, match="imports"):
        test_a_layer_imports_only_layers_below_it("ulmfit_jax.inference.ensemble")


def test_text_and_a_tokenizer_worker_run_without_jax():
    """Live: import the whole text layer, tokenize in a worker process; jax never loads."""
    code = (
        "import sys\n"
        "import ulmfit_jax.text, ulmfit_jax.text.sources, ulmfit_jax.text.lm_stream\n"
        "import ulmfit_jax.text.classifier_batches, ulmfit_jax.text.sentencepiece_tokenizer\n"
        "from ulmfit_jax.text import FastaiTokenizer\n"
        "from ulmfit_jax.text.token_cache import build_token_cache\n"
        "import tempfile\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        "    c = build_token_cache(['Hello WORLD!', 'a b'], FastaiTokenizer(), d, workers=1,\n"
        "                          progress=False)\n"
        "    assert c.num_docs == 2\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'torch'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
