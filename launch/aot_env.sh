#!/usr/bin/env bash
# A second virtualenv, .venv/aot, that can compile for real TPU topologies on a machine without
# TPUs: the libtpu package (the TPU compiler, ~140 MB) on top of the main .venv's packages.
# It is kept apart so ordinary runs and tests never load libtpu.
#   bash launch/aot_env.sh
#   .venv/aot/bin/python -m paced_jax.tools.aot_check --config=configs/qwen3_distill.py:v5p-64 --topology=v5p-64
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  echo "aot_env.sh: .venv is missing; run 'bash launch/setup.sh' first" >&2
  exit 2
fi
# The libtpu release jax[tpu] pins for the installed jax, e.g. 'libtpu==0.0.42.*'.
libtpu_req="$(.venv/bin/python - <<'PY'
import importlib.metadata as m
reqs = [r.split(";")[0].strip() for r in m.requires("jax") or [] if r.startswith("libtpu") and "tpu" in r]
print(reqs[0] if reqs else "libtpu")
PY
)"
main_site="$(.venv/bin/python -c 'import site; print(site.getsitepackages()[0])')"
if [ ! -x .venv/aot/bin/python ]; then
  "$(readlink -f .venv/bin/python)" -m venv .venv/aot
fi
aot_site="$(.venv/aot/bin/python -c 'import site; print(site.getsitepackages()[0])')"
# addsitedir (not a bare path) so the main venv's own .pth files, e.g. the editable paced_jax, apply.
echo "import site; site.addsitedir('$main_site')" > "$aot_site/paced_jax_main_venv.pth"
stamp=".venv/aot/.libtpu_requirement"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$libtpu_req" ]; then
  .venv/aot/bin/python -m pip install --quiet --no-deps "$libtpu_req"
  echo "$libtpu_req" > "$stamp"
fi
.venv/aot/bin/python -c 'import libtpu, jax; print("libtpu", libtpu.__file__, "jax", jax.__version__)'
