#!/bin/sh
# Entrypoint of the dfarchive image.
#
#   worker [ARGS]     dramatiq dfarchive.actors (archives runs from the queue); ARGS are
#                     passed on, default --processes $DFARCHIVE_WORKER_PROCESSES (2)
#                     --threads $DFARCHIVE_WORKER_THREADS (1) --worker-shutdown-timeout
#                     $DFARCHIVE_WORKER_SHUTDOWN_TIMEOUT_MS (600000)
#   scheduler [ARGS]  dfarchive scheduler (scan, register, reclaim, enqueue)
#   init [ARGS]       dfarchive init (database, design documents, keys_path)
#   anything else     run as given (dataflow_archive, dfarchive status, sh, ...)
#
# Before that: if $DFARCHIVE_RECIPIENT_KEY (default /run/secrets/recipient_key) is a
# file, the recipient's public key in it is imported into $GNUPGHOME. The first three
# modes need the config ($ARCHIVE_CONFIG) and stop with one clear line without it.
set -eu

PROG=dfarchive-entrypoint
CONFIG="${ARCHIVE_CONFIG:-$HOME/conf/df_archive.yaml}"
KEY_FILE="${DFARCHIVE_RECIPIENT_KEY:-/run/secrets/recipient_key}"

die() {
    echo "$PROG: $*" >&2
    exit 2
}

require_config() {
    [ -e "$CONFIG" ] || die "config file $CONFIG not found: mount it there or set ARCHIVE_CONFIG (see docker/compose.yaml)"
    [ -f "$CONFIG" ] && [ -r "$CONFIG" ] || die "config file $CONFIG is not a readable file"
}

import_recipient_key() {
    [ -f "$KEY_FILE" ] || return 0
    home="${GNUPGHOME:-$HOME/.gnupg}"
    mkdir -p "$home"
    chmod 0700 "$home" 2>/dev/null || true
    gpg --batch --quiet --homedir "$home" --import "$KEY_FILE" \
        || die "cannot import the recipient key from $KEY_FILE into $home"
}

mode="${1:-worker}"
[ $# -gt 0 ] && shift

import_recipient_key

case "$mode" in
    worker)
        require_config
        # Dramatiq's Prometheus files are per run: stale ones would add up forever
        if [ -n "${dramatiq_prom_db:-}" ] && [ -d "$dramatiq_prom_db" ]; then
            find "$dramatiq_prom_db" -mindepth 1 -maxdepth 1 -name '*.db' -delete
        fi
        if [ $# -eq 0 ]; then
            set -- --processes "${DFARCHIVE_WORKER_PROCESSES:-2}" \
                --threads "${DFARCHIVE_WORKER_THREADS:-1}" \
                --worker-shutdown-timeout "${DFARCHIVE_WORKER_SHUTDOWN_TIMEOUT_MS:-600000}"
        fi
        exec dramatiq dfarchive.actors "$@"
        ;;
    scheduler)
        require_config
        exec dfarchive scheduler "$@"
        ;;
    init)
        require_config
        exec dfarchive init "$@"
        ;;
    *)
        exec "$mode" "$@"
        ;;
esac
