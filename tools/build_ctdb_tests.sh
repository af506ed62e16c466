#!/usr/bin/env bash
# Build CTDB's own test programs (message_ring, fetch_ring, fetch_loop_key,
# transaction_loop) from the Debian source of the installed `ctdb` package,
# unmodified, to run them against pyctdb and against Samba's ctdbd.
#
#   tools/build_ctdb_tests.sh     builds once, then prints the directory of the programs
#
# Idempotent: the build is cached outside the checkout, in
# ${PYCTDB_CACHE:-/var/cache/pyctdb}/ctdb-tests (a link per program into the
# build tree, whose private libraries they load). Needs root (apt-get), the
# Debian mirror the machine already uses (a deb-src entry is derived from its
# own apt sources), and about a minute of configure and build.
set -euo pipefail

cache=${PYCTDB_CACHE:-/var/cache/pyctdb}
out=$cache/ctdb-tests
programs=(message_ring fetch_ring fetch_loop_key transaction_loop)

have_all() {
    for p in "${programs[@]}"; do [ -x "$out/$p" ] || return 1; done
}
if have_all; then
    echo "$out"
    exit 0
fi

version=$(dpkg-query -W -f='${Version}' ctdb)   # e.g. 2:4.17.12+dfsg-0+deb12u4
upstream=${version#*:}
upstream=${upstream%%+*}                         # 4.17.12
upstream=${upstream%%-*}
work=$cache/samba-$upstream
echo "build_ctdb_tests: CTDB $upstream test programs into $out" >&2

# A deb-src twin of every deb source the machine has (apt-get source needs one).
src_list=/etc/apt/sources.list.d/pyctdb-deb-src.sources
if [ ! -e "$src_list" ]; then
    python3 - "$src_list" <<'PY'
import glob, re, sys
stanzas = []
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(path).read()):
        types = re.search(r"^Types:(.*)$", stanza, re.M)
        if types and "deb" in types.group(1).split() and not re.search(r"^Enabled:\s*no", stanza, re.M | re.I):
            stanzas.append(re.sub(r"^Types:.*$", "Types: deb-src", stanza.strip(), flags=re.M))
try:
    for line in open("/etc/apt/sources.list"):
        if line.startswith("deb "):
            stanzas.append(line.replace("deb ", "deb-src ", 1).strip())
except FileNotFoundError:
    pass
one_line = [s for s in stanzas if s.startswith("deb-src ")]
deb822 = [s for s in stanzas if not s.startswith("deb-src ")]
open(sys.argv[1], "w").write("\n\n".join(deb822) + "\n")
if one_line:
    open(sys.argv[1].replace(".sources", ".list"), "w").write("\n".join(one_line) + "\n")
PY
fi
apt-get update -q >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    gcc make pkg-config python3 xz-utils \
    libtalloc-dev libtevent-dev libtdb-dev libpopt-dev >&2

mkdir -p "$work"
cd "$work"
if ! ls samba_*.orig.tar.* >/dev/null 2>&1; then
    apt-get source -q --download-only "samba=$version" >&2
fi
tree=$work/samba-$upstream
[ -d "$tree" ] || tar xf samba_*.orig.tar.* >&2
cd "$tree/ctdb"
[ -e bin/c4che/_cache.py ] || ./configure >&2
targets=$(IFS=,; echo "${programs[*]}")
PYTHONHASHSEED=1 WAF_MAKE=1 python3 ../buildtools/bin/waf build --targets="$targets" >&2

mkdir -p "$out"
for p in "${programs[@]}"; do
    ln -sfn "$tree/ctdb/bin/default/ctdb/$p" "$out/$p"
done
have_all
echo "$out"
