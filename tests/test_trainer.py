"""Trainer: NaN guard keeps the last good checkpoint; SIGKILL + rerun == uninterrupted run."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ulmfit_jax.optim import optimizer as opt
from ulmfit_jax.text.classifier_batches import bucket_chunks, repad
from ulmfit_jax.text.resumable import ResumableBatches
from ulmfit_jax.trainer.checkpointing import Checkpointer, NonFiniteLossError
from ulmfit_jax.trainer.loop import Phase, Stage, phase_schedule, run_stage
from ulmfit_jax.trainer.metric_logger import MetricLogger
from ulmfit_jax.trainer.train_state import TrainState

ROOT = Path(__file__).resolve().parents[1]


class CountingIterator(ResumableBatches):
    """`n` empty batches per epoch, resumable like LMStream and ClassifierBatches."""

    def __init__(self, n: int):
        self.n, self.epoch, self.step = n, 0, 0

    def batch(self, epoch, step):
        return {}

    def num_batches(self, epoch=None):
        return self.n

    def identity(self):
        return {}


@dataclasses.dataclass
class ToyStage:
    """A `Stage` around one jitted step: what the loop needs and nothing else."""

    name: str
    phases: list[Phase]
    iterator: ResumableBatches
    step: Callable
    evaluate: Callable[[TrainState], dict]
    summarize: Callable[[dict], dict]
    schedule_kind: str = "constant"
    best_metric: str = "accuracy"
    best_mode: str = "max"

    def schedule(self, n_steps, lr_max):
        return phase_schedule(self.schedule_kind, (0.8, 0.7, 0.8), n_steps, lr_max)

    def train_step(self, freeze_to):
        return self.step

    def to_device(self, batch):
        return batch, 1

    def start_epoch(self, state):
        return state




def toy_state(params: dict) -> TrainState:
    tx = opt.ulmfit_optimizer(params, (("all", "w"),), multiplicity=()).transform()
    return TrainState(params=params, opt_state=tx.init(params), step=jnp.int32(0))


@jax.jit
def diverging_step(state, batch, rng, hp):
    """Loss 1 until the 7th step, whose loss (and parameters) become NaN."""
    bad = state.step == 6
    loss = jnp.where(bad, jnp.nan, 1.0)
    params = jax.tree.map(lambda p: p + jnp.where(bad, jnp.nan, hp["lr"]), state.params)
    new = state.replace(params=params, step=state.step + 1)
    return new, {"loss_sum": loss, "correct": jnp.float32(0), "count": jnp.float32(1)}


def test_a_stage_provides_what_the_loop_uses():
    from ulmfit_jax.trainer.classifier_stage import ClassifierStage
    from ulmfit_jax.trainer.lm_stage import LMStage

    assert isinstance(ToyStage("s", [], CountingIterator(1), diverging_step, dict, dict), Stage)
    assert not isinstance(CountingIterator(1), Stage)
    methods = ("schedule", "train_step", "to_device", "start_epoch", "evaluate", "summarize")
    for cls in (LMStage, ClassifierStage):
        assert all(callable(getattr(cls, m, None)) for m in methods), cls
        assert (cls.best_metric, cls.best_mode) == ("accuracy", "max")


def test_nan_loss_stops_with_stage_and_step_and_keeps_last_good_checkpoint(tmp_path):
    state = toy_state({"w": jnp.zeros(3)})
    stage = ToyStage(
        name="lm_fwd", phases=[Phase(epochs=2, lr_max=0.1)], iterator=CountingIterator(5),
        step=diverging_step, evaluate=lambda s: {"loss": 0.0, "accuracy": 0.0},
        summarize=lambda sums: {"loss": sums["loss_sum"] / sums["count"], "accuracy": 0.0},
    )
    ckpt = Checkpointer(tmp_path / "ck", keep=3, async_save=False)
    with pytest.raises(NonFiniteLossError, match=r"step 7 of stage 'lm_fwd'"):
        run_stage(stage, state, jax.random.PRNGKey(0), ckpt, MetricLogger(tmp_path, False),
                  every_steps=2, log_every=1, config_dict={}, progress=False)
    assert ckpt.latest_step() == 6  # step 6 was checked before saving; step 7 never saved
    restored, meta = ckpt.restore_latest(state)
    assert np.all(np.isfinite(np.asarray(restored.params["w"])))
    assert meta["data"] == {"epoch": 1, "step": 1}
    ckpt.close()


@jax.jit
def counting_step(state, batch, rng, hp):
    """Every step adds 1 to the parameter: its value tells which step a state is from."""
    new = state.replace(params={"w": state.params["w"] + 1.0}, step=state.step + 1)
    return new, {"loss_sum": jnp.float32(1), "correct": jnp.float32(0), "count": jnp.float32(1)}


@pytest.mark.parametrize("restore_best", [False, True])
def test_best_checkpoint_is_kept_and_restored_when_asked(tmp_path, restore_best):
    from ulmfit_jax.trainer.config import base_config
    from ulmfit_jax.trainer.loop import run_stage_with_checkpoints

    accuracy_after_epoch = {3: 0.5, 6: 0.9, 9: 0.7}  # the best epoch is the second
    state = toy_state({"w": jnp.zeros(())})
    stage = ToyStage(
        name="clf", phases=[Phase(epochs=3, lr_max=0.1)], iterator=CountingIterator(3),
        step=counting_step,
        evaluate=lambda s: {"loss": 0.0, "accuracy": accuracy_after_epoch[int(s.step)]},
        summarize=lambda sums: {"loss": sums["loss_sum"] / sums["count"]},
    )
    config = base_config()
    config.checkpoint.keep, config.checkpoint.async_save = 1, False
    config.checkpoint.restore_best, config.progress = restore_best, False
    final, valid = run_stage_with_checkpoints(stage, state, config, tmp_path,
                                              MetricLogger(tmp_path, False), seed_offset=0)
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints" / "clf").iterdir())
    assert kept == [6, 9]  # the last one and the best one
    assert float(final.params["w"]) == (6.0 if restore_best else 9.0)
    assert valid["accuracy"] == (0.9 if restore_best else 0.7)


def test_repad_keeps_documents_and_buckets_width():
    bptt = 4
    ids = np.array([[9, 9, 9, 9, 9, 1, 1], [1, 1, 1, 1, 5, 1, 1]], np.int32)
    batch = {"ids": ids, "lengths": np.array([5, 1], np.int32)}
    out = repad(batch, bptt, pad_id=1)
    assert out.shape == (2, bucket_chunks(2) * bptt)
    assert out[0].tolist() == [9, 9, 9, 9, 9, 1, 1, 1]
    assert out[1].tolist() == [1, 1, 1, 1, 5, 1, 1, 1]
    assert [bucket_chunks(n) for n in (1, 4, 5, 7, 9, 13)] == [1, 4, 6, 8, 12, 18]


# --------------------------------------------------------------------------- exact resume


def _train_cmd(workdir: Path) -> list[str]:
    return [sys.executable, "train.py", "--config", "configs/tiny.py", "--workdir", str(workdir),
            "--stage", "all", "--config.checkpoint.every_steps=15"]


def _env() -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu"}


def _run_and_kill_after_checkpoint(workdir: Path, stage: str, timeout: float = 300) -> None:
    """Start train.py and SIGKILL it as soon as a finished checkpoint of `stage` appears."""
    ckpt_dir = workdir / "checkpoints" / stage
    before = {p.name for p in ckpt_dir.iterdir()} if ckpt_dir.exists() else set()
    proc = subprocess.Popen(_train_cmd(workdir), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            new = {p.name for p in ckpt_dir.iterdir() if p.name.isdigit()} - before \
                if ckpt_dir.exists() else set()
            if new:
                proc.send_signal(signal.SIGKILL)
                break
            if proc.poll() is not None:
                pytest.fail(f"train.py ended (rc {proc.returncode}) before a {stage} checkpoint")
            time.sleep(0.05)
        else:
            pytest.fail(f"no {stage} checkpoint within {timeout} s")
    finally:
        proc.kill()
        proc.wait()


def _final_state(workdir: Path) -> dict:
    from ulmfit_jax.api import LanguageModel, TextClassifier

    lm = LanguageModel.load(workdir / "models" / "lm_fwd")
    clf = TextClassifier.load(workdir / "models" / "classifier_fwd")
    return {"lm": jax.device_get(lm.params), "clf": jax.device_get(clf.state)}


@pytest.mark.slow
def test_sigkill_and_rerun_gives_bitwise_the_uninterrupted_result(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    reference = subprocess.Popen(_train_cmd(straight), cwd=ROOT, env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # Killed once in the LM stage and once in the classifier stage, each after a checkpoint.
    _run_and_kill_after_checkpoint(resumed, "lm_fwd")
    _run_and_kill_after_checkpoint(resumed, "classifier_fwd")
    subprocess.run(_train_cmd(resumed), cwd=ROOT, env=_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out.decode()[-3000:]

    assert_bitwise_same_result(straight, resumed)


def assert_bitwise_same_result(straight: Path, resumed: Path) -> None:
    """Two train.py workdirs ended with identical parameters, metrics and logs."""
    a, b = _final_state(straight), _final_state(resumed)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                            strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))
    for name in ("metrics.json", "metrics.csv"):
        assert (straight / name).read_text() == (resumed / name).read_text(), name


# --------------------------------------------------------------------------- init_from


@pytest.mark.slow
def test_fine_tuning_from_fastai_weights_trains_only_embedding_while_frozen(tmp_path):
    """`lm.init_from` (a fastai .pth + itos): epoch 1 frozen (LSTMs untouched), then unfrozen."""
    from tests.checkpoint_files import read_state
    from ulmfit_jax.api import LanguageModel
    from ulmfit_jax.model.config import AWDLSTMConfig

    itos = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj",
            "the", "a", "movie", "film", "good", "bad", ".", ","] + ["xxfake"] * 7
    config = AWDLSTMConfig(vocab_size=len(itos), emb_size=16, hidden_size=32, n_layers=2)
    pretrained = LanguageModel.create(config, itos, seed=5)
    pretrained.to_fastai(tmp_path / "lm.pth", tmp_path / "itos.pkl")
    workdir = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--config", "configs/tiny.py", "--workdir", str(workdir),
           "--stage", "lm", f"--config.lm.init_from={tmp_path / 'lm.pth'}",
           f"--config.lm.init_itos={tmp_path / 'itos.pkl'}", "--config.lm.frozen_epochs=1",
           "--config.lm.epochs=1", "--config.checkpoint.every_steps=100000"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = sorted(int(p.name) for p in (workdir / "checkpoints" / "lm_fwd").iterdir()
                   if p.name.isdigit())
    assert len(steps) == 2  # end of the frozen epoch, end of the unfrozen one
    after_frozen = read_state(
        workdir / "checkpoints" / "lm_fwd" / str(steps[0]) / "state")["params"]
    final = LanguageModel.load(workdir / "models" / "lm_fwd").params
    before = pretrained.params
    for layer in ("0", "1"):
        for name in ("w_ih", "w_hh", "bias"):
            frozen = np.asarray(after_frozen["encoder"]["layers"][layer][name])
            np.testing.assert_array_equal(frozen, np.asarray(before["encoder"]["layers"][
                int(layer)][name]))
            assert not np.array_equal(frozen, np.asarray(final["encoder"]["layers"][int(layer)][
                name]))
    vocab = LanguageModel.load(workdir / "models" / "lm_fwd").vocab
    start = LanguageModel.from_fastai(tmp_path / "lm.pth", tmp_path / "itos.pkl", new_vocab=vocab)
    for key in ("decoder_bias",):
        assert not np.array_equal(np.asarray(after_frozen[key]), np.asarray(start.params[key]))
    np.testing.assert_array_equal(  # the frozen phase started from the converted weights
        np.asarray(start.params["encoder"]["layers"][0]["w_hh"]),
        np.asarray(before["encoder"]["layers"][0]["w_hh"]))
