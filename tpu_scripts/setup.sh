#!/usr/bin/env bash
# setup.sh: copy gwtn_jax to every worker of a TPU VM or pod slice and install it there.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh source-path=SCRIPTDIR
. "$SCRIPT_DIR/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --name=NAME --zone=ZONE [options]

Copy the project to every worker and install it there, in a Python venv:
  1. the source: by default a tarball of this checkout's git working tree (tracked and
     untracked files, .gitignore'd ones such as .venv left out, uncommitted edits
     included), sent with 'gcloud compute tpus tpu-vm scp --worker=all' and unpacked
     over ~/REMOTE_DIR; with --repo, 'git clone' (or fetch) of URL at --ref on every worker
  2. the install, on every worker at once ('--worker=all --command=...'): Python 3.10+
     (python3-venv from apt if missing), REMOTE_DIR/.venv, pip install -e ".[tpu]"
     (jax[tpu] with libtpu, then gwtn_jax and its dependencies)
  3. with --check, every worker prints what JAX sees (all workers must answer)
Run it again after changing the code: it updates the source and reuses the venv.

Required:
  --name=NAME             TPU VM name (as given to create.sh)
  --zone=ZONE             its zone, e.g. us-central2-b

Options:
  --project=PROJECT       Google Cloud project (default: gcloud's configured project)
  --repo=URL              clone URL on the workers instead of copying this checkout
                          (the workers need read access: a public URL or a token in it)
  --ref=REF               with --repo: branch, tag or commit to check out (default HEAD,
                          the remote's default branch)
  --src=DIR               the checkout to copy (default: the git tree holding this script)
  --remote-dir=DIR        where the project goes on each worker, relative to the home
                          directory (default $DEFAULT_REMOTE_DIR; run.sh takes the same flag)
  --python=EXE            the Python that creates the venv (default python3); needs 3.10+
  --no-editable           pip install ".[tpu]" instead of pip install -e ".[tpu]"
  --pip-arg=ARG           extra argument for that pip install (repeatable),
                          e.g. --pip-arg=--find-links=URL
  --recreate-venv         delete REMOTE_DIR/.venv first (a clean reinstall)
  --check                 after installing, run a JAX device check on every worker
  --gcloud-arg=ARG        extra flag for every gcloud command (repeatable),
                          e.g. --gcloud-arg=--internal-ip or --gcloud-arg=--tunnel-through-iap
  --dry-run               print the commands instead of running them (also DRY_RUN=1)
  -h, --help              this help

Examples:
  $SCRIPT_NAME --name=gwtn-pod --zone=us-east5-a --check
  $SCRIPT_NAME --name=gwtn-pod --zone=us-east5-a --repo=https://github.com/ORG/gwtn_jax.git --ref=main
  $SCRIPT_NAME --name=gwtn-v4 --zone=us-central2-b --recreate-venv --dry-run
EOF
}

NAME='' ZONE='' PROJECT='' REPO='' REF='HEAD' SRC='' REMOTE_DIR=$DEFAULT_REMOTE_DIR
PYTHON=python3 EDITABLE=1 RECREATE_VENV=0 CHECK=0
PIP_ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --name | --name=*) take_value "$@"; NAME=$VALUE; shift "$SHIFT_BY" ;;
    --zone | --zone=*) take_value "$@"; ZONE=$VALUE; shift "$SHIFT_BY" ;;
    --project | --project=*) take_value "$@"; PROJECT=$VALUE; shift "$SHIFT_BY" ;;
    --repo | --repo=*) take_value "$@"; REPO=$VALUE; shift "$SHIFT_BY" ;;
    --ref | --ref=*) take_value "$@"; REF=$VALUE; shift "$SHIFT_BY" ;;
    --src | --src=*) take_value "$@"; SRC=$VALUE; shift "$SHIFT_BY" ;;
    --remote-dir | --remote-dir=*) take_value "$@"; REMOTE_DIR=$VALUE; shift "$SHIFT_BY" ;;
    --python | --python=*) take_value "$@"; PYTHON=$VALUE; shift "$SHIFT_BY" ;;
    --pip-arg | --pip-arg=*) take_value "$@"; PIP_ARGS+=("$VALUE"); shift "$SHIFT_BY" ;;
    --gcloud-arg | --gcloud-arg=*) take_value "$@"; GCLOUD_ARGS+=("$VALUE"); shift "$SHIFT_BY" ;;
    --no-editable | --no-editable=*) no_value "$1"; EDITABLE=0; shift ;;
    --recreate-venv | --recreate-venv=*) no_value "$1"; RECREATE_VENV=1; shift ;;
    --check | --check=*) no_value "$1"; CHECK=1; shift ;;
    --dry-run | --dry-run=*) no_value "$1"; DRY_RUN=1; shift ;;
    -*) usage_error "unknown flag: $1" ;;
    *) usage_error "unexpected argument: $1" ;;
  esac
done

require --name "$NAME" gwtn-pod
require --zone "$ZONE" us-central2-b
validate_name --name "$NAME"
validate_zone --zone "$ZONE"
if [[ -n $PROJECT ]]; then validate_project --project "$PROJECT"; fi
dir_re='^[A-Za-z0-9_.][A-Za-z0-9_./-]*$'
[[ $REMOTE_DIR =~ $dir_re && $REMOTE_DIR != *..* ]] \
  || usage_error "--remote-dir: '$REMOTE_DIR' must be a plain path relative to the home directory (letters, digits, _ . / -)"
py_re='^[A-Za-z0-9_./-]+$'
[[ $PYTHON =~ $py_re ]] || usage_error "--python: '$PYTHON' is not a plain executable name or path"
ref_re='^[A-Za-z0-9_./-]+$'
[[ $REF =~ $ref_re ]] || usage_error "--ref: '$REF' is not a branch, tag or commit"
if [[ -n $REPO && -n $SRC ]]; then
  usage_error "--repo and --src exclude each other (clone on the workers, or copy a local checkout)"
fi
if [[ -z $REPO && $REF != HEAD ]]; then
  usage_error "--ref only applies with --repo"
fi
if [[ -z $REPO ]]; then
  SRC=${SRC:-$SCRIPT_DIR/..}
  [[ -d $SRC ]] || usage_error "--src: '$SRC' is not a directory"
  SRC=$(git -C "$SRC" rev-parse --show-toplevel 2>/dev/null) \
    || usage_error "--src: '$SRC' is not inside a git checkout (or pass --repo=URL)"
  [[ -f $SRC/setup.cfg || -f $SRC/pyproject.toml ]] \
    || usage_error "--src: '$SRC' has neither setup.cfg nor pyproject.toml: not a Python project"
fi
set_location_args "$ZONE" "$PROJECT"

Q_DIR=$(quote_arg "$REMOTE_DIR")
REMOTE_TARBALL=gwtn_jax-src.tar.gz

# --- 1. the source on every worker ---------------------------------------------------
if [[ -n $REPO ]]; then
  Q_REPO=$(quote_arg "$REPO")
  tpu_ssh "$NAME" "set -e; if [ ! -d $Q_DIR/.git ]; then git clone --quiet $Q_REPO $Q_DIR; fi; git -C $Q_DIR remote set-url origin $Q_REPO; git -C $Q_DIR fetch --quiet origin $(quote_arg "$REF"); git -C $Q_DIR checkout --quiet --force --detach FETCH_HEAD; echo \"\$(hostname): $REMOTE_DIR at \$(git -C $Q_DIR rev-parse --short HEAD)\""
else
  if is_dry_run; then
    TARBALL=${TMPDIR:-/tmp}/gwtn_jax-setup.XXXXXX/$REMOTE_TARBALL
    note "would pack the git working tree of $SRC (git ls-files --cached --others --exclude-standard) into $TARBALL"
  else
    TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gwtn_jax-setup.XXXXXX")
    trap 'rm -rf "$TMP_DIR"' EXIT
    TARBALL=$TMP_DIR/$REMOTE_TARBALL
    # Tracked files that still exist, plus untracked files that git does not ignore.
    (
      cd "$SRC"
      git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        if [[ -e $f || -L $f ]]; then printf '%s\0' "$f"; fi
      done
    ) >"$TMP_DIR/files"
    [[ -s $TMP_DIR/files ]] || die "git lists no files in $SRC"
    tar -czf "$TARBALL" -C "$SRC" --null -T "$TMP_DIR/files"
    note "packed $(tr -cd '\0' <"$TMP_DIR/files" | wc -c | tr -d ' ') files of $SRC into $TARBALL ($(du -h "$TARBALL" | cut -f1))"
  fi
  run_cmd gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME:$REMOTE_TARBALL" "${LOCATION_ARGS[@]}" --worker=all
  tpu_ssh "$NAME" "set -e; mkdir -p $Q_DIR; tar -xzmf $REMOTE_TARBALL -C $Q_DIR; rm -f $REMOTE_TARBALL; echo \"\$(hostname): unpacked $REMOTE_DIR\""
fi

# --- 2. the install on every worker --------------------------------------------------
Q_PY=$(quote_arg "$PYTHON")
VENV_PKG=${PYTHON##*/}-venv
APT='sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600'
PIP_INSTALL='python -m pip install'
if [[ $EDITABLE == 1 ]]; then PIP_INSTALL="$PIP_INSTALL -e"; fi
PIP_INSTALL="$PIP_INSTALL \".[tpu]\""
if [[ ${#PIP_ARGS[@]} -gt 0 ]]; then PIP_INSTALL="$PIP_INSTALL $(quote_cmd "${PIP_ARGS[@]}")"; fi
INSTALL="set -e; cd $Q_DIR"
if [[ $RECREATE_VENV == 1 ]]; then INSTALL="$INSTALL; rm -rf .venv"; fi
INSTALL="$INSTALL; if ! $Q_PY -c \"import sys; sys.exit(sys.version_info < (3, 10))\"; then echo \"\$(hostname): gwtn_jax needs Python 3.10+ and $PYTHON is missing or older; pass --python\" >&2; exit 1; fi"
INSTALL="$INSTALL; if [ ! -x .venv/bin/python ]; then if ! $Q_PY -c \"import ensurepip\" 2>/dev/null; then $APT update -qq && $APT install -y -qq $(quote_arg "$VENV_PKG"); fi; $Q_PY -m venv .venv; fi"
INSTALL="$INSTALL; . .venv/bin/activate; python -m pip install --quiet --upgrade pip; $PIP_INSTALL; echo \"\$(hostname): installed gwtn_jax in $REMOTE_DIR/.venv\""
tpu_ssh "$NAME" "$INSTALL"

# --- 3. optional check ---------------------------------------------------------------
if [[ $CHECK == 1 ]]; then
  tpu_ssh "$NAME" "cd $Q_DIR && . .venv/bin/activate && python -c \"import jax; print(f\\\"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local, {jax.device_count()} global {jax.devices()[0].platform} devices\\\")\""
fi

note "next: $SCRIPT_DIR/run.sh --name=$NAME --zone=$ZONE${PROJECT:+ --project=$PROJECT} --config=configs/CONFIG.py --workdir=gs://BUCKET/PATH"
