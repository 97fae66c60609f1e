#!/usr/bin/env bash
# Thin wrapper for running `batchpredict predict` from cron or a systemd timer.
#
#   /opt/batchpredict/bin/predict.sh --model m.keras --input_file in.csv --output_file out.csv
#
# It finds batchpredict without relying on the caller's environment (cron runs with
# PATH=/usr/bin:/bin and nothing activated), in this order:
#   1. "$BATCHPREDICT_PYTHON" -m batchpredict, when BATCHPREDICT_PYTHON is set (a path to,
#      or the name of, a python that has batchpredict installed);
#   2. the project's virtualenv next to this bin/ directory: ../.venv/bin/batchpredict
#      (this script's own location is resolved through symlinks first);
#   3. batchpredict on PATH.
# If none is found, or the python it would use (BATCHPREDICT_PYTHON's, the virtualenv's)
# cannot import batchpredict, it exits 127 with a message on stderr naming that python:
# one JSON line when batchpredict's own lines would be JSON (--log_format json, or
# BATCHPREDICT_LOG_FORMAT=json, or auto with stderr not a terminal), else plain text.
#
# If BATCHPREDICT_LOCK_FILE is set (and not empty) and no --lock_file/--lock-file option is
# given, `--lock_file "$BATCHPREDICT_LOCK_FILE"` is added so overlapping runs exit 75.
#
# All other arguments go to `batchpredict predict` unchanged, and batchpredict is exec'ed,
# so its exit status (0, 3, 65, 66, 73, 74, 75, 78, ...) is this script's exit status.

# `sh predict.sh` would fail obscurely at `set -o pipefail`; this test is POSIX on purpose.
# shellcheck disable=SC2292
if [ -z "${BASH_VERSION:-}" ]; then
    echo "predict.sh: run this script with bash, not sh" >&2
    exit 2
fi
set -euo pipefail

prog="predict.sh"
unset CDPATH

# Resolve this script's real location, following symlinks one hop at a time (portable:
# no GNU `readlink -f`, which BSD/macOS lacks).
source_path="${BASH_SOURCE[0]}"
while [[ -L "$source_path" ]]; do
    link_dir="$(cd -P -- "$(dirname -- "$source_path")" && pwd)"
    link_target="$(readlink -- "$source_path")"
    case "$link_target" in
        /*) source_path="$link_target" ;;
        *) source_path="$link_dir/$link_target" ;;
    esac
done
bin_dir="$(cd -P -- "$(dirname -- "$source_path")" && pwd)"
project_dir="$(dirname -- "$bin_dir")"
venv_batchpredict="$project_dir/.venv/bin/batchpredict"

# How batchpredict would format its lines on stderr: --log_format, else
# BATCHPREDICT_LOG_FORMAT, else auto (console on a terminal, JSON lines otherwise).
log_format="${BATCHPREDICT_LOG_FORMAT:-auto}"
expect_format=false
for arg in "$@"; do
    if [[ "$expect_format" == true ]]; then
        log_format="$arg"
        expect_format=false
        continue
    fi
    case "$arg" in
        --) break ;;
        --log_format | --log-format) expect_format=true ;;
        --log_format=* | --log-format=*) log_format="${arg#*=}" ;;
        *) ;;
    esac
done
if [[ "$log_format" != json && "$log_format" != console ]]; then
    if [[ -t 2 ]]; then log_format=console; else log_format=json; fi
fi

json_string() {
    local text="$1"
    text="${text//\\/\\\\}"
    text="${text//\"/\\\"}"
    text="${text//$'\n'/\\n}"
    text="${text//$'\t'/\\t}"
    text="${text//$'\r'/\\r}"
    printf '"%s"' "$text"
}

# Exit 127 ("command not found"): $1 is what is wrong, $2 (optional) what to do about it;
# one line each in console format, one sentence after the other in JSON.
not_found() {
    if [[ "$log_format" == json ]]; then
        local text="$prog: $1${2:+. $2}"
        printf '{"event": "run failed", "error": %s, "exit_code": 127, "level": "error", "timestamp": "%s"}\n' \
            "$(json_string "$text")" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >&2
    else
        echo "$prog: $1" >&2
        if [[ -n "${2:-}" ]]; then echo "  $2" >&2; fi
    fi
    exit 127
}

# Whether python $1 can import batchpredict (without importing it: that costs seconds).
has_batchpredict() {
    "$1" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("batchpredict") is None)' \
        >/dev/null 2>&1
}

# Pick the command that runs batchpredict.
command_prefix=()
if [[ -n "${BATCHPREDICT_PYTHON:-}" ]]; then
    if ! python_path="$(command -v -- "$BATCHPREDICT_PYTHON")" || [[ ! -x "$python_path" ]]; then
        not_found "BATCHPREDICT_PYTHON=$BATCHPREDICT_PYTHON is not an executable python"
    fi
    if ! has_batchpredict "$python_path"; then
        not_found "$python_path (BATCHPREDICT_PYTHON) cannot import batchpredict" \
            "Install it there ($python_path -m pip install $project_dir) or set BATCHPREDICT_PYTHON to a python that has it."
    fi
    command_prefix=("$python_path" -m batchpredict)
elif [[ -x "$venv_batchpredict" ]]; then
    venv_python="$project_dir/.venv/bin/python"
    if [[ -x "$venv_python" ]] && ! has_batchpredict "$venv_python"; then
        not_found "$venv_python cannot import batchpredict" \
            "Reinstall it: $venv_python -m pip install $project_dir"
    fi
    command_prefix=("$venv_batchpredict")
elif path_batchpredict="$(command -v batchpredict)"; then
    command_prefix=("$path_batchpredict")
else
    not_found "cannot find batchpredict: no $venv_batchpredict and no batchpredict on PATH=${PATH:-}" \
        "Create the virtualenv (python3 -m venv $project_dir/.venv && $project_dir/.venv/bin/pip install $project_dir) or set BATCHPREDICT_PYTHON to a python that has batchpredict installed."
fi

# Add the lock file from the environment unless the arguments already name one.
lock_args=()
if [[ -n "${BATCHPREDICT_LOCK_FILE:-}" ]]; then
    have_lock_option=false
    for arg in "$@"; do
        case "$arg" in
            --) break ;;
            --lock_file | --lock-file | --lock_file=* | --lock-file=*)
                have_lock_option=true
                break
                ;;
            *) ;;
        esac
    done
    if [[ "$have_lock_option" == false ]]; then
        lock_args=(--lock_file "$BATCHPREDICT_LOCK_FILE")
    fi
fi

# "${array[@]+...}" keeps `set -u` quiet about empty arrays on bash < 4.4.
exec "${command_prefix[@]}" predict ${lock_args[@]+"${lock_args[@]}"} "$@"
