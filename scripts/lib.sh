# shellcheck shell=bash
# Shared helpers for the cutover scripts. Source it, don't run it:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# haproxy lives in /usr/sbin and consul in /usr/local/bin; neither is on every
# user's PATH (e.g. non-login shells, CI runners), so put them there for every script.
case ":$PATH:" in *:/usr/local/bin:*) ;; *) PATH="/usr/local/bin:$PATH" ;; esac
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin:/sbin" ;; esac
# rustup installs cargo here and CI shells often don't source ~/.cargo/env.
if [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then
    case ":$PATH:" in *":${CARGO_HOME:-$HOME/.cargo}/bin:"*) ;; *) PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH" ;; esac
fi
export PATH

# Name of the calling script, for log prefixes.
CUTOVER_SCRIPT_NAME=${CUTOVER_SCRIPT_NAME:-$(basename "$0")}

# say MSG...: one progress line on stderr (stdout stays free for data).
say() {
    printf '[%s] %s\n' "$CUTOVER_SCRIPT_NAME" "$*" >&2
}

# die MSG...: clear error and non-zero exit.
die() {
    printf '[%s] ERROR: %s\n' "$CUTOVER_SCRIPT_NAME" "$*" >&2
    exit 1
}

# need_cmd CMD...: fail loudly if a command is missing.
need_cmd() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || die "required command '$c' not found on PATH ($PATH)"
    done
}

# as_root CMD...: run CMD as root (directly, or through sudo when not root).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $* (run this script as root or install sudo)"
    fi
}

# repo_root: absolute path of the repository (parent of scripts/).
repo_root() {
    (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
}
