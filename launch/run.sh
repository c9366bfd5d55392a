#!/usr/bin/env bash
# Run one paced-jax stage here, or on every worker of a TPU VM slice.
# Usage and examples: launch/run.sh --help
set -euo pipefail

STAGES="prepare pass_rate reference teacher train evaluate snr report pipeline"
REMOTE_DIR="paced-jax"                 # under the remote user's home
INCOMING_DIR="paced-jax-incoming"      # the copied tree lands here, then replaces REMOTE_DIR's files

usage() {
  cat <<EOF
Usage: launch/run.sh [--tpu=NAME --zone=ZONE [--project=PROJECT]] [--dry-run] [--setup] STAGE [flags...]

Runs 'python -m paced_jax.tools.STAGE flags...' from the repository root.
STAGE is one of: ${STAGES// /, }.

  (local)  .venv/bin/python -m paced_jax.tools.STAGE flags...
           --setup first runs 'bash launch/setup.sh' (idempotent).
  --tpu    on every worker of the TPU VM slice NAME, through gcloud:
             1. ssh: empty ~/$INCOMING_DIR
             2. scp --recurse of the working tree (git-tracked and untracked, not ignored: no
                .venv, no workdir) into ~/$INCOMING_DIR
             3. ssh: replace ~/$REMOTE_DIR's files with it (its .venv and workdir* stay), then
                'bash launch/setup.sh --tpu' (idempotent)
             4. ssh: the same stage command on every worker, with --config.mesh.distributed=True
                appended when the flags include --config (jax.distributed.initialize() reads
                the slice's topology itself)
           Relative paths in flags are relative to ~/$REMOTE_DIR on the workers; on a multi-host
           slice point --config.workdir at a filesystem every worker shares.
  --dry-run  print the commands (one per line, shell-quoted) and run nothing.

Examples:
  launch/run.sh --setup pipeline --config=configs/tiny.py
  launch/run.sh --dry-run --tpu=my-pod --zone=us-east5-a pipeline --config=configs/qwen3_distill.py:v5p-64
EOF
}

die() {
  echo "run.sh: $*" >&2
  echo "Try 'launch/run.sh --help'." >&2
  exit 2
}

tpu="" zone="" project="" dry_run=0 setup=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --tpu|--zone|--project)
      [ $# -ge 2 ] || die "$1 needs a value"
      declare "${1#--}=$2"
      shift ;;
    --dry-run) dry_run=1 ;;
    --setup) setup=1 ;;
    --) shift; break ;;
    -*) die "unknown option '$1' (options go before STAGE)" ;;
    *) break ;;
  esac
  shift
done

[ $# -ge 1 ] || die "missing STAGE (one of: $STAGES)"
stage="$1"
shift
case " $STAGES " in
  *" $stage "*) ;;
  *) die "unknown stage '$stage'; expected one of: $STAGES" ;;
esac
if [ -n "$tpu" ] && [ -z "$zone" ]; then die "--tpu=$tpu needs --zone=ZONE"; fi
if [ -z "$tpu" ] && { [ -n "$zone" ] || [ -n "$project" ]; }; then die "--zone and --project only apply with --tpu=NAME"; fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# One word as the shell would need it typed: bare when safe, else in single quotes.
shell_word() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Print (dry run) or run one command given as separate words.
run() {
  if [ "$dry_run" = 1 ]; then
    local line="" word
    for word in "$@"; do line+="${line:+ }$(shell_word "$word")"; done
    echo "$line"
  else
    "$@"
  fi
}

# One shell-quoted string of words, for a command a remote shell will parse.
quote() {
  local quoted
  quoted="$(printf '%q ' "$@")"
  echo "${quoted% }"
}

python_cmd=(.venv/bin/python -m "paced_jax.tools.$stage" "$@")

if [ -z "$tpu" ]; then
  run cd "$root"
  if [ "$setup" = 1 ]; then run bash launch/setup.sh; fi
  run "${python_cmd[@]}"
  exit 0
fi

has_config=0
for arg in "$@"; do
  case "$arg" in --config|--config=*) has_config=1 ;; esac
done
if [ "$has_config" = 1 ]; then python_cmd+=(--config.mesh.distributed=True); fi

gcloud_opts=("--zone=$zone")
if [ -n "$project" ]; then gcloud_opts+=("--project=$project"); fi
gcloud_opts+=(--worker=all)
ssh_all() { run gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_opts[@]}" --command="$1"; }

# What to copy: the top-level entries of the working tree that git does not ignore (.venv,
# workdir*, caches and build outputs stay behind); without git, everything but those.
sources=()
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  while IFS= read -r entry; do
    if [ -e "$entry" ]; then sources+=("$entry"); fi
  done < <(git -C "$root" ls-files --cached --others --exclude-standard | cut -d/ -f1 | sort -u)
else
  for entry in * .[!.]*; do
    case "$entry" in
      .venv|workdir*|.git|.cache|build|dist|.pytest_cache|*.egg-info|__pycache__|'.[!.]*'|'*') ;;
      *) sources+=("$entry") ;;
    esac
  done
fi
[ ${#sources[@]} -gt 0 ] || die "nothing to copy from $root"

run cd "$root"
ssh_all "rm -rf ~/$INCOMING_DIR && mkdir -p ~/$INCOMING_DIR"
run gcloud compute tpus tpu-vm scp --recurse "${sources[@]}" "$tpu:~/$INCOMING_DIR/" "${gcloud_opts[@]}"
ssh_all "mkdir -p ~/$REMOTE_DIR && find ~/$REMOTE_DIR -mindepth 1 -maxdepth 1 ! -name .venv ! -name 'workdir*' ! -name '*.egg-info' -exec rm -rf {} + && cp -a ~/$INCOMING_DIR/. ~/$REMOTE_DIR/ && cd ~/$REMOTE_DIR && bash launch/setup.sh --tpu"
ssh_all "cd ~/$REMOTE_DIR && $(quote "${python_cmd[@]}")"
