#!/bin/sh
# Give a machine its identity on the plant's broker (docs/broker.md): the user
# "<site>/<machine>" in Mosquitto's password file, which edge-agent.acl lets publish only under
# <prefix>/<site>/<machine>/ and read only its own acks. Asks for the password twice (on
# standard input when it is not a terminal); the agent's [upstream] password_file holds the
# same one, and its username is "<site>/<machine>".
#
# Usage: sudo deploy/mosquitto/add-machine.sh SITE MACHINE [PASSWORD_FILE]
#   SITE, MACHINE   the agent's [machine] site and machine_id
#   PASSWORD_FILE   the broker's password_file [/etc/mosquitto/edge-agent.passwd]
# Then `sudo systemctl reload mosquitto`: it reads the password and ACL files again.
# The same command (as SITE/MACHINE, it replaces a password) changes a machine's password;
# `mosquitto_passwd -D FILE SITE/MACHINE` removes one.

set -eu

die() {
    printf 'add-machine: %s\n' "$*" >&2
    exit 2
}

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    die "usage: $0 SITE MACHINE [PASSWORD_FILE]"
fi
site=$1
machine=$2
file=${3:-/etc/mosquitto/edge-agent.passwd}

# The agent's own rule for these ids (edge_agent/names.py, RULE): a '/', '+' or '#' would
# let an identity reach other machines' topics, '.' and '..' name directories.
check() {
    case $2 in
    . | .. | '' | *[!A-Za-z0-9_.-]*) ok=no ;;
    *) [ "${#2}" -le 64 ] && ok=yes || ok=no ;;
    esac
    [ "$ok" = yes ] || die "$1 '$2' must be 1-64 of letters, digits, '_', '.', '-', and not '.' or '..'"
}
check site "$site"
check machine "$machine"

command -v mosquitto_passwd >/dev/null 2>&1 ||
    die "mosquitto_passwd not found: sudo apt-get install mosquitto"
if [ ! -e "$file" ]; then
    (umask 027 && : >"$file") || die "cannot create $file"
    # The broker reads it after dropping to its own user.
    chgrp mosquitto "$file" 2>/dev/null || true
fi
mosquitto_passwd "$file" "$site/$machine" || die "mosquitto_passwd failed; $file unchanged"
printf 'add-machine: %s/%s added to %s; now: sudo systemctl reload mosquitto\n' \
    "$site" "$machine" "$file"
