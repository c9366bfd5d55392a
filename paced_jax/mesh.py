"""Device mesh ('data', 'fsdp', 'tensor'), logical-axis rules, and the shardings built from them.

Parameters carry logical axis names (model/decoder.py); one rules table maps each name to a mesh axis.
A dimension that a mesh axis does not divide evenly is replicated instead (e.g. 3 kv heads on
a tensor axis of 2), so every preset runs on every mesh, just less sharded.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from paced_jax.config import DEFAULT_RULES, MeshConfig

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both; fsdp also shards parameters

def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
  """Resolve the one -1 axis to the devices left over; errors say what did not divide."""
  sizes = [cfg.data, cfg.fsdp, cfg.tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got data={cfg.data} fsdp={cfg.fsdp} tensor={cfg.tensor}")
  known = math.prod(s for s in sizes if s != -1)
  if num_devices % known:
    raise ValueError(f"mesh: {num_devices} devices are not divisible by the fixed axes product {known} "
                     f"(data={cfg.data} fsdp={cfg.fsdp} tensor={cfg.tensor})")
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh: data*fsdp*tensor = {math.prod(sizes)} but there are {num_devices} devices")
  return tuple(sizes)


def initialize_distributed(cfg: MeshConfig) -> None:
  """Join the multi-process run (once) when `cfg.distributed`; must precede any device use."""
  if not cfg.distributed or jax.distributed.is_initialized():
    return
  # Not jax.process_count() as the guard: asking it starts the backend, after which
  # jax.distributed.initialize() refuses to run.
  jax.distributed.initialize(coordinator_address=cfg.coordinator_address or None,
                             num_processes=cfg.num_processes or None,
                             process_id=cfg.process_id if cfg.process_id >= 0 else None)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  initialize_distributed(cfg)
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(cfg, len(devices))
  # Auto axes: the train step uses with_sharding_constraint, which Explicit axes reject.
  return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> P:
  """PartitionSpec for one array; each mesh axis used at most once, only where it divides."""
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name, dim in zip(logical_axes, shape):
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
    if axes and dim % math.prod(mesh.shape[a] for a in axes) == 0:
      used.update(axes)
      spec.append(axes[0] if len(axes) == 1 else axes)
    else:
      spec.append(None)
  return P(*spec)


def state_shardings(state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.State:
  """NamedSharding for every Variable of an (abstract or concrete) model state."""
  def one(var):
    axes = var.get_metadata().get("logical_axes") or (None,) * len(var.shape)
    return var.replace(NamedSharding(mesh, logical_to_spec(axes, var.shape, mesh, rules)))
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) axis over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def from_host(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a host array every process holds whole (a deterministic batch): each
  process places only its own devices' shards, with no cross-process check or transfer
  (jax.device_put would all-gather the value to assert it is equal everywhere)."""
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x: jax.Array) -> np.ndarray:
  """The whole value of a global array, on every process (gathered when other processes hold parts)."""
  if x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
