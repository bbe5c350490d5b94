#!/usr/bin/env bash
# Installs the build tree into a temporary prefix and builds and runs a program that uses it
# through find_package(djinn). Usage: check.sh BUILD_DIR
set -euo pipefail
build="$1"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
mkdir -p "$work/src"
cp "$here/CMakeLists.txt.in" "$work/src/CMakeLists.txt"
cp "$here/main.cpp" "$work/src/main.cpp"
cmake -S "$work/src" -B "$work/build" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/build" >/dev/null
"$work/build/consumer"
