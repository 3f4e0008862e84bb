"""Data parallelism: 4 fake CPU devices give the same LM training as 1 device.

The device count is fixed when jax initialises, so each run is a subprocess of this file.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

N_STEPS, BATCH, TIME, VOCAB = 4, 8, 6, 40


def run_lm_steps(out_path: str) -> None:
    """Train the real LM for a few steps on this process's devices; save losses and params."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ulmfit_jax.model.awd_lstm import FASTAI_FUSED_BIAS_MULTIPLICITY
    from ulmfit_jax.model.config import AWDLSTMConfig
    from ulmfit_jax.model.language_model import AWDLSTMLanguageModel
    from ulmfit_jax.optim import optimizer as opt
    from ulmfit_jax.optim.layer_groups import lm_layer_groups
    from ulmfit_jax.trainer import sharding, steps

    config = AWDLSTMConfig(vocab_size=VOCAB, emb_size=8, hidden_size=16, n_layers=2)
    model = AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tx = opt.ulmfit_optimizer(params, lm_layer_groups(2), wd=0.1, clip_norm=0.4,
                              multiplicity=FASTAI_FUSED_BIAS_MULTIPLICITY).transform()
    graphdef, state = steps.create_lm_state(model, tx, BATCH)
    mesh = sharding.make_data_mesh()
    sharding.check_batch_size(BATCH, mesh)
    step = steps.make_train_step(
        steps.lm_train_step, mesh, state, graphdef=graphdef, model_config=config,
        optimizer=tx, alpha=2.0, beta=1.0,
    )
    state = sharding.place_state(state, mesh)
    stream = np.random.default_rng(0).integers(0, VOCAB, (BATCH, N_STEPS * TIME + 1), np.int32)
    losses = []
    for t in range(N_STEPS):
        window = stream[:, t * TIME : (t + 1) * TIME + 1]
        batch = sharding.shard_batch(
            {"inputs": window[:, :-1], "targets": window[:, 1:]}, mesh
        )
        hp = {"lr": jnp.float32(1e-2), "mom": jnp.float32(0.8)}
        state, metrics = step(state, batch, jax.random.PRNGKey(7), hp)
        losses.append(float(metrics["loss_sum"]) / float(metrics["count"]))
    shardings = {
        "hidden": list(state.hidden[0][0].sharding.spec),
        "params": list(state.params["decoder_bias"].sharding.spec),
    }
    leaves = [np.asarray(x).tolist() for x in jax.tree.leaves(state.params)]
    Path(out_path).write_text(json.dumps({
        "devices": jax.device_count(), "losses": losses, "params": leaves, "specs": shardings,
    }))


def spawn(n_devices: int, out_path: Path) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    subprocess.run(
        [sys.executable, __file__, str(out_path)], env=env, check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(out_path.read_text())


def test_four_devices_match_one_device(tmp_path):
    one = spawn(1, tmp_path / "one.json")
    four = spawn(4, tmp_path / "four.json")
    assert (one["devices"], four["devices"]) == (1, 4)
    assert four["specs"]["hidden"] == ["data"]
    assert four["specs"]["params"] == []
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5, atol=1e-5)
    for a, b in zip(one["params"], four["params"], strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


def test_batch_not_divisible_by_devices_is_a_clear_error():
    import pytest

    from ulmfit_jax.trainer import sharding

    class FakeMesh:
        devices = np.zeros(4)

    with pytest.raises(ValueError, match="not divisible by the 4 devices"):
        sharding.check_batch_size(6, FakeMesh())


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    run_lm_steps(sys.argv[1])
