#!/usr/bin/env bash
# The configure step must refuse V8 headers that do not belong to the libnode it links
# (cmake/V8.cmake). Builds a fake prefix whose node_version.h says NODE_MODULE_VERSION
# 999 next to the real libnode.so.108, and checks that configuring fails with the
# mismatch message. usage: v8_guard_test.sh SOURCE_DIR REAL_LIBNODE_SO
set -euo pipefail
SRC=$1
LIB=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/prefix/include/node" "$T/prefix/lib"
printf '#define NODE_MODULE_VERSION 999\n' >"$T/prefix/include/node/node_version.h"
printf '#define V8_MAJOR_VERSION 1\n#define V8_MINOR_VERSION 0\n' >"$T/prefix/include/node/v8-version.h"
touch "$T/prefix/include/node/v8.h"
ln -s "$LIB" "$T/prefix/lib/libnode.so"
ln -s "$LIB" "$T/prefix/lib/$(basename "$LIB")"
if cmake -S "$SRC" -B "$T/build" -G Ninja -DTERN_LIBNODE_PREFIX="$T/prefix" \
     -DTERN_BUILD_TESTS=OFF -DTERN_BUILD_BENCH=OFF >"$T/out" 2>&1; then
  echo "FAIL: configure succeeded with mismatched V8 headers"; cat "$T/out"; exit 1
fi
if ! grep -q "V8 header/library mismatch" "$T/out"; then
  echo "FAIL: configure failed, but not with the mismatch message:"; cat "$T/out"; exit 1
fi
echo "ok: configure refused NODE_MODULE_VERSION 999 against $(basename "$LIB")"
