#!/usr/bin/env bash
# edge-agent install: the agent as a systemd service on a Raspberry Pi (docs/deploy.md).
#
# Installs a release, a fresh virtual environment, as $PREFIX/releases/<version>-<UTC stamp>
# and points $PREFIX/current at it in one rename, so the unit's ExecStart always names
# $PREFIX/current/bin/edge-agent. Creates the service user, the configuration directory and
# the units. A running agent is restarted only after the new release has accepted its
# configuration; otherwise the running version keeps running on the release it has.
# Never touches the agent's state ($STATE_DIR: the spool and the teach-in file) and never
# overwrites a configuration.
#
# Usage:
#   sudo deploy/install.sh [--from WHEEL|SOURCE_DIR] [--collector]    install or upgrade
#   sudo deploy/install.sh --rollback          current back to the release before it
#
#   --from PATH   install this wheel (.whl) or source tree instead of the tree this script
#                 is in (a source tree is copied first: the build leaves nothing in it)
#   --collector   also install and enable the plant-side collector (edge-collector.service)
#   --rollback    point current at the newest release older than it and restart a running
#                 service (twice: two releases back)
#
# Environment, for tests and packaging (the units name the defaults):
#   PREFIX         where the releases live                        [/opt/edge-agent]
#   ETC_DIR        the configuration directory                    [/etc/edge-agent]
#   UNIT_DIR       where the unit files go                        [/etc/systemd/system]
#   BIN_DIR        where the `edge-agent` command is linked       [/usr/local/bin]
#   STATE_DIR      the agent's state: never touched, only named   [/var/lib/edge-agent]
#   DEPLOY_DIR     where the units and example configurations are read [this script's dir]
#   PYTHON         the interpreter the virtual environments are made with [python3]
#   SYSTEMCTL      the systemctl command                          [systemctl]
#   CREATE_USER    yes: create the user edge-agent and set ownerships (needs root);
#                  no: neither, and any user may run this (tests) [yes]
#   PIP_ARGS       extra pip install arguments, split on blanks (--find-links DIR, ...) []
#   KEEP_RELEASES  releases kept; the current and the previous one always are [3]
#   READY_WAIT_S   how long an upgrade waits for the restarted agent's READY=1, which
#                  comes once its controller answers (docs/service.md)   [120]

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
PREFIX=${PREFIX:-/opt/edge-agent}
ETC_DIR=${ETC_DIR:-/etc/edge-agent}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
BIN_DIR=${BIN_DIR:-/usr/local/bin}
STATE_DIR=${STATE_DIR:-/var/lib/edge-agent}
DEPLOY_DIR=${DEPLOY_DIR:-$here}
PYTHON=${PYTHON:-python3}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
CREATE_USER=${CREATE_USER:-yes}
PIP_ARGS=${PIP_ARGS:-}
KEEP_RELEASES=${KEEP_RELEASES:-3}
READY_WAIT_S=${READY_WAIT_S:-120}

SERVICE_USER=edge-agent
SERIAL_GROUP=dialout # the sensor bridge's serial port (/dev/ttyACM0) belongs to it
DEBIAN_PACKAGES="python3 python3-venv python3-dev build-essential"
# Written into a release once it is complete and ran: a directory without it is the
# leftover of an interrupted install, never current, never a rollback target.
MARKER=.edge-agent-release

say() { printf 'edge-agent install: %s\n' "$*"; }
die() {
    printf 'edge-agent install: %s\n' "$*" >&2
    exit 1
}

# --- what is asked ----------------------------------------------------------------------

from=""
collector=no
rollback=no
while [ $# -gt 0 ]; do
    case $1 in
    --from)
        [ $# -ge 2 ] || die "--from needs a wheel or a source directory"
        from=$2
        shift 2
        ;;
    --from=*)
        from=${1#--from=}
        shift
        ;;
    --collector)
        collector=yes
        shift
        ;;
    --rollback)
        rollback=yes
        shift
        ;;
    -h | --help)
        sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    *) die "unknown argument: $1 (see $0 --help)" ;;
    esac
done
[ "$rollback" = no ] || [ -z "$from" ] || die "--rollback takes no --from"

case $CREATE_USER in
yes | no) ;;
*) die "CREATE_USER must be yes or no, not '$CREATE_USER'" ;;
esac
case $KEEP_RELEASES in
'' | *[!0-9]* | 0) die "KEEP_RELEASES must be a number from 1, not '$KEEP_RELEASES'" ;;
esac
if [ "$CREATE_USER" = yes ] && [ "$(id -u)" -ne 0 ]; then
    die "must run as root: sudo $0 (CREATE_USER=no installs without the user and ownerships)"
fi
for path in "$PREFIX" "$ETC_DIR" "$UNIT_DIR" "$BIN_DIR" "$STATE_DIR" "$DEPLOY_DIR"; do
    case $path in
    /*) ;;
    *) die "paths must be absolute: '$path' is not" ;;
    esac
done
# /opt/edge-agent as one virtual environment was the manual install of earlier READMEs.
if [ -f "$PREFIX/pyvenv.cfg" ]; then
    die "$PREFIX is a virtual environment from an earlier install; move it away first (sudo mv $PREFIX $PREFIX.old)"
fi
command -v "$SYSTEMCTL" >/dev/null 2>&1 || die "$SYSTEMCTL not found: the service needs systemd"
umask 022 # the service user reads the releases; the configuration gets its modes explicitly

# --- releases ---------------------------------------------------------------------------

# The complete releases, oldest first: ordered by the UTC stamp after the name's last '-'.
releases() {
    local dir name
    for dir in "$PREFIX"/releases/*/; do
        [ -f "$dir$MARKER" ] || continue
        name=$(basename "$dir")
        printf '%s %s\n' "${name##*-}" "$name"
    done | LC_ALL=C sort | cut -d' ' -f2
}

current_release() {
    if [ -L "$PREFIX/current" ]; then
        basename "$(readlink "$PREFIX/current")"
    fi
}

# The newest complete release older than $1 (nothing if there is none).
previous_of() {
    releases | awk -v current="$1" '$0 == current { print previous; exit } { previous = $0 }'
}

# Points current at release $1 in one rename: the link is never missing or half made.
point_current() {
    local link="$PREFIX/.current.$$"
    rm -f "$link"
    ln -s "releases/$1" "$link" || die "cannot create $link"
    mv -T "$link" "$PREFIX/current" || die "cannot point $PREFIX/current at releases/$1"
}

is_active() { "$SYSTEMCTL" is-active --quiet "$1" 2>/dev/null; }

# Runs release $1's check-config on the agent's configuration; prints its last line on
# failure (the one-line error the agent would stop with).
check_config() {
    local output
    if output=$("$PREFIX/releases/$1/bin/edge-agent" check-config "$ETC_DIR/agent.toml" 2>&1); then
        return 0
    fi
    printf '%s\n' "$output" | tail -n 1 | sed 's/^edge-agent: //'
    return 1
}

# --- rollback -----------------------------------------------------------------------------

if [ "$rollback" = yes ]; then
    current=$(current_release)
    [ -n "$current" ] || die "nothing to roll back: $PREFIX/current does not exist"
    previous=$(previous_of "$current")
    [ -n "$previous" ] || die "no release older than $current in $PREFIX/releases to roll back to"
    if is_active edge-agent && ! error=$(check_config "$previous"); then
        die "$previous rejects $ETC_DIR/agent.toml, current stays $current: $error"
    fi
    point_current "$previous"
    say "current: $previous (was $current)"
    services=edge-agent
    if [ -f "$UNIT_DIR/edge-collector.service" ]; then services="$services edge-collector"; fi
    for service in $services; do
        if is_active "$service"; then
            "$SYSTEMCTL" restart "$service" || die "$service did not restart on $previous (journalctl -u $service)"
            say "restarted $service"
        fi
    done
    exit 0
fi

# --- prerequisites ------------------------------------------------------------------------

# The same checks, in the same words, as the Makefile's check-build-deps.
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install: sudo apt-get install $DEBIAN_PACKAGES"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "needs Python 3.11 or newer, $PYTHON is $("$PYTHON" -V 2>&1)"
"$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 ||
    die "Python's venv module is missing; install: sudo apt-get install python3-venv"

[ -n "$from" ] || from="$here/.."
[ -e "$from" ] || die "--from $from: no such file or directory"
if [ -d "$from" ]; then
    from=$(cd "$from" && pwd)
    if [ ! -f "$from/setup.py" ] || [ ! -f "$from/edge_agent/__init__.py" ]; then
        die "$from is not an edge-agent source tree (no setup.py, edge_agent/__init__.py)"
    fi
    version=$(sed -n 's/^__version__ = "\([^"]*\)".*/\1/p' "$from/edge_agent/__init__.py")
    # The Cython kernels are compiled on this machine.
    command -v cc >/dev/null 2>&1 ||
        die "no C compiler for the Cython kernels; install: sudo apt-get install build-essential python3-dev"
    "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
        die "Python headers (Python.h) missing; install: sudo apt-get install python3-dev"
else
    case $from in
    *.whl) ;;
    *) die "--from $from is neither a wheel (.whl) nor a source directory" ;;
    esac
    from=$(cd "$(dirname "$from")" && pwd)/$(basename "$from")
    version=$(basename "$from" | cut -d- -f2) # edge_agent-<version>-<tags>.whl
fi
[ -n "$version" ] || die "cannot tell the version of $from"

for file in edge-agent.service edge-agent.example.toml; do
    [ -f "$DEPLOY_DIR/$file" ] || die "$DEPLOY_DIR/$file is missing"
done
if [ "$collector" = yes ]; then
    for file in edge-collector.service edge-collector.example.toml; do
        [ -f "$DEPLOY_DIR/$file" ] || die "$DEPLOY_DIR/$file is missing"
    done
fi

# --- the service user ---------------------------------------------------------------------

group=""         # the group the configuration belongs to ("": ownership left alone)
if [ "$CREATE_USER" = yes ]; then
    group=$SERVICE_USER
    if ! getent group "$SERVICE_USER" >/dev/null; then
        groupadd --system "$SERVICE_USER" || die "cannot create the group $SERVICE_USER"
    fi
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        useradd --system --gid "$SERVICE_USER" --no-create-home --home-dir "$STATE_DIR" \
            --shell /usr/sbin/nologin --comment "edge-agent service" "$SERVICE_USER" ||
            die "cannot create the user $SERVICE_USER"
        say "created the system user $SERVICE_USER"
    fi
    if getent group "$SERIAL_GROUP" >/dev/null; then
        id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx "$SERIAL_GROUP" ||
            usermod -a -G "$SERIAL_GROUP" "$SERVICE_USER" ||
            die "cannot add $SERVICE_USER to the group $SERIAL_GROUP"
    else
        say "note: no group $SERIAL_GROUP here; the sensor bridge's serial port may be unreadable"
    fi
fi

# --- the configuration --------------------------------------------------------------------

# Copies $1 to $2 with mode $3 (and group $group) through a temporary file beside $2, so
# that $2 is never seen half written.
put_file() {
    local tmp="$2.tmp.$$"
    if ! cp "$1" "$tmp" || ! chmod "$3" "$tmp"; then
        rm -f "$tmp"
        die "cannot write $2"
    fi
    if [ -n "$group" ]; then
        chown "root:$group" "$tmp" || die "cannot chown $2"
    fi
    mv -f "$tmp" "$2" || die "cannot write $2"
}

# Installs example $1 as $2 when absent (never overwriting one) and always as $2.example.
put_config() {
    put_file "$DEPLOY_DIR/$1" "$ETC_DIR/$2.example" 0640
    if [ -e "$ETC_DIR/$2" ]; then
        say "kept your $ETC_DIR/$2 (the current example is $2.example beside it)"
    else
        put_file "$DEPLOY_DIR/$1" "$ETC_DIR/$2" 0640
        say "installed $ETC_DIR/$2 from the example: edit it"
    fi
}

mkdir -p "$ETC_DIR" || die "cannot create $ETC_DIR"
chmod 0750 "$ETC_DIR"
[ -z "$group" ] || chown "root:$group" "$ETC_DIR" || die "cannot chown $ETC_DIR"
put_config edge-agent.example.toml agent.toml
[ "$collector" = no ] || put_config edge-collector.example.toml collector.toml

# --- the release --------------------------------------------------------------------------

building="" # a release being made: removed if this script stops before it is complete
workdir=""
cleanup() {
    if [ -n "$building" ]; then rm -rf "$building"; fi
    if [ -n "$workdir" ]; then rm -rf "$workdir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$PREFIX/releases" || die "cannot create $PREFIX/releases"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
release="$version-$stamp"
n=1
while [ -e "$PREFIX/releases/$release" ]; do # a second install within the same second
    n=$((n + 1))
    release="$version-$stamp.$n"
done
dir="$PREFIX/releases/$release"
building=$dir

target=$from
if [ -d "$from" ]; then
    # A copy without the developer's build output: pip builds in the tree it is given, and
    # a root-owned build/ or an x86 kernel .so must not end up in (or come from) a checkout.
    workdir=$(mktemp -d)
    (cd "$from" && tar --exclude=.git --exclude=.venv --exclude=./build --exclude=./dist \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
        --exclude=.ruff_cache --exclude=.hypothesis --exclude=./reports --exclude='*.so' \
        --exclude='./edge_agent/kernels/*.c' --exclude='*.db' -cf - .) |
        tar -C "$workdir" -xf - || die "cannot copy $from"
    target=$workdir
    say "building $release from $from (compiles the Cython kernels: minutes on a Pi)"
else
    say "installing $release from $from"
fi

"$PYTHON" -m venv "$dir" || die "cannot create the virtual environment $dir"
# shellcheck disable=SC2086 # PIP_ARGS is a list of arguments
"$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    $PIP_ARGS "$target" || die "pip install of $from into $dir failed (its output is above)"
ran=$("$dir/bin/edge-agent" --version 2>&1) || die "the new release does not run: $(printf '%s\n' "$ran" | tail -n 1)"
printf 'version=%s\nsource=%s\ninstalled=%s\n' "$version" "$from" "$stamp" >"$dir/$MARKER"

# --- the switch -----------------------------------------------------------------------------

old=$(current_release)
agent_was_active=no
if is_active edge-agent; then agent_was_active=yes; fi

if [ "$agent_was_active" = yes ]; then
    # An upgrade of a running agent: the new release must accept the configuration before
    # anything changes, or the running version keeps running (current is not moved).
    if ! error=$(check_config "$release"); then
        die "$release rejects $ETC_DIR/agent.toml, edge-agent keeps running ${old:-as it is}: $error"
    fi
elif ! error=$(check_config "$release"); then
    say "note: $ETC_DIR/agent.toml does not pass check-config yet: $error"
fi

point_current "$release"
building=""
say "current: $release ($ran)"

if [ -d "$BIN_DIR" ]; then
    link="$BIN_DIR/edge-agent"
    if [ ! -e "$link" ] && [ ! -L "$link" ]; then
        ln -s "$PREFIX/current/bin/edge-agent" "$link"
    elif [ "$(readlink "$link" || true)" != "$PREFIX/current/bin/edge-agent" ]; then
        say "note: $link is not ours, left alone; the command is $PREFIX/current/bin/edge-agent"
    fi
fi

# --- the units ------------------------------------------------------------------------------

mkdir -p "$UNIT_DIR" || die "cannot create $UNIT_DIR"
units=edge-agent.service
# The collector runs the same release: its unit is kept current once it was installed.
if [ "$collector" = yes ] || [ -f "$UNIT_DIR/edge-collector.service" ]; then
    units="$units edge-collector.service"
fi
saved_group=$group
group="" # unit files belong to root
for unit in $units; do
    put_file "$DEPLOY_DIR/$unit" "$UNIT_DIR/$unit" 0644
    grep -q "^ExecStart=$PREFIX/current/bin/edge-agent " "$UNIT_DIR/$unit" ||
        say "note: $unit does not run $PREFIX/current/bin/edge-agent (PREFIX is not the unit's)"
done
group=$saved_group
"$SYSTEMCTL" daemon-reload || die "systemctl daemon-reload failed"
"$SYSTEMCTL" enable edge-agent || die "systemctl enable edge-agent failed"
if [ "$collector" = yes ]; then
    "$SYSTEMCTL" enable edge-collector || die "systemctl enable edge-collector failed"
fi

if [ "$agent_was_active" = yes ]; then
    # The restart returns at READY=1, which waits for the controller: a machine switched off
    # is not a failed upgrade. Past READY_WAIT_S the start goes on; systemd judges it.
    status=0
    timeout "$READY_WAIT_S" "$SYSTEMCTL" restart edge-agent || status=$?
    if [ "$status" -eq 124 ]; then
        say "edge-agent restarted on $release, not ready after ${READY_WAIT_S} s (its controller off?): journalctl -u edge-agent"
    elif [ "$status" -ne 0 ]; then
        if [ -z "$old" ]; then
            die "edge-agent did not start on $release (journalctl -u edge-agent)"
        fi
        point_current "$old"
        "$SYSTEMCTL" restart edge-agent || true
        rm -rf "$dir"
        die "edge-agent did not start on $release (journalctl -u edge-agent); back on $old"
    else
        say "restarted edge-agent on $release"
    fi
fi
if [ -f "$UNIT_DIR/edge-collector.service" ] && is_active edge-collector; then
    "$SYSTEMCTL" restart edge-collector || die "edge-collector did not restart (journalctl -u edge-collector)"
    say "restarted edge-collector on $release"
fi

# --- old releases ---------------------------------------------------------------------------

current=$(current_release)
previous=$(previous_of "$current")
rank=0
# Newest first: the newest KEEP_RELEASES stay, and always the current and the previous one.
for name in $(releases | awk '{ line[NR] = $0 } END { for (i = NR; i >= 1; i--) print line[i] }'); do
    rank=$((rank + 1))
    if [ "$rank" -le "$KEEP_RELEASES" ] || [ "$name" = "$current" ] || [ "$name" = "$previous" ]; then
        continue
    fi
    rm -rf "${PREFIX:?}/releases/$name"
    say "removed the old release $name"
done
# Leftovers of interrupted installs (no marker): never current, never a rollback target.
for leftover in "$PREFIX"/releases/*/; do
    if [ ! -d "$leftover" ] || [ -f "$leftover$MARKER" ]; then continue; fi
    if [ "$(basename "$leftover")" = "$current" ]; then continue; fi
    rm -rf "$leftover"
    say "removed the unfinished release $(basename "$leftover")"
done

if [ "$agent_was_active" = no ]; then
    cat <<EOF
edge-agent install: installed. Next:
  1. edit $ETC_DIR/agent.toml (the controller, the tags, the upstream)
  2. check it:  sudo $PREFIX/current/bin/edge-agent check-config $ETC_DIR/agent.toml
  3. start it:  sudo systemctl start edge-agent    (logs: journalctl -u edge-agent -f)
EOF
fi
