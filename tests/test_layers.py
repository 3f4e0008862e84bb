"""The package's layers as rules: what each layer may import, checked on the source and live.

Layers (ARCHITECTURE.md): text (host pipeline, no jax), model (jax/flax only), convert (the only
torch user), optim, trainer on top; `api` is the public surface below the trainer.
The static checks read every import statement, also those inside functions (lazy imports),
and follow imports inside the package transitively.
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


def test_the_rules_see_lazy_and_relative_imports():
    # the SentencePiece tokenizer imports its library inside a function; sources import
    # `.core` relatively.
    assert "sentencepiece" in direct_imports("ulmfit_jax.text.sentencepiece_tokenizer")
    assert "ulmfit_jax.text.sources.core" in direct_imports("ulmfit_jax.text.sources.csv_files")
    assert "torch" in third_party_roots("ulmfit_jax.api")  # through convert, lazily


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
