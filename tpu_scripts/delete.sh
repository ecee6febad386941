#!/usr/bin/env bash
# delete.sh: delete a TPU VM, or a queued resource and its TPU.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh source-path=SCRIPTDIR
. "$SCRIPT_DIR/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --name=NAME --zone=ZONE [--queued] [--yes] [options]

Delete a TPU VM:
  gcloud compute tpus tpu-vm delete NAME --zone=ZONE --quiet
or, with --queued, the queued resource NAME and the TPU it holds:
  gcloud compute tpus queued-resources delete NAME --zone=ZONE --force --quiet
Asks for confirmation (reading y from standard input) unless --yes. Whatever is on the
workers' disks (logs, a local workdir) goes with them; a gs:// workdir stays.

Required:
  --name=NAME             TPU VM (or queued resource) name
  --zone=ZONE             its zone

Options:
  --queued                delete the queued resource NAME (as made by create.sh --queued)
  --yes                   do not ask for confirmation
  --project=PROJECT       Google Cloud project (default: gcloud's configured project)
  --gcloud-arg=ARG        extra flag for the gcloud command (repeatable), e.g. --gcloud-arg=--async
  --dry-run               print the command instead of running it (also DRY_RUN=1)
  -h, --help              this help

Examples:
  $SCRIPT_NAME --name=gwtn-v4 --zone=us-central2-b
  $SCRIPT_NAME --name=gwtn-pod --zone=us-east5-a --queued --yes
EOF
}

NAME='' ZONE='' PROJECT='' QUEUED=0 YES=0
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --name | --name=*) take_value "$@"; NAME=$VALUE; shift "$SHIFT_BY" ;;
    --zone | --zone=*) take_value "$@"; ZONE=$VALUE; shift "$SHIFT_BY" ;;
    --project | --project=*) take_value "$@"; PROJECT=$VALUE; shift "$SHIFT_BY" ;;
    --gcloud-arg | --gcloud-arg=*) take_value "$@"; GCLOUD_ARGS+=("$VALUE"); shift "$SHIFT_BY" ;;
    --queued | --queued=*) no_value "$1"; QUEUED=1; shift ;;
    --yes | --yes=* | -y) no_value "$1"; YES=1; shift ;;
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
set_location_args "$ZONE" "$PROJECT"

if [[ $QUEUED == 1 ]]; then
  WHAT="queued resource $NAME and its TPU"
  CMD=(gcloud compute tpus queued-resources delete "$NAME" "${LOCATION_ARGS[@]}" --force --quiet)
else
  WHAT="TPU VM $NAME"
  CMD=(gcloud compute tpus tpu-vm delete "$NAME" "${LOCATION_ARGS[@]}" --quiet)
fi

if [[ $YES == 0 ]] && ! is_dry_run; then
  printf 'Delete %s in %s%s? [y/N] ' "$WHAT" "$ZONE" "${PROJECT:+ (project $PROJECT)}" >&2
  answer=''
  if ! IFS= read -r answer; then
    printf '\n' >&2
    die "no answer on standard input; pass --yes to delete without confirmation"
  fi
  case $answer in
    y | Y | yes | YES | Yes) ;;
    *) die "not deleted" ;;
  esac
fi
run_cmd "${CMD[@]}"
