"""Reading a trainer checkpoint in a test, whatever devices wrote it.

orbax restores an array onto the devices its file records unless it is told where: a
checkpoint that train.py wrote with its batches split over two CPU devices (`cpu_devices`)
would not restore in a test process that has one. The library's own resume passes its mesh's
shardings (trainer/checkpointing.py); this does the same for a test's single device.
"""

from pathlib import Path

import jax
import orbax.checkpoint as ocp


def read_state(directory: Path) -> dict:
    """A checkpoint's `state` item (`<stage>/<step>/state`) on this process's first device."""
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(directory)
    tree = getattr(metadata, "item_metadata", metadata)
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=here), tree)
    return checkpointer.restore(directory, target)
