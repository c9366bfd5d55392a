#!/usr/bin/env bash
# Idempotent environment setup: a virtualenv in .venv with paced-jax installed in it.
#   bash launch/setup.sh          # runtime + demo dependencies
#   bash launch/setup.sh --test   # also the test dependencies (torch==2.13.0 CPU, pytest)
#   bash launch/setup.sh --tpu    # jax[tpu] (on TPU VMs)
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin="${PYTHON:-python3}"
extras=""
for arg in "$@"; do
  case "$arg" in
    --test) extras="${extras:+$extras,}test" ;;
    --tpu) extras="${extras:+$extras,}tpu" ;;
    *) echo "setup.sh: unknown argument '$arg' (expected --test or --tpu)" >&2; exit 2 ;;
  esac
done

if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
stamp=".venv/.paced_jax_setup"
want="$(sha256sum pyproject.toml | cut -c1-16) extras=$extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
  echo "$want" > "$stamp"
fi
