#!/usr/bin/env bash
# edge-agent uninstall: undoes deploy/install.sh (docs/deploy.md).
#
# Stops and disables the services, removes their units and every release ($PREFIX). Keeps
# the configuration ($ETC_DIR) and the agent's state ($STATE_DIR: the spool, which may hold
# telemetry not yet delivered, and the teach-in file) unless --purge, which removes them
# and the user edge-agent too. The collector's database (/var/lib/edge-collector) is never
# removed here: it is the plant's data.
#
# Usage:
#   sudo deploy/uninstall.sh [--purge]
#
# Environment: the same as deploy/install.sh's (PREFIX, ETC_DIR, UNIT_DIR, BIN_DIR,
# STATE_DIR, SYSTEMCTL, CREATE_USER; CREATE_USER=no leaves the user and runs as anyone).

set -euo pipefail

PREFIX=${PREFIX:-/opt/edge-agent}
ETC_DIR=${ETC_DIR:-/etc/edge-agent}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
BIN_DIR=${BIN_DIR:-/usr/local/bin}
STATE_DIR=${STATE_DIR:-/var/lib/edge-agent}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
CREATE_USER=${CREATE_USER:-yes}

SERVICE_USER=edge-agent

say() { printf 'edge-agent uninstall: %s\n' "$*"; }
die() {
    printf 'edge-agent uninstall: %s\n' "$*" >&2
    exit 1
}

purge=no
while [ $# -gt 0 ]; do
    case $1 in
    --purge) purge=yes ;;
    -h | --help)
        sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    *) die "unknown argument: $1 (see $0 --help)" ;;
    esac
    shift
done

case $CREATE_USER in
yes | no) ;;
*) die "CREATE_USER must be yes or no, not '$CREATE_USER'" ;;
esac
if [ "$CREATE_USER" = yes ] && [ "$(id -u)" -ne 0 ]; then
    die "must run as root: sudo $0"
fi
for path in "$PREFIX" "$ETC_DIR" "$UNIT_DIR" "$BIN_DIR" "$STATE_DIR"; do
    case $path in
    /*) ;;
    *) die "paths must be absolute: '$path' is not" ;;
    esac
done
command -v "$SYSTEMCTL" >/dev/null 2>&1 || die "$SYSTEMCTL not found"

# A PREFIX that is not a directory install.sh made (a typo, /usr) is refused, not emptied.
if [ -e "$PREFIX" ] && [ ! -e "$PREFIX/releases" ] && [ ! -L "$PREFIX/current" ]; then
    die "$PREFIX holds no edge-agent releases; refusing to remove it"
fi

# --- the services -----------------------------------------------------------------------

removed_units=no
for service in edge-agent edge-collector; do
    unit="$UNIT_DIR/$service.service"
    [ -f "$unit" ] || continue
    # Failures are reported, not fatal: a unit systemd never loaded cannot be stopped.
    "$SYSTEMCTL" stop "$service" || say "note: systemctl stop $service failed"
    "$SYSTEMCTL" disable "$service" || say "note: systemctl disable $service failed"
    rm -f "$unit" || die "cannot remove $unit"
    say "stopped, disabled and removed $service"
    removed_units=yes
done
if [ "$removed_units" = yes ]; then
    "$SYSTEMCTL" daemon-reload || die "systemctl daemon-reload failed"
fi

# --- the program --------------------------------------------------------------------------

link="$BIN_DIR/edge-agent"
if [ -L "$link" ] && [ "$(readlink "$link")" = "$PREFIX/current/bin/edge-agent" ]; then
    rm -f "$link"
fi
if [ -e "$PREFIX" ]; then
    rm -rf "${PREFIX:?}"
    say "removed $PREFIX"
fi

# --- configuration, state, user ---------------------------------------------------------

if [ "$purge" = no ]; then
    say "kept the configuration $ETC_DIR and the state $STATE_DIR (spool, teach-in)"
    say "to delete them as well: sudo $0 --purge (or sudo rm -rf $ETC_DIR $STATE_DIR)"
    exit 0
fi

rm -rf "${ETC_DIR:?}" "${STATE_DIR:?}"
say "removed $ETC_DIR and $STATE_DIR"
if [ "$CREATE_USER" = yes ]; then
    if getent passwd "$SERVICE_USER" >/dev/null; then
        userdel "$SERVICE_USER" || die "cannot remove the user $SERVICE_USER"
    fi
    if getent group "$SERVICE_USER" >/dev/null; then
        groupdel "$SERVICE_USER" || die "cannot remove the group $SERVICE_USER"
    fi
    say "removed the user and group $SERVICE_USER"
fi
if [ -e /var/lib/edge-collector ]; then
    say "the collector's database is kept: sudo rm -rf /var/lib/edge-collector /var/lib/private/edge-collector"
fi
