#!/usr/bin/env bash
# Checks the Dockerfile's runtime package list against what the services actually link: every
# shared library a binary needs (its NEEDED entries) must come from a listed package, and
# every listed library package must provide one of them. Runs on the build machine, which is
# Debian bookworm like the image, so `dpkg -S` names the same packages.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/build/bin}
listed=$(awk '/^FROM .* AS runtime/{rt=1} rt && /apt-get install/{on=1; next} on{print; if ($0 !~ /\\$/) on=0}' \
  "$root/Dockerfile" | tr ' \\&' '\n' | grep -E '^[a-z0-9][a-z0-9.+-]+$' | sort -u)
needed=()
for b in parley-auth parley-gateway parley-store parley-router parley; do
  [ -x "$bin/$b" ] || { echo "check-packages: $bin/$b is missing; build first" >&2; exit 1; }
  while read -r so; do needed+=("$so"); done < <(readelf -d "$bin/$b" | awk '/NEEDED/{gsub(/[][]/, "", $5); print $5}')
done
fail=0
used=()
for so in $(printf '%s\n' "${needed[@]}" | sort -u); do
  pkg=$(dpkg -S "*/$so" 2>/dev/null | head -1 | cut -d: -f1)
  [ -n "$pkg" ] || { echo "check-packages: no package provides $so" >&2; fail=1; continue; }
  used+=("$pkg")
  # libc6 is in every Debian image.
  if [ "$pkg" != libc6 ] && ! grep -qx "$pkg" <<<"$listed"; then
    echo "check-packages: $so comes from $pkg, which the runtime stage does not install" >&2
    fail=1
  fi
done
for pkg in $listed; do
  case "$pkg" in lib*) ;; *) continue ;; esac
  if ! printf '%s\n' "${used[@]}" | grep -qx "$pkg"; then
    echo "check-packages: the runtime stage installs $pkg, which no binary links" >&2
    fail=1
  fi
done
[ $fail -eq 0 ] && echo "check-packages: runtime packages match the binaries ($(printf '%s\n' "${used[@]}" | sort -u | tr '\n' ' '))"
exit $fail
