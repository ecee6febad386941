# shellcheck shell=bash
#
# common.sh: helpers shared by the tpu_scripts (create, setup, run, fetch, delete).
# Sourced, never run. Written for bash 3.2+ (so no associative arrays, no mapfile, and
# empty arrays are expanded as ${a[@]+"${a[@]}"} to keep `set -u` happy on old bash).
#
# Conventions every script follows:
#   * usage errors print ONE line "SCRIPT: error: --flag: what is wrong (see SCRIPT --help)"
#     on stderr and exit 2; runtime failures exit 1 (or the failing command's status);
#   * every external command goes through run_cmd, which prints it, quoted and prefixed
#     with "+ ", and runs it unless this is a dry run (--dry-run, or DRY_RUN=1 in the
#     environment). In a dry run the plan goes to stdout (so `X.sh --dry-run ... > plan.sh`
#     gives the commands); in a real run the "+ " lines go to stderr like `set -x`.

SCRIPT_NAME=${0##*/}

# Defaults shared by setup.sh, run.sh and fetch.sh: where the project lives on every
# worker, relative to the remote home, and where run.sh writes one log per worker.
# shellcheck disable=SC2034
DEFAULT_REMOTE_DIR=gwtn_jax
# shellcheck disable=SC2034
DEFAULT_LOG_DIR=gwtn_logs
# The accelerator types these scripts accept.
ACCELERATOR_TYPE_RE='^(v2|v3|v4|v5litepod|v5p|v6e)-[0-9]+$'

# --- messages -----------------------------------------------------------------------

# usage_error MSG...: one-line usage error naming the flag, exit status 2.
usage_error() {
  printf '%s: error: %s (see %s --help)\n' "$SCRIPT_NAME" "$*" "$SCRIPT_NAME" >&2
  exit 2
}

# die MSG...: runtime failure, exit status 1.
die() {
  printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
  exit 1
}

# is_dry_run: true for --dry-run or DRY_RUN set to anything but "", 0, false or no.
is_dry_run() {
  case ${DRY_RUN:-0} in
    '' | 0 | false | no) return 1 ;;
    *) return 0 ;;
  esac
}

# note MSG...: a "# " comment line, part of the plan: stdout in a dry run, stderr otherwise.
note() {
  if is_dry_run; then
    printf '# %s\n' "$*"
  else
    printf '# %s\n' "$*" >&2
  fi
}

# --- quoting and running ------------------------------------------------------------

# quote_arg ARG: ARG as a POSIX shell word: bare when it is made only of safe characters,
# otherwise in single quotes. "--flag=value" keeps the flag bare and quotes the value only.
quote_arg() {
  local arg=$1 sq="'" esc="'\\''"
  case $arg in
    --*=*)
      local flag=${arg%%=*}
      case $flag in
        *[!A-Za-z0-9_.-]*) ;;
        *)
          printf '%s=' "$flag"
          quote_arg "${arg#*=}"
          return 0
          ;;
      esac
      ;;
  esac
  case $arg in
    '') printf "''" ;;
    *[!A-Za-z0-9_@%+=:,./-]*) printf "'%s'" "${arg//$sq/$esc}" ;;
    *) printf '%s' "$arg" ;;
  esac
}

# quote_cmd ARGS...: the whole command line, each word quoted by quote_arg.
quote_cmd() {
  local out='' word
  for word in "$@"; do
    out="$out${out:+ }$(quote_arg "$word")"
  done
  printf '%s' "$out"
}

# run_cmd CMD ARGS...: print "+ CMD ARGS" (copy-pasteable) and run it unless dry run.
run_cmd() {
  if is_dry_run; then
    printf '+ %s\n' "$(quote_cmd "$@")"
    return 0
  fi
  printf '+ %s\n' "$(quote_cmd "$@")" >&2
  "$@"
}

# --- argument helpers ---------------------------------------------------------------

# take_value "$@": for the flag in $1, which needs a value, set VALUE and SHIFT_BY.
# Accepts "--flag value" and "--flag=value"; a separate value may not start with "-"
# (so a forgotten value is not silently replaced by the next flag): write --flag=-x.
VALUE=''
SHIFT_BY=1
# shellcheck disable=SC2034  # VALUE and SHIFT_BY are read by the caller
take_value() {
  case $1 in
    --*=*)
      VALUE=${1#*=}
      SHIFT_BY=1
      ;;
    *)
      if [[ $# -lt 2 ]]; then
        usage_error "$1 needs a value"
      fi
      case $2 in
        -*) usage_error "$1 needs a value (got '$2'; write $1=$2 if that is the value)" ;;
      esac
      VALUE=$2
      SHIFT_BY=2
      ;;
  esac
}

# no_value FLAG: reject "--flag=value" for a boolean flag.
no_value() {
  case $1 in
    *=*) usage_error "${1%%=*} takes no value" ;;
  esac
}

# require FLAG VALUE [EXAMPLE]: usage error unless VALUE is set.
require() {
  if [[ -z $2 ]]; then
    usage_error "$1 is required${3:+ (e.g. $1=$3)}"
  fi
}

# --- validation ---------------------------------------------------------------------

validate_name() {  # validate_name FLAG VALUE
  local re='^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$'
  [[ $2 =~ $re ]] || usage_error "$1: '$2' is not a valid TPU name (lowercase letters, digits and hyphens, starting with a letter, at most 63 characters)"
}

validate_zone() {  # validate_zone FLAG VALUE
  local re='^[a-z]+-[a-z]+[0-9]+-[a-z]$'
  [[ $2 =~ $re ]] || usage_error "$1: '$2' is not a zone like us-central2-b or europe-west4-a"
}

validate_project() {  # validate_project FLAG VALUE
  local re='^[a-z][-a-z0-9.:]{4,61}[a-z0-9]$'
  [[ $2 =~ $re ]] || usage_error "$1: '$2' is not a Google Cloud project id"
}

validate_accelerator_type() {  # validate_accelerator_type FLAG VALUE
  local re=$ACCELERATOR_TYPE_RE
  [[ $2 =~ $re ]] || usage_error "$1: '$2' does not match $ACCELERATOR_TYPE_RE (e.g. v4-8, v5litepod-16, v5p-256)"
  [[ $((10#${2##*-})) -gt 0 ]] || usage_error "$1: '$2' has a zero size"
}

validate_positive_int() {  # validate_positive_int FLAG VALUE
  local re='^[0-9]+$'
  [[ $2 =~ $re && $((10#$2)) -gt 0 ]] || usage_error "$1: '$2' is not a positive integer"
}

validate_nonneg_int() {  # validate_nonneg_int FLAG VALUE
  local re='^[0-9]+$'
  [[ $2 =~ $re ]] || usage_error "$1: '$2' is not a non-negative integer"
}

is_gcs_path() {  # is_gcs_path VALUE
  local re='^gs://[a-z0-9][-a-z0-9_.]*[a-z0-9](/.*)?$'
  [[ $1 =~ $re ]]
}

# --- TPU facts ----------------------------------------------------------------------

# tpu_hosts TYPE: the number of TPU VM hosts (workers) of an accelerator type.
# The size suffix counts TensorCores for v2/v3/v4/v5p (8 per host: 4 chips of 2 cores)
# and chips for v5litepod/v6e (up to 8 on one host, 4 per host in multi-host slices).
# So on every generation a slice is multi-host iff its size is > 8.
tpu_hosts() {
  local gen=${1%-*} size=$((10#${1##*-}))
  if [[ $size -le 8 ]]; then
    echo 1
    return 0
  fi
  case $gen in
    v5litepod | v6e) echo $(((size + 3) / 4)) ;;
    *) echo $(((size + 7) / 8)) ;;
  esac
}

# default_runtime_version TYPE: the TPU software version for a generation.
default_runtime_version() {
  case ${1%-*} in
    v2 | v3 | v4) echo tpu-ubuntu2204-base ;;
    v5litepod) echo v2-alpha-tpuv5-lite ;;
    v5p) echo v2-alpha-tpuv5 ;;
    v6e) echo v2-alpha-tpuv6e ;;
    *) die "no default runtime version for '$1'" ;;
  esac
}

# require_gcs_workdir_for_multihost FLAG WORKDIR TYPE: a multi-host slice needs gs://.
require_gcs_workdir_for_multihost() {
  local hosts
  hosts=$(tpu_hosts "$3")
  if [[ $hosts -gt 1 ]] && ! is_gcs_path "$2"; then
    usage_error "$1: '$2' is not a gs:// path, and $3 is a multi-host slice ($hosts hosts): every host must see the same checkpoints, so on a pod the workdir must be a GCS bucket path such as gs://my-bucket/gwtn/run1 (a local workdir only works on a single-host TPU VM)"
  fi
}

# --- gcloud -------------------------------------------------------------------------

# set_location_args ZONE PROJECT: LOCATION_ARGS=(--zone=... [--project=...]) plus every
# --gcloud-arg collected in GCLOUD_ARGS, appended to each gcloud command.
LOCATION_ARGS=()
GCLOUD_ARGS=()
set_location_args() {
  LOCATION_ARGS=(--zone="$1")
  if [[ -n $2 ]]; then
    LOCATION_ARGS+=(--project="$2")
  fi
  LOCATION_ARGS+=(${GCLOUD_ARGS[@]+"${GCLOUD_ARGS[@]}"})
}

# tpu_ssh NAME COMMAND: run COMMAND on every worker of TPU VM NAME at once.
tpu_ssh() {
  run_cmd gcloud compute tpus tpu-vm ssh "$1" "${LOCATION_ARGS[@]}" --worker=all --command="$2"
}
