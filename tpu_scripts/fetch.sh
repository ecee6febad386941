#!/usr/bin/env bash
# fetch.sh: copy a run's results (its workdir) back to this machine.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh source-path=SCRIPTDIR
. "$SCRIPT_DIR/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --workdir=WORKDIR [--dest=DIR] [options]

Copy a run's workdir (checkpoints, metrics, the run report) to a local folder:
  gs://... workdir:  gcloud storage rsync --recursive WORKDIR DEST
                     (gsutil -m rsync -r WORKDIR DEST with --tool=gsutil); run it again
                     to fetch only what changed, also while the run is going
  local workdir of a single-host TPU VM (needs --name and --zone):
                     gcloud compute tpus tpu-vm scp --recurse --worker=0 NAME:PATH DEST

Required:
  --workdir=WORKDIR       as given to run.sh: gs://BUCKET/PATH, or a path on the TPU VM
                          (relative to REMOTE_DIR, as run.sh runs there)

Options:
  --dest=DIR              local folder (default results/LAST_PART_OF_WORKDIR)
  --exclude=REGEX         with gs://: skip objects whose path matches REGEX, e.g.
                          --exclude='.*/checkpoints/.*' for metrics and report only
  --delete                with gs://: also delete local files that are not in WORKDIR
  --tool=gcloud|gsutil    with gs://: which rsync to use (default gcloud)
  --name=NAME             with a local workdir: the TPU VM
  --zone=ZONE             with a local workdir: its zone
  --project=PROJECT       Google Cloud project (default: gcloud's configured project)
  --remote-dir=DIR        with a local workdir: the project on the TPU VM (default $DEFAULT_REMOTE_DIR)
  --gcloud-arg=ARG        extra flag for the gcloud command (repeatable)
  --dry-run               print the commands instead of running them (also DRY_RUN=1)
  -h, --help              this help

Examples:
  $SCRIPT_NAME --workdir=gs://my-bucket/gwtn/r50 --dest=results/r50
  $SCRIPT_NAME --workdir=gs://my-bucket/gwtn/r50 --exclude='.*checkpoint.*' --tool=gsutil
  $SCRIPT_NAME --workdir=workdirs/fmnist --name=gwtn-v4 --zone=us-central2-b
EOF
}

WORKDIR='' DEST='' EXCLUDE='' DELETE=0 TOOL=gcloud NAME='' ZONE='' PROJECT='' REMOTE_DIR=$DEFAULT_REMOTE_DIR
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --workdir | --workdir=*) take_value "$@"; WORKDIR=$VALUE; shift "$SHIFT_BY" ;;
    --dest | --dest=*) take_value "$@"; DEST=$VALUE; shift "$SHIFT_BY" ;;
    --exclude | --exclude=*) take_value "$@"; EXCLUDE=$VALUE; shift "$SHIFT_BY" ;;
    --tool | --tool=*) take_value "$@"; TOOL=$VALUE; shift "$SHIFT_BY" ;;
    --name | --name=*) take_value "$@"; NAME=$VALUE; shift "$SHIFT_BY" ;;
    --zone | --zone=*) take_value "$@"; ZONE=$VALUE; shift "$SHIFT_BY" ;;
    --project | --project=*) take_value "$@"; PROJECT=$VALUE; shift "$SHIFT_BY" ;;
    --remote-dir | --remote-dir=*) take_value "$@"; REMOTE_DIR=$VALUE; shift "$SHIFT_BY" ;;
    --gcloud-arg | --gcloud-arg=*) take_value "$@"; GCLOUD_ARGS+=("$VALUE"); shift "$SHIFT_BY" ;;
    --delete | --delete=*) no_value "$1"; DELETE=1; shift ;;
    --dry-run | --dry-run=*) no_value "$1"; DRY_RUN=1; shift ;;
    -*) usage_error "unknown flag: $1" ;;
    *) usage_error "unexpected argument: $1" ;;
  esac
done

require --workdir "$WORKDIR" gs://my-bucket/gwtn/run1
case $TOOL in
  gcloud | gsutil) ;;
  *) usage_error "--tool: '$TOOL' is not gcloud or gsutil" ;;
esac
if [[ -n $PROJECT ]]; then validate_project --project "$PROJECT"; fi
if [[ -z $DEST ]]; then
  last=${WORKDIR%/}
  last=${last##*/}
  [[ -n $last && $last != gs: ]] || usage_error "--dest is required for workdir '$WORKDIR'"
  DEST=results/$last
fi

if [[ $WORKDIR == gs:* ]]; then
  is_gcs_path "$WORKDIR" || usage_error "--workdir: '$WORKDIR' is not a valid gs://BUCKET/PATH"
  if [[ -n $NAME || -n $ZONE ]]; then
    usage_error "--name/--zone are for a local workdir on the TPU VM; a gs:// workdir is read directly"
  fi
  SRC=${WORKDIR%/}
  run_cmd mkdir -p "$DEST"
  if [[ $TOOL == gcloud ]]; then
    cmd=(gcloud storage rsync --recursive)
    if [[ -n $EXCLUDE ]]; then cmd+=(--exclude="$EXCLUDE"); fi
    if [[ $DELETE == 1 ]]; then cmd+=(--delete-unmatched-destination-objects); fi
    if [[ -n $PROJECT ]]; then cmd+=(--project="$PROJECT"); fi
    cmd+=(${GCLOUD_ARGS[@]+"${GCLOUD_ARGS[@]}"})
  else
    cmd=(gsutil -m rsync -r)
    if [[ -n $EXCLUDE ]]; then cmd+=(-x "$EXCLUDE"); fi
    if [[ $DELETE == 1 ]]; then cmd+=(-d); fi
  fi
  run_cmd "${cmd[@]}" "$SRC" "$DEST"
else
  if [[ -n $EXCLUDE || $DELETE == 1 || $TOOL != gcloud ]]; then
    usage_error "--exclude, --delete and --tool only apply to a gs:// workdir"
  fi
  [[ -n $NAME ]] || usage_error "--name is required for a local workdir, which is on the TPU VM (or pass a gs:// --workdir)"
  [[ -n $ZONE ]] || usage_error "--zone is required for a local workdir, which is on the TPU VM (or pass a gs:// --workdir)"
  validate_name --name "$NAME"
  validate_zone --zone "$ZONE"
  set_location_args "$ZONE" "$PROJECT"
  if [[ $WORKDIR == /* ]]; then REMOTE_PATH=${WORKDIR%/}; else REMOTE_PATH=$REMOTE_DIR/${WORKDIR%/}; fi
  # scp -r copies INTO an existing folder, so the destination must not exist yet.
  if [[ -e $DEST ]]; then
    die "--dest: '$DEST' exists, and scp would copy into it; remove it or choose another --dest"
  fi
  run_cmd mkdir -p "$(dirname "$DEST")"
  run_cmd gcloud compute tpus tpu-vm scp --recurse "$NAME:$REMOTE_PATH" "$DEST" "${LOCATION_ARGS[@]}" --worker=0
fi
if ! is_dry_run; then note "fetched $WORKDIR into $DEST"; fi
