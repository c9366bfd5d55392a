"""Mesh construction and logical-axis sharding rules."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from paced_jax import mesh as mesh_lib


def test_fill_axis():
  assert mesh_lib.mesh_shape(mesh_lib.MeshConfig(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
  assert mesh_lib.mesh_shape(mesh_lib.MeshConfig(data=1, fsdp=-1, tensor=1), 8) == (1, 8, 1)


@pytest.mark.parametrize("cfg,match", [
    (mesh_lib.MeshConfig(data=-1, fsdp=-1), "at most one axis"),
    (mesh_lib.MeshConfig(data=-1, fsdp=3), "not divisible"),
    (mesh_lib.MeshConfig(data=2, fsdp=2, tensor=1), "4 but there are 8"),
])
def test_bad_mesh(cfg, match):
  with pytest.raises(ValueError, match=match):
    mesh_lib.mesh_shape(cfg, 8)


def test_logical_rules():
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=2, fsdp=2, tensor=2))
  spec = lambda axes, shape: mesh_lib.logical_to_spec(axes, shape, mesh)
  assert spec(("layers", "embed", "q_heads", "head_dim"), (2, 64, 4, 16)) == P(None, "fsdp", "tensor", None)
  # 3 kv heads do not divide over tensor=2: replicated rather than an error.
  assert spec(("layers", "embed", "kv_heads", "head_dim"), (2, 64, 3, 16)) == P(None, "fsdp", None, None)
  assert spec(("batch", None), (8, 5)) == P(("data", "fsdp"), None)
  assert spec(("vocab", "embed"), (96, 32)) == P("tensor", "fsdp")
  assert mesh_lib.batch_sharding(mesh, 3).spec == P(("data", "fsdp"), None, None)
  assert jax.devices()[0] in mesh.devices.flat
