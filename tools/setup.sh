#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root).
#   tools/setup.sh          system packages + .venv with the daemon, tool and uvloop
#   tools/setup.sh --test   the same plus what the test suite and benchmarks need
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

pkgs=(python3-tdb python3-venv corosync libcpg4 iproute2)
# samba/smbclient: tests/test_samba_smbd.py runs three clustered smbd
[ "$want_test" = 1 ] && pkgs+=(ctdb tdb-tools samba smbclient)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -q >&2
    # Services the packages would start (smbd and nmbd bind ports 445/139
    # for good): none are wanted, the tests start their own daemons. A
    # policy-rc.d that refuses every start is in place during the install
    # unless the machine has one already.
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    status=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
        status=$?
    if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    [ "$status" = 0 ] || exit "$status"
fi
# The Debian corosync package starts a system daemon that needs a real
# cluster config; we run private ones, so keep the system unit from failing.
systemctl disable --now corosync >/dev/null 2>&1 || true
# Nor system Samba daemons (installed with policy-rc.d above, but a machine
# that had samba before may run them).
for unit in smbd nmbd samba-ad-dc; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
done

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# python3-tdb is only packaged by Debian: make its files visible in the venv.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for f in $(dpkg -L python3-tdb | grep '/dist-packages/[^/]*$'); do
    ln -sf "$f" "$site/$(basename "$f")"
done
extras="fast"
[ "$want_test" = 1 ] && extras="fast,test,bench"
# compat mode puts the source tree on sys.path with a .pth file instead of an
# import hook: ~30 ms less start-up for every one-shot ctdbtool.
.venv/bin/pip install -q --disable-pip-version-check \
    --config-settings editable_mode=compat -e ".[$extras]" >&2
.venv/bin/python -c 'import tdb, msgpack, click' >&2
# CTDB's own test programs, built from the Debian source of the installed
# ctdb (about a minute, once; cached outside the checkout). A machine that
# cannot build them still runs the suite: only the tests of those programs skip.
if [ "$want_test" = 1 ]; then
    tools/build_ctdb_tests.sh >/dev/null ||
        echo "setup: CTDB's test programs could not be built; the tests that run them skip" >&2
fi
