"""Whether CPU devices should share a prediction batch: one batch's eval forward run whole on one
jax CPU device against split over one device per core, same process, random weights.

This is the measurement behind `inference/local_devices.py`'s CPU_SPLIT_MAX_HIDDEN: the split
pays only while each step's recurrent matmul is too small for XLA's own thread pool.

    python benchmarks/prediction_devices.py                      # the default grid
    python benchmarks/prediction_devices.py --cases 1152:64 256:32
"""

from __future__ import annotations

import argparse

import numpy as np
from common import load_average, machine, timed

from ulmfit_jax.host_allocator import use_fast_allocator

# hidden size: embedding size of the models measured (the AWD-LSTM's last layer outputs it)
EMBEDDINGS = {256: 128, 400: 200, 512: 200, 768: 300, 1152: 400}
DEFAULT_CASES = ("256:32", "256:64", "256:128", "400:64", "512:16", "512:64", "768:16",
                 "768:64", "1152:8", "1152:16", "1152:32", "1152:64")


def seconds_per_batch(hidden: int, rows: int, time_steps: int, split: bool,
                      repeats: int) -> float:
    """Best of `repeats` eval forwards of one `[rows, time_steps]` batch (3 layers)."""
    import jax
    from flax import nnx

    from ulmfit_jax.inference.classify import classifier_eval
    from ulmfit_jax.inference.local_devices import LocalDevices
    from ulmfit_jax.model.classifier import AWDLSTMClassifier
    from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig

    encoder = AWDLSTMConfig(8000, EMBEDDINGS.get(hidden, 400), hidden, 3)
    config = ClassifierConfig(encoder, 2, bptt=72, max_len=1440)
    graphdef, state = nnx.split(AWDLSTMClassifier(config, rngs=nnx.Rngs(0)))
    ids = np.random.default_rng(0).integers(2, 8000, (rows, time_steps)).astype(np.int32)
    devices = LocalDevices() if split else LocalDevices(jax.local_devices()[:1])

    def forward(ids, state):
        return classifier_eval(graphdef, ids, state).probs

    def step() -> None:
        devices.run(forward, ids, state).block_until_ready()

    step()  # compile
    return min(timed(step) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES),
                        help="HIDDEN:ROWS pairs")
    parser.add_argument("--time", type=int, default=144, help="tokens per row (2 chunks)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from ulmfit_jax.trainer.cpu_devices import available_cores, set_cpu_device_count

    set_cpu_device_count(available_cores())
    import jax

    print(f"machine: {machine()}; jax {jax.__version__} ({jax.local_device_count()} CPU "
          f"devices); 3 layers, {args.time} tokens per row, best of {args.repeats}")
    print(load_average())
    for case in args.cases:
        hidden, rows = (int(x) for x in case.split(":"))
        whole = seconds_per_batch(hidden, rows, args.time, False, args.repeats)
        split = seconds_per_batch(hidden, rows, args.time, True, args.repeats)
        print(f"hidden {hidden:5d} rows {rows:4d}: whole {1e3 * whole:8.1f} ms  split "
              f"{1e3 * split:8.1f} ms  split speed-up {whole / split:.2f}x", flush=True)
    print(load_average())


if __name__ == "__main__":
    use_fast_allocator()  # train.py's heap allocator, for both sides alike
    main()
