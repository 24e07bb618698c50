#!/usr/bin/env bash
# Installs everything tern needs to build, test and run, from Debian packages only.
# Idempotent: a second run checks what is present and returns in about a second.
#
#   scripts/setup.sh            # build + test dependencies
#   scripts/setup.sh --quiet    # same, less output
#
# V8 comes from Debian's libnode-dev (Node 18, V8 10.2). Where apt cannot install it
# (a NodeSource nodejs is installed, which conflicts), the .debs are downloaded from
# Debian's archive with `apt-get download` and unpacked into .deps/libnode (project-local).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.deps"
QUIET=0
[[ "${1:-}" == "--quiet" ]] && QUIET=1
say() { [[ $QUIET == 1 ]] || echo "setup: $*"; }

PACKAGES=(
  # build tools
  build-essential cmake ninja-build pkg-config git clang-14 lld-14 clang-format-14 clang-tidy-14
  libclang-rt-14-dev
  # wasm guest toolchain
  clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32 libc++-19-dev-wasm32 libc++abi-19-dev-wasm32
  # libraries
  libgtest-dev libgmock-dev libbenchmark-dev libyaml-cpp-dev libfmt-dev nlohmann-json3-dev
  libssl-dev zlib1g-dev liblz4-dev libzstd-dev
  # gRPC C++ 1.51 + protobuf: the peer in bench/rpc (gRPC's CMake config, protoc, the plugin)
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev
  # runtime dependencies of libnode108 (V8)
  libuv1 libicu72 libc-ares2 libnghttp2-14 libbrotli1 libssl3 zlib1g
  # tools used by tests and benchmarks
  curl python3 iproute2 procps
  # the cluster: etcd (a ClusterStore backend), wrk (gateway load generator)
  etcd-server etcd-client wrk
)

if [[ $EUID -ne 0 ]]; then
  SUDO=sudo
else
  SUDO=
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  say "installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || $SUDO apt-get update
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  say "Debian packages: all ${#PACKAGES[@]} present"
fi

# --- V8 (libnode) -----------------------------------------------------------------
# Prefer a system libnode-dev that matches libnode108. If the system headers in
# /usr/include/node belong to another Node (NodeSource ships Node 20 headers there),
# or libnode-dev is not installed, use a project-local unpack.
NODE_PREFIX="$DEPS/libnode/usr"
system_libnode_ok() {
  dpkg-query -W -f='${Status}' libnode-dev 2>/dev/null | grep -q "install ok installed" &&
    grep -q "define NODE_MODULE_VERSION 108" /usr/include/node/node_version.h 2>/dev/null
}
if system_libnode_ok; then
  say "V8: system libnode-dev (Node 18 / V8 10.2)"
  rm -f "$DEPS/libnode.prefix"
  mkdir -p "$DEPS" && echo "/usr" >"$DEPS/libnode.prefix"
elif [[ -f "$NODE_PREFIX/include/node/v8.h" && -e "$NODE_PREFIX/lib/x86_64-linux-gnu/libnode.so.108" ]]; then
  say "V8: project-local libnode in .deps/libnode"
  echo "$NODE_PREFIX" >"$DEPS/libnode.prefix"
else
  if dpkg-query -W -f='${Status}' nodejs 2>/dev/null | grep -q "install ok installed" &&
     ! dpkg-query -W -f='${Version}' nodejs | grep -q deb12; then
    say "V8: a non-Debian nodejs is installed; unpacking libnode108 + libnode-dev into .deps/libnode"
    mkdir -p "$DEPS/debs" "$DEPS/libnode"
    (cd "$DEPS/debs" && apt-get -o APT::Sandbox::User=root download libnode108 libnode-dev >/dev/null)
    for f in "$DEPS"/debs/libnode108_*.deb "$DEPS"/debs/libnode-dev_*.deb; do
      dpkg-deb -x "$f" "$DEPS/libnode"
    done
    echo "$NODE_PREFIX" >"$DEPS/libnode.prefix"
  else
    say "V8: installing libnode-dev with apt"
    $SUDO apt-get install -y -qq --no-install-recommends libnode-dev libuv1-dev
    echo "/usr" >"$DEPS/libnode.prefix"
  fi
fi
say "ready (libnode prefix: $(cat "$DEPS/libnode.prefix"))"
