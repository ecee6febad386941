#!/usr/bin/env bash
# run.sh: run a gwtn_jax config on every worker of a TPU VM or pod slice at once.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh source-path=SCRIPTDIR
. "$SCRIPT_DIR/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --name=NAME --zone=ZONE --config=CONFIG --workdir=WORKDIR [options] [-- ARGS...]

Run, on every worker at once (gcloud compute tpus tpu-vm ssh NAME --worker=all):
  cd REMOTE_DIR && . .venv/bin/activate &&
  python -m gwtn_jax.main --config=CONFIG --workdir=WORKDIR ARGS...
with JAX_COMPILATION_CACHE_DIR and TF_CPP_MIN_LOG_LEVEL set, each worker appending its
output to ~/LOG_DIR/RUN_NAME.workerN.log. In the foreground the terminal shows worker 0
(every worker with --all-output); --detach starts the run under setsid nohup and returns,
so a dropped ssh connection does not stop it. Every host of a pod runs the same command:
JAX joins them into one program. A run refuses to start on a worker where a gwtn_jax.main
is already running. After a preemption, recreate the TPU, rerun setup.sh and rerun this
with the same --workdir: the pipeline resumes from its last checkpoints.

Required:
  --name=NAME               TPU VM name (as given to create.sh)
  --zone=ZONE               its zone, e.g. us-east5-a
  --config=CONFIG           config file, relative to REMOTE_DIR (or absolute), e.g.
                            configs/fashion_mnist.py; a ":ARG" suffix is kept
  --workdir=WORKDIR         where the run writes checkpoints, metrics and its report; on a
                            multi-host slice it must be gs://BUCKET/PATH (all hosts must see
                            the same checkpoints); a relative local path is under REMOTE_DIR

Options:
  --project=PROJECT         Google Cloud project (default: gcloud's configured project)
  --accelerator-type=TYPE   the slice's type (e.g. v5p-256) to check --workdir against; if
                            not given it is looked up with 'gcloud compute tpus tpu-vm
                            describe' (not in a dry run)
  --run-name=RUN            log file prefix (default: the config's name and the local time)
  --remote-dir=DIR          the project on each worker, as given to setup.sh
                            (default $DEFAULT_REMOTE_DIR, relative to the home directory)
  --log-dir=DIR             per-worker logs, relative to the home directory unless absolute
                            (default $DEFAULT_LOG_DIR)
  --env=KEY=VALUE           extra environment variable for the run (repeatable; the value
                            is passed literally), e.g. --env=XLA_FLAGS=--xla_dump_to=/tmp/x
  --compilation-cache=DIR   JAX_COMPILATION_CACHE_DIR on each worker
                            (default \$HOME/.cache/jax_compilation_cache; a gs:// path is shared)
  --tf-log-level=N          TF_CPP_MIN_LOG_LEVEL (default 1: no INFO lines from XLA/TF)
  --detach                  start the run in the background (setsid nohup) and return
  --all-output              in the foreground, stream every worker's output, not worker 0's
  --gcloud-arg=ARG          extra flag for every gcloud command (repeatable),
                            e.g. --gcloud-arg=--internal-ip
  --dry-run                 print the commands instead of running them (also DRY_RUN=1)
  -h, --help                this help
  -- ARGS...                passed to gwtn_jax.main after --config and --workdir, e.g.
                            config overrides: -- --config.seeds='(0,1,2)'

Examples:
  $SCRIPT_NAME --name=gwtn-pod --zone=us-east5-a --accelerator-type=v5p-256 \\
    --config=configs/resnet50_imagenet.py --workdir=gs://my-bucket/gwtn/r50 --detach
  $SCRIPT_NAME --name=gwtn-v4 --zone=us-central2-b --config=configs/fashion_mnist.py:smoke \\
    --workdir=workdirs/fmnist -- --config.seeds='(0,1,2)'
  # follow worker 0's log of a detached run:
  gcloud compute tpus tpu-vm ssh gwtn-pod --zone=us-east5-a --worker=0 \\
    --command='tail -n 50 -F $DEFAULT_LOG_DIR/*.worker0.log'
EOF
}

NAME='' ZONE='' PROJECT='' CONFIG='' WORKDIR='' ACCELERATOR_TYPE='' RUN_NAME=''
REMOTE_DIR=$DEFAULT_REMOTE_DIR LOG_DIR=$DEFAULT_LOG_DIR COMPILATION_CACHE='' TF_LOG_LEVEL=1
DETACH=0 ALL_OUTPUT=0
ENVS=()
PASSTHROUGH=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --name | --name=*) take_value "$@"; NAME=$VALUE; shift "$SHIFT_BY" ;;
    --zone | --zone=*) take_value "$@"; ZONE=$VALUE; shift "$SHIFT_BY" ;;
    --project | --project=*) take_value "$@"; PROJECT=$VALUE; shift "$SHIFT_BY" ;;
    --config | --config=*) take_value "$@"; CONFIG=$VALUE; shift "$SHIFT_BY" ;;
    --workdir | --workdir=*) take_value "$@"; WORKDIR=$VALUE; shift "$SHIFT_BY" ;;
    --accelerator-type | --accelerator-type=*) take_value "$@"; ACCELERATOR_TYPE=$VALUE; shift "$SHIFT_BY" ;;
    --run-name | --run-name=*) take_value "$@"; RUN_NAME=$VALUE; shift "$SHIFT_BY" ;;
    --remote-dir | --remote-dir=*) take_value "$@"; REMOTE_DIR=$VALUE; shift "$SHIFT_BY" ;;
    --log-dir | --log-dir=*) take_value "$@"; LOG_DIR=$VALUE; shift "$SHIFT_BY" ;;
    --env | --env=*) take_value "$@"; ENVS+=("$VALUE"); shift "$SHIFT_BY" ;;
    --compilation-cache | --compilation-cache=*) take_value "$@"; COMPILATION_CACHE=$VALUE; shift "$SHIFT_BY" ;;
    --tf-log-level | --tf-log-level=*) take_value "$@"; TF_LOG_LEVEL=$VALUE; shift "$SHIFT_BY" ;;
    --gcloud-arg | --gcloud-arg=*) take_value "$@"; GCLOUD_ARGS+=("$VALUE"); shift "$SHIFT_BY" ;;
    --detach | --detach=*) no_value "$1"; DETACH=1; shift ;;
    --all-output | --all-output=*) no_value "$1"; ALL_OUTPUT=1; shift ;;
    --dry-run | --dry-run=*) no_value "$1"; DRY_RUN=1; shift ;;
    --) shift; PASSTHROUGH=("$@"); break ;;
    -*) usage_error "unknown flag: $1 (arguments for gwtn_jax.main go after --)" ;;
    *) usage_error "unexpected argument: $1 (arguments for gwtn_jax.main go after --)" ;;
  esac
done

require --name "$NAME" gwtn-pod
require --zone "$ZONE" us-central2-b
require --config "$CONFIG" configs/fashion_mnist.py
require --workdir "$WORKDIR" gs://my-bucket/gwtn/run1
validate_name --name "$NAME"
validate_zone --zone "$ZONE"
if [[ -n $PROJECT ]]; then validate_project --project "$PROJECT"; fi
config_re='^[^:]+\.py(:.*)?$'
[[ $CONFIG =~ $config_re ]] || usage_error "--config: '$CONFIG' is not a Python config file (path ending in .py, optionally :ARG)"
if [[ $WORKDIR == gs:* ]] && ! is_gcs_path "$WORKDIR"; then
  usage_error "--workdir: '$WORKDIR' is not a valid gs://BUCKET/PATH"
fi
dir_re='^[A-Za-z0-9_.][A-Za-z0-9_./-]*$'
[[ $REMOTE_DIR =~ $dir_re && $REMOTE_DIR != *..* ]] \
  || usage_error "--remote-dir: '$REMOTE_DIR' must be a plain path relative to the home directory (letters, digits, _ . / -)"
log_re='^/?[A-Za-z0-9_.][A-Za-z0-9_./-]*$'
[[ $LOG_DIR =~ $log_re ]] || usage_error "--log-dir: '$LOG_DIR' must be a plain path (letters, digits, _ . / -)"
level_re='^[0-3]$'
[[ $TF_LOG_LEVEL =~ $level_re ]] || usage_error "--tf-log-level: '$TF_LOG_LEVEL' is not 0, 1, 2 or 3"
env_re='^[A-Za-z_][A-Za-z0-9_]*='
for kv in ${ENVS[@]+"${ENVS[@]}"}; do
  [[ $kv =~ $env_re ]] || usage_error "--env: '$kv' is not KEY=VALUE"
done
if [[ -z $RUN_NAME ]]; then
  base=${CONFIG%%:*}
  base=${base##*/}
  RUN_NAME=${base%.py}-$(date +%Y%m%d-%H%M%S)
fi
run_re='^[A-Za-z0-9_.-]+$'
[[ $RUN_NAME =~ $run_re ]] || usage_error "--run-name: '$RUN_NAME' may only hold letters, digits, _ . -"
set_location_args "$ZONE" "$PROJECT"

# The workdir check: a multi-host slice needs a gs:// workdir.
if [[ -n $ACCELERATOR_TYPE ]]; then
  validate_accelerator_type --accelerator-type "$ACCELERATOR_TYPE"
elif ! is_gcs_path "$WORKDIR"; then
  if is_dry_run; then
    note "warning: local --workdir and no --accelerator-type: a real run looks the type up and refuses a multi-host slice"
  else
    describe=(gcloud compute tpus tpu-vm describe "$NAME" "${LOCATION_ARGS[@]}" --format='value(acceleratorType)')
    printf '+ %s\n' "$(quote_cmd "${describe[@]}")" >&2
    ACCELERATOR_TYPE=$("${describe[@]}") || die "could not look up the accelerator type of $NAME (pass --accelerator-type)"
    ACCELERATOR_TYPE=${ACCELERATOR_TYPE##*/}
    [[ -n $ACCELERATOR_TYPE ]] || die "$NAME reports no accelerator type; pass --accelerator-type"
    validate_accelerator_type "--accelerator-type (looked up)" "$ACCELERATOR_TYPE"
  fi
fi
if [[ -n $ACCELERATOR_TYPE ]]; then
  require_gcs_workdir_for_multihost --workdir "$WORKDIR" "$ACCELERATOR_TYPE"
fi
if [[ -f $SCRIPT_DIR/../setup.cfg && $CONFIG != /* && ! -f $SCRIPT_DIR/../${CONFIG%%:*} ]]; then
  note "warning: ${CONFIG%%:*} is not in this checkout; it must exist under ~/$REMOTE_DIR on the workers"
fi

# --- the command every worker runs ---------------------------------------------------
MAIN=(python -m gwtn_jax.main --config="$CONFIG" --workdir="$WORKDIR" ${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"})
Q_MAIN=$(quote_cmd "${MAIN[@]}")
if [[ $LOG_DIR == /* ]]; then Q_LOG_DIR=$(quote_arg "$LOG_DIR"); else Q_LOG_DIR="\$HOME/$(quote_arg "$LOG_DIR")"; fi
if [[ -n $COMPILATION_CACHE ]]; then
  Q_CACHE=$(quote_arg "$COMPILATION_CACHE")
else
  # shellcheck disable=SC2016  # $HOME is expanded on the worker
  Q_CACHE='$HOME/.cache/jax_compilation_cache'
fi
EXPORTS="export JAX_COMPILATION_CACHE_DIR=$Q_CACHE TF_CPP_MIN_LOG_LEVEL=$TF_LOG_LEVEL"
for kv in ${ENVS[@]+"${ENVS[@]}"}; do
  EXPORTS="$EXPORTS ${kv%%=*}=$(quote_arg "${kv#*=}")"
done
METADATA='http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number'

# W: this worker's number from the TPU VM metadata (the hostname if that fails).
R="set -eo pipefail; W=\$(curl -sf -m 5 -H Metadata-Flavor:Google $METADATA) || W=\$(hostname)"
R="$R; mkdir -p $Q_LOG_DIR; LOG=$Q_LOG_DIR/$RUN_NAME.worker\$W.log"
R="$R; cd $(quote_arg "$REMOTE_DIR"); . .venv/bin/activate; $EXPORTS"
R="$R; if pgrep -f \"^[^ ]*python[0-9.]* -m gwtn_jax[.]main( |\$)\" >/dev/null; then echo \"worker \$W (\$(hostname)): a gwtn_jax.main run is already running here (see pgrep -af gwtn_jax.main); stop it first\" >&2; exit 1; fi"
R="$R; echo \"== \$(date -u +%Y-%m-%dT%H:%M:%SZ) worker \$W on \$(hostname): $RUN_NAME\" >>\"\$LOG\""
if [[ $DETACH == 1 ]]; then
  R="$R; setsid nohup $Q_MAIN >>\"\$LOG\" 2>&1 </dev/null & echo \"worker \$W (\$(hostname)): started pid \$!, log \$LOG\""
elif [[ $ALL_OUTPUT == 1 ]]; then
  R="$R; $Q_MAIN 2>&1 | tee -a \"\$LOG\""
else
  # Worker 0 (or a worker whose number is unknown) streams; the others only log.
  R="$R; status=0; case \$W in 0 | *[!0-9]*) $Q_MAIN 2>&1 | tee -a \"\$LOG\" || status=\$? ;; *) $Q_MAIN >>\"\$LOG\" 2>&1 || status=\$? ;; esac"
  R="$R; if [ \$status -ne 0 ]; then echo \"worker \$W (\$(hostname)): exit status \$status, see \$LOG\" >&2; fi; exit \$status"
fi

tpu_ssh "$NAME" "$R"

LOG_HINT="$LOG_DIR/$RUN_NAME.worker0.log"
if [[ $DETACH == 1 ]]; then
  note "detached; follow worker 0 with:"
  note "  $(quote_cmd gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION_ARGS[@]}" --worker=0 --command="tail -n 50 -F $LOG_HINT")"
fi
note "logs: ~/$LOG_HINT (one per worker); results: $WORKDIR (fetch.sh --workdir=$WORKDIR)"
