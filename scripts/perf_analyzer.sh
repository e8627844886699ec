#!/usr/bin/env bash
# Triton's perf_analyzer, runnable on Debian 12 (glibc 2.36) although PyPI's perf-analyzer 2.60 ships only
# a manylinux_2_38 wheel (plain pip gets a stub): the wheel is unpacked into a cache, a newer glibc and
# libstdc++ (Debian trixie's .deb files, fetched with a private apt configuration from the mirror this
# machine's apt already uses; the system's sources and libc are left alone) are unpacked beside it, and the
# binary runs under trixie's dynamic loader.
#
#   scripts/perf_analyzer.sh --version          prepare once (cached), then run perf_analyzer with the args
#   scripts/perf_analyzer.sh --prepare-only     prepare, print the cache folder
#
# Cache: ${CXR_PERF_ANALYZER_CACHE:-~/.cache/cxr-bench/perf-analyzer}; ready once `.complete` exists.
# When it cannot be prepared, the last line on stderr is "perf_analyzer unavailable: <reason>", exit 3.
set -euo pipefail

CACHE="${CXR_PERF_ANALYZER_CACHE:-$HOME/.cache/cxr-bench/perf-analyzer}"
VERSION="2.60.*"
PYTHON="${CXR_PERF_ANALYZER_PYTHON:-python3}"
PACKAGES=(libc6 libstdc++6 libgcc-s1)

# A failed preparation leaves no half folder behind: the next run starts again.
fail() { rm -rf "$CACHE.partial"; echo "perf_analyzer unavailable: $*" >&2; exit 3; }

mirror() {
  # The first Debian URI of this machine's own apt sources (deb822 or one-line format).
  local uri
  uri=$(grep -hoE '^URIs:[[:space:]]*[^[:space:]]+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v security | head -n1 || true)
  if [[ -z "$uri" ]]; then
    uri=$(grep -hoE '^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[^[:space:]]+' /etc/apt/sources.list 2>/dev/null \
          | awk '{print $NF}' | grep -v security | head -n1 || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

prepare() {
  local work="$CACHE.partial"
  rm -rf "$work" && mkdir -p "$work"/{wheel,apt/lists/partial,apt/cache/archives/partial,apt/etc,debs,root}
  command -v apt-get >/dev/null || fail "apt-get not found (not a Debian system)"
  command -v dpkg-deb >/dev/null || fail "dpkg-deb not found"
  "$PYTHON" -m pip --version >/dev/null 2>&1 || fail "$PYTHON has no pip"

  "$PYTHON" -m pip download --quiet --no-deps --python-version 3.11 --platform manylinux_2_38_x86_64 \
      --only-binary=:all: "perf-analyzer==$VERSION" -d "$work/wheel" >"$work/pip.log" 2>&1 \
    || fail "pip download perf-analyzer==$VERSION failed: $(tail -n1 "$work/pip.log")"
  local wheel
  wheel=$(ls "$work"/wheel/*.whl 2>/dev/null | head -n1) || true
  [[ -n "$wheel" ]] || fail "pip download gave no wheel"
  "$PYTHON" -m zipfile -e "$wheel" "$work/root/site" || fail "could not unpack $wheel"

  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -f "$keyring" ]] || fail "no Debian archive keyring at $keyring"
  printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' "$(mirror)" "$keyring" \
    >"$work/apt/etc/trixie.sources"
  local apt_options=(
    -o "Dir::Etc::sourcelist=$work/apt/etc/trixie.sources" -o "Dir::Etc::sourceparts=$work/apt/etc"
    -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache" -o "Dir::State::status=/dev/null"
    -o "APT::Architecture=amd64" -o "Debug::NoLocking=1"
  )
  apt-get "${apt_options[@]}" update >"$work/apt.log" 2>&1 \
    || fail "apt-get update (trixie, $(mirror)) failed: $(grep -E '^(E|W):' "$work/apt.log" | head -n1)"
  (cd "$work/debs" && apt-get "${apt_options[@]}" download "${PACKAGES[@]}" >>"$work/apt.log" 2>&1) \
    || fail "apt-get download ${PACKAGES[*]} (trixie) failed: $(grep -E '^E:' "$work/apt.log" | head -n1)"
  local deb
  for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/root" || fail "dpkg-deb -x $deb failed"; done
  rm -rf "$work/apt/lists" "$work/apt/cache"  # ~80 MB of package lists, not needed once unpacked

  local binary
  binary=$(find "$work/root/site" -type f -name perf_analyzer -perm -u+x 2>/dev/null | head -n1)
  [[ -n "$binary" ]] || binary=$(find "$work/root/site" -type f -name perf_analyzer | head -n1)
  [[ -n "$binary" ]] || fail "no perf_analyzer binary in $wheel"
  chmod +x "$binary"
  # Paths are stored relative to the cache, so the folder can be renamed into place below.
  echo "${binary#"$work"/}" >"$work/binary"
  rm -rf "$CACHE" && mv "$work" "$CACHE"
  # This build knows no --help (it prints the usage and exits 99); --version exits 0 once it loads.
  (run --version) >"$CACHE/version.out" 2>&1 \
    || { local reason; reason=$(tail -n1 "$CACHE/version.out"); rm -rf "$CACHE"; fail "perf_analyzer --version failed: $reason"; }
  date -u +%FT%TZ >"$CACHE/.complete"
}

run() {
  local root="$CACHE/root" binary
  binary="$CACHE/$(cat "$CACHE/binary")"
  local libs="$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu"
  # The wheel's own shared libraries (if any) beside the binary come first.
  local extra
  extra=$(find "$(dirname "$binary")" "$root/site" -maxdepth 3 -name '*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd: -)
  # trixie is merged-/usr: the loader is under usr/ there, under lib64/ on older releases.
  local loader candidate
  for candidate in "$root/usr/lib/x86_64-linux-gnu" "$root/usr/lib64" "$root/lib64"; do
    [[ -e "$candidate/ld-linux-x86-64.so.2" ]] && { loader="$candidate/ld-linux-x86-64.so.2"; break; }
  done
  [[ -n "${loader:-}" ]] || fail "no ld-linux-x86-64.so.2 in $root"
  exec "$loader" --library-path "${extra:+$extra:}$libs" "$binary" "$@"
}

if [[ ! -f "$CACHE/.complete" ]]; then
  prepare
fi
if [[ "${1:-}" == "--prepare-only" ]]; then
  echo "$CACHE"
  exit 0
fi
run "$@"
