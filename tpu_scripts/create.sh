#!/usr/bin/env bash
# create.sh: create a Cloud TPU VM or pod slice for gwtn_jax (see tpu_scripts/README.md).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh source-path=SCRIPTDIR
. "$SCRIPT_DIR/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --name=NAME --zone=ZONE --accelerator-type=TYPE [options] [-- GCLOUD_FLAGS...]

Create a Cloud TPU VM or pod slice, directly with
  gcloud compute tpus tpu-vm create NAME ...
or, with --queued, as a queued resource (the node id is NAME too) that waits until
the capacity is there:
  gcloud compute tpus queued-resources create NAME --node-id=NAME ...
after which this script polls the queued resource until it is ACTIVE.

Required:
  --name=NAME               TPU (and queued resource) name: lowercase letters, digits, hyphens
  --zone=ZONE               zone, e.g. us-central2-b (v4), us-east5-a (v5p), us-west4-a (v5e)
  --accelerator-type=TYPE   matching $ACCELERATOR_TYPE_RE,
                            e.g. v4-8, v5litepod-16, v5p-256, v6e-8; a size above 8 is a
                            multi-host pod slice

Options:
  --runtime-version=VER     TPU software version; default by generation:
                            v2/v3/v4: tpu-ubuntu2204-base, v5litepod: v2-alpha-tpuv5-lite,
                            v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e
  --project=PROJECT         Google Cloud project (default: gcloud's configured project)
  --spot                    Spot capacity: cheaper, may be preempted at any time
  --preemptible             legacy preemptible TPU VM (not with --queued: use --spot there)
  --reserved                use the project's reserved capacity
  --queued                  create a queued resource and wait for it to become ACTIVE
  --no-wait                 with --queued: return once the request is made
  --timeout=SECONDS         with --queued: give up waiting after SECONDS (default 0: never)
  --poll-interval=SECONDS   with --queued: seconds between state checks (default 30)
  --gcloud-arg=ARG          extra flag for every gcloud command (repeatable),
                            e.g. --gcloud-arg=--impersonate-service-account=SA
  --dry-run                 print the gcloud commands instead of running them (also DRY_RUN=1)
  -h, --help                this help
  -- GCLOUD_FLAGS...        passed on to the create command, e.g. -- --network=my-net

Examples:
  $SCRIPT_NAME --name=gwtn-v4 --zone=us-central2-b --accelerator-type=v4-8
  $SCRIPT_NAME --name=gwtn-pod --zone=us-east5-a --accelerator-type=v5p-256 --queued --spot
  $SCRIPT_NAME --name=gwtn-v5e --zone=us-west4-a --accelerator-type=v5litepod-16 --dry-run
EOF
}

NAME='' ZONE='' ACCELERATOR_TYPE='' RUNTIME_VERSION='' PROJECT=''
SPOT=0 PREEMPTIBLE=0 RESERVED=0 QUEUED=0 WAIT=1 TIMEOUT=0 POLL_INTERVAL=30
EXTRA=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --name | --name=*) take_value "$@"; NAME=$VALUE; shift "$SHIFT_BY" ;;
    --zone | --zone=*) take_value "$@"; ZONE=$VALUE; shift "$SHIFT_BY" ;;
    --accelerator-type | --accelerator-type=*) take_value "$@"; ACCELERATOR_TYPE=$VALUE; shift "$SHIFT_BY" ;;
    --runtime-version | --runtime-version=*) take_value "$@"; RUNTIME_VERSION=$VALUE; shift "$SHIFT_BY" ;;
    --project | --project=*) take_value "$@"; PROJECT=$VALUE; shift "$SHIFT_BY" ;;
    --timeout | --timeout=*) take_value "$@"; validate_nonneg_int --timeout "$VALUE"; TIMEOUT=$VALUE; shift "$SHIFT_BY" ;;
    --poll-interval | --poll-interval=*) take_value "$@"; validate_positive_int --poll-interval "$VALUE"; POLL_INTERVAL=$VALUE; shift "$SHIFT_BY" ;;
    --gcloud-arg | --gcloud-arg=*) take_value "$@"; GCLOUD_ARGS+=("$VALUE"); shift "$SHIFT_BY" ;;
    --spot | --spot=*) no_value "$1"; SPOT=1; shift ;;
    --preemptible | --preemptible=*) no_value "$1"; PREEMPTIBLE=1; shift ;;
    --reserved | --reserved=*) no_value "$1"; RESERVED=1; shift ;;
    --queued | --queued=*) no_value "$1"; QUEUED=1; shift ;;
    --no-wait | --no-wait=*) no_value "$1"; WAIT=0; shift ;;
    --dry-run | --dry-run=*) no_value "$1"; DRY_RUN=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) usage_error "unknown flag: $1" ;;
    *) usage_error "unexpected argument: $1" ;;
  esac
done

require --name "$NAME" gwtn-pod
require --zone "$ZONE" us-central2-b
require --accelerator-type "$ACCELERATOR_TYPE" v4-8
validate_name --name "$NAME"
validate_zone --zone "$ZONE"
validate_accelerator_type --accelerator-type "$ACCELERATOR_TYPE"
if [[ -n $PROJECT ]]; then validate_project --project "$PROJECT"; fi
if [[ $SPOT == 1 && $PREEMPTIBLE == 1 ]]; then
  usage_error "--spot and --preemptible exclude each other"
fi
if [[ $RESERVED == 1 && ($SPOT == 1 || $PREEMPTIBLE == 1) ]]; then
  usage_error "--reserved excludes --spot and --preemptible"
fi
if [[ $QUEUED == 1 && $PREEMPTIBLE == 1 ]]; then
  usage_error "--preemptible is not available with --queued (queued resources take --spot)"
fi
if [[ $QUEUED == 0 && $WAIT == 0 ]]; then
  usage_error "--no-wait only applies with --queued"
fi
if [[ -z $RUNTIME_VERSION ]]; then
  RUNTIME_VERSION=$(default_runtime_version "$ACCELERATOR_TYPE")
fi
set_location_args "$ZONE" "$PROJECT"

CAPACITY=()
if [[ $SPOT == 1 ]]; then CAPACITY=(--spot); fi
if [[ $PREEMPTIBLE == 1 ]]; then CAPACITY=(--preemptible); fi
if [[ $RESERVED == 1 ]]; then CAPACITY=(--reserved); fi

HOSTS=$(tpu_hosts "$ACCELERATOR_TYPE")
note "$ACCELERATOR_TYPE: $HOSTS host(s), runtime $RUNTIME_VERSION"

if [[ $QUEUED == 0 ]]; then
  run_cmd gcloud compute tpus tpu-vm create "$NAME" "${LOCATION_ARGS[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
    ${CAPACITY[@]+"${CAPACITY[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
else
  run_cmd gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" "${LOCATION_ARGS[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" \
    ${CAPACITY[@]+"${CAPACITY[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
  DESCRIBE=(gcloud compute tpus queued-resources describe "$NAME" "${LOCATION_ARGS[@]}" --format='value(state.state)')
  if [[ $WAIT == 0 ]]; then
    note "not waiting; check the state with:"
    note "  $(quote_cmd "${DESCRIBE[@]}")"
  elif is_dry_run; then
    note "then, every ${POLL_INTERVAL}s until the state is ACTIVE (fails on FAILED or SUSPENDED):"
    run_cmd "${DESCRIBE[@]}"
  else
    printf '+ %s  # every %ss until ACTIVE\n' "$(quote_cmd "${DESCRIBE[@]}")" "$POLL_INTERVAL" >&2
    start=$SECONDS
    last=''
    while :; do
      state=$("${DESCRIBE[@]}") || die "could not describe queued resource $NAME"
      if [[ $state != "$last" ]]; then
        note "$(date '+%H:%M:%S') queued resource $NAME: ${state:-unknown}"
        last=$state
      fi
      case $state in
        ACTIVE) break ;;
        FAILED | SUSPENDING | SUSPENDED)
          die "queued resource $NAME is $state; see: $(quote_cmd gcloud compute tpus queued-resources describe "$NAME" "${LOCATION_ARGS[@]}")" ;;
      esac
      if [[ $TIMEOUT -gt 0 && $((SECONDS - start)) -ge $TIMEOUT ]]; then
        die "queued resource $NAME is still $state after ${TIMEOUT}s; it stays queued: wait longer or delete it with delete.sh --queued"
      fi
      sleep "$POLL_INTERVAL"
    done
  fi
fi

note "next: $SCRIPT_DIR/setup.sh --name=$NAME --zone=$ZONE${PROJECT:+ --project=$PROJECT}"
