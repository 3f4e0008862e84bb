"""The vocab unpickler admits a list of strings and nothing else, and never runs code."""

import collections
import os
import pickle

import pytest

from ulmfit_jax.convert.safe_pickle import UnsafePickleError, load_itos, loads_itos, save_itos

ITOS = ["xxunk", "xxpad", "xxbos", "the", ",", "é", "日本", ""]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_reads_plain_list_every_protocol(tmp_path, protocol):
    path = tmp_path / "itos.pkl"
    path.write_bytes(pickle.dumps(ITOS, protocol=protocol))
    assert load_itos(path) == ITOS


def test_save_itos_round_trip_and_fastai_reads_it(tmp_path):
    from fastcore.xtras import load_pickle

    path = tmp_path / "itos.pkl"
    save_itos(ITOS, path)
    assert load_itos(path) == ITOS
    assert load_pickle(path) == ITOS


def _payload_that_touches(target):
    class Evil:
        def __reduce__(self):
            return (open, (str(target), "w"))

    return pickle.dumps([Evil()], protocol=2)


def test_malicious_reduce_is_refused_without_running(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "itos.pkl"
    path.write_bytes(_payload_that_touches(target))
    # Proof the payload is live: plain pickle would create the file.
    pickle.loads(path.read_bytes())
    assert target.exists()
    os.remove(target)
    with pytest.raises(UnsafePickleError, match="itos.pkl.*refusing to load global io.open"):
        load_itos(path)
    assert not target.exists()


@pytest.mark.parametrize(
    "obj, match",
    [
        ({"a": 1}, "list of str, got dict"),
        (("a", "b"), "list of str, got tuple"),
        (["a", 3], "entry 1 is int"),
        (["a", b"b"], "entry 1 is bytes"),
        ([], "empty"),
    ],
)
def test_non_list_of_str_is_refused(tmp_path, obj, match):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(ValueError, match="bad.pkl.*" + match):
        load_itos(path)


def test_counter_and_other_classes_are_refused(tmp_path):
    path = tmp_path / "counter.pkl"
    path.write_bytes(pickle.dumps(collections.Counter(ITOS)))
    with pytest.raises(UnsafePickleError, match="counter.pkl.*collections.Counter"):
        load_itos(path)


def test_truncated_pickle_names_the_file(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps(ITOS)[:-5])
    with pytest.raises(ValueError, match="cut.pkl: not a readable vocab pickle"):
        load_itos(path)


def test_bytes_source_label():
    with pytest.raises(ValueError, match="<bytes>"):
        loads_itos(pickle.dumps(3))
