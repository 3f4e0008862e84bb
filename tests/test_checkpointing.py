"""Checkpointer: round trip with shardings, keep last N + best, atomic saves, NaN message."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ulmfit_jax.optim import optimizer as opt
from ulmfit_jax.trainer import sharding
from ulmfit_jax.trainer.checkpointing import (
    Checkpointer,
    NonFiniteLossError,
    check_finite_loss,
    key_from_list,
    key_to_list,
)
from ulmfit_jax.trainer.train_state import LMTrainState


def make_state(scale: float = 1.0) -> LMTrainState:
    params = {"encoder": {"embedding": jnp.full((6, 4), scale)}, "decoder_bias": jnp.zeros(6)}
    optimizer = opt.ulmfit_optimizer(
        params, (("embedding", "encoder/embedding"), ("bias", "decoder_bias")), wd=0.1,
        multiplicity=(),
    )
    opt_state = opt.set_lr_scale(optimizer.init(params), [0.5, 1.0])
    return LMTrainState(params=params, opt_state=opt.set_schedule(opt_state, 1e-3 * scale, 0.8),
                        step=jnp.int32(3),
                        hidden=((jnp.ones((2, 4)) * scale, jnp.zeros((2, 4))),))


def test_round_trip_restores_values_structure_shardings_and_meta(tmp_path):
    mesh = sharding.make_data_mesh()
    state = sharding.place_state(make_state(2.0), mesh)
    ckpt = Checkpointer(tmp_path / "ck", keep=2)
    rng = jax.random.PRNGKey(42)
    meta = {"rng": key_to_list(rng), "data": {"epoch": 1, "step": 5}, "config": {"a": [1, 2]}}
    ckpt.save(7, state, meta)
    ckpt.wait()
    template = sharding.place_state(make_state(0.0), mesh)
    restored, restored_meta = ckpt.restore_latest(template)
    ckpt.close()
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    assert isinstance(restored, LMTrainState)
    assert opt.n_groups(restored.opt_state) == 2
    assert float(opt.schedule_state(restored.opt_state).hyperparams["lr"]) == np.float32(2e-3)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert b.sharding == a.sharding
    assert restored_meta["step"] == 7 and restored_meta["data"] == {"epoch": 1, "step": 5}
    np.testing.assert_array_equal(key_from_list(restored_meta["rng"]), np.asarray(rng))


def test_keeps_last_n_and_best(tmp_path):
    ckpt = Checkpointer(tmp_path / "ck", keep=2, best_metric="accuracy", async_save=False)
    state = make_state()
    for step, acc in [(1, 0.5), (2, 0.9), (3, 0.1), (4, 0.2), (5, 0.3)]:
        ckpt.save(step, state, {}, metrics={"accuracy": acc})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4, 5]
    assert ckpt.best_step() == 2
    ckpt.close()


def test_partial_save_is_invisible_and_restore_of_nothing_is_none(tmp_path):
    directory = tmp_path / "ck"
    ckpt = Checkpointer(directory, keep=2, async_save=False)
    assert ckpt.restore_latest(make_state()) is None
    ckpt.save(1, make_state(), {})
    ckpt.close()
    # What a run killed mid-save leaves behind: orbax's temporary directory, never renamed.
    (directory / "2.orbax-checkpoint-tmp-123").mkdir()
    (directory / "2.orbax-checkpoint-tmp-123" / "junk").write_text("half written")
    ckpt = Checkpointer(directory, keep=2, async_save=False)
    assert ckpt.latest_step() == 1
    restored, meta = ckpt.restore_latest(make_state(5.0))
    assert meta["step"] == 1
    np.testing.assert_array_equal(restored.params["encoder"]["embedding"], 1.0)
    ckpt.close()


def test_non_finite_loss_message_names_stage_and_step():
    check_finite_loss(1.5, "lm_fwd", 3)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(NonFiniteLossError, match=r"step 12 of stage 'classifier_fwd'"):
            check_finite_loss(bad, "classifier_fwd", 12)


def test_async_save_writes_the_metadata_as_it_was_at_save_time(tmp_path, monkeypatch):
    """orbax may serialise the JSON in its thread after `save` returned, while the loop goes on
    adding steps to its metric accumulators: the checkpoint must hold the values at save time
    (a step counted twice after resuming was seen on a loaded machine)."""
    ckpt = Checkpointer(tmp_path / "ck", keep=2, async_save=True)
    real_save = ckpt._manager.save
    live = {"interval": {"loss_sum": 1.0, "count": 1.0}}

    def late_writer(*args, **kwargs):  # the loop's next step lands before the write
        live["interval"]["loss_sum"] += 5.0
        live["interval"]["count"] += 1.0
        real_save(*args, **kwargs)

    monkeypatch.setattr(ckpt._manager, "save", late_writer)
    ckpt.save(1, make_state(), {"rng": [0], "metrics": live})
    ckpt.wait()
    _, meta = ckpt.restore_latest(make_state())
    ckpt.close()
    assert meta["metrics"] == {"interval": {"loss_sum": 1.0, "count": 1.0}}


def _save_old_format(directory, step: int, state) -> None:
    """A checkpoint as ulmfit_jax wrote it before `CHECKPOINT_FORMAT`: a dict train state and
    a `meta` without `format`."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(directory, item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(create=True))
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({"step": step, "rng": [0]})))
    manager.wait_until_finished()
    manager.close()


def test_a_checkpoint_of_an_older_format_is_refused_not_taken_for_damage(tmp_path):
    from ulmfit_jax.trainer.checkpointing import CHECKPOINT_FORMAT, CheckpointFormatError

    state = make_state()
    old = {"params": state.params, "step": state.step, "hidden": state.hidden}
    _save_old_format(tmp_path / "ck", 4, old)
    ckpt = Checkpointer(tmp_path / "ck", keep=3, async_save=False)
    ckpt.save(2, state, {})  # an older step of the current format is no fallback either
    with pytest.raises(CheckpointFormatError, match=(
            rf"ck/4 was written by an older ulmfit_jax \(checkpoint format 1; this version "
            rf"reads format {CHECKPOINT_FORMAT}\); rerun with --fresh")):
        ckpt.restore_latest(make_state())
    assert sorted(ckpt.all_steps()) == [2, 4]  # nothing set aside as damaged
    assert not (tmp_path / "ck.damaged").exists()
    _, meta = ckpt.restore(2, make_state())
    assert meta["format"] == CHECKPOINT_FORMAT
    ckpt.close()
