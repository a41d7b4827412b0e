#!/bin/sh
# Container entrypoint: initialise Bytewax recovery once, then run the detector.
#
#   CTRGUARD_CONFIG      configuration file            (default /etc/ctrguard/config.yaml)
#   RECOVERY_DIR         Bytewax recovery partitions   (default /var/lib/ctrguard/recovery)
#   RECOVERY_PARTITIONS  partitions to create on first start; the most workers you will
#                        ever run, it cannot change later (default 4)
# Extra arguments are passed on to `ctrguard run`.
set -eu

: "${CTRGUARD_CONFIG:=/etc/ctrguard/config.yaml}"
: "${RECOVERY_DIR:=/var/lib/ctrguard/recovery}"
: "${RECOVERY_PARTITIONS:=4}"

mkdir -p "$RECOVERY_DIR"

# Initialise when no partition exists yet. Not "when the directory is empty": a fresh
# volume may hold lost+found. Bytewax refuses to initialise twice, and an interrupted
# initialisation must not leave a half set, so build it aside and move it in.
if ! ls "$RECOVERY_DIR"/part-*.sqlite3 >/dev/null 2>&1; then
    echo "entrypoint: initialising $RECOVERY_PARTITIONS recovery partitions in $RECOVERY_DIR" >&2
    rm -rf "$RECOVERY_DIR"/.init-*
    staging="$RECOVERY_DIR/.init-$$"
    mkdir "$staging"
    python -m bytewax.recovery "$staging" "$RECOVERY_PARTITIONS"
    mv "$staging"/part-*.sqlite3 "$RECOVERY_DIR"/
    rmdir "$staging"
fi

exec ctrguard run --config "$CTRGUARD_CONFIG" --recovery-dir "$RECOVERY_DIR" "$@"
