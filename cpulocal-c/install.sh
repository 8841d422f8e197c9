#!/bin/sh
# Installs the C library: libcpulocal.so, libcpulocal.a, cpulocal.h and
# cpulocal.pc (generated from cpulocal.pc.in).
#
#   cpulocal-c/install.sh [PREFIX]        PREFIX defaults to /usr/local
#
# Environment:
#   DESTDIR           a staging root to install under (packagers)
#   LIBDIR            where the libraries go (default PREFIX/lib)
#   INCLUDEDIR        where the header goes (default PREFIX/include)
#   CPULOCAL_LIB_DIR  take libcpulocal.so and libcpulocal.a from this
#                     directory instead of building them with
#                     `cargo build --release -p cpulocal-c`
#   CARGO_TARGET_DIR  cargo's target directory, if not the workspace's
set -eu
here=$(cd "$(dirname "$0")" && pwd)
prefix=${1:-/usr/local}
libdir=${LIBDIR:-$prefix/lib}
includedir=${INCLUDEDIR:-$prefix/include}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/Cargo.toml")
if [ -z "${CPULOCAL_LIB_DIR:-}" ]; then
    (cd "$here/.." && cargo build --release -p cpulocal-c)
    # cargo ran in the workspace, so a relative target directory is its.
    case ${CARGO_TARGET_DIR:-target} in
    /*) CPULOCAL_LIB_DIR=$CARGO_TARGET_DIR/release ;;
    *) CPULOCAL_LIB_DIR=$here/../${CARGO_TARGET_DIR:-target}/release ;;
    esac
fi
dest=${DESTDIR:-}
install -d "$dest$libdir/pkgconfig" "$dest$includedir"
install -m 0755 "$CPULOCAL_LIB_DIR/libcpulocal.so" "$dest$libdir/libcpulocal.so"
install -m 0644 "$CPULOCAL_LIB_DIR/libcpulocal.a" "$dest$libdir/libcpulocal.a"
install -m 0644 "$here/include/cpulocal.h" "$dest$includedir/cpulocal.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@LIBDIR@|$libdir|" -e "s|@INCLUDEDIR@|$includedir|" \
    -e "s|@VERSION@|$version|" "$here/cpulocal.pc.in" >"$dest$libdir/pkgconfig/cpulocal.pc"
chmod 0644 "$dest$libdir/pkgconfig/cpulocal.pc"
echo "installed cpulocal $version: $dest$libdir/libcpulocal.{so,a}, $dest$includedir/cpulocal.h, $dest$libdir/pkgconfig/cpulocal.pc"
