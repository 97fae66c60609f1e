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
# If none is found it exits 127 with a message on stderr.
#
# If BATCHPREDICT_LOCK_FILE is set (and not empty) and no --lock_file/--lock-file option is
# given, `--lock_file "$BATCHPREDICT_LOCK_FILE"` is added so overlapping runs exit 75.
#
# All other arguments go to `batchpredict predict` unchanged, and batchpredict is exec'ed,
# so its exit status (0, 65, 66, 73, 74, 75, 78, ...) is this script's exit status.

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

# Pick the command that runs batchpredict.
command_prefix=()
if [[ -n "${BATCHPREDICT_PYTHON:-}" ]]; then
    if ! python_path="$(command -v -- "$BATCHPREDICT_PYTHON")" || [[ ! -x "$python_path" ]]; then
        echo "$prog: BATCHPREDICT_PYTHON=$BATCHPREDICT_PYTHON is not an executable python" >&2
        exit 127
    fi
    command_prefix=("$python_path" -m batchpredict)
elif [[ -x "$venv_batchpredict" ]]; then
    command_prefix=("$venv_batchpredict")
elif path_batchpredict="$(command -v batchpredict)"; then
    command_prefix=("$path_batchpredict")
else
    {
        echo "$prog: cannot find batchpredict."
        echo "  looked for: $venv_batchpredict"
        echo "  and for batchpredict on PATH=${PATH:-}"
        echo "  create the virtualenv there (python3 -m venv $project_dir/.venv &&" \
            "$project_dir/.venv/bin/pip install $project_dir), or set BATCHPREDICT_PYTHON" \
            "to a python that has batchpredict installed."
    } >&2
    exit 127
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
