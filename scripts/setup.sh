#!/usr/bin/env bash
# One idempotent setup for `npm start` and `npm test` on Debian 12 as root: Debian
# packages, npm packages, BPF objects, the TypeScript build. Fast when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'setup: %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { say "must run as root (it installs Debian packages and loads BPF programs)"; exit 2; }

mapfile -t pkgs < <(cat scripts/debian-packages.txt test/vm/deps.txt 2>/dev/null | sed 's/#.*//' | tr -s ' \t' '\n' | grep -v '^$' | sort -u)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=node_modules/.hvwatch-lock
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

make -s -C bpf
make -s -C test/helpers # the /dev/kvm test guest (tests and benchmarks)
npx --no-install tsc -p .

# libbpf finds tracepoints through tracefs; some hosts (and containers) do not mount it.
if [ ! -d /sys/kernel/tracing/events ] && [ ! -d /sys/kernel/debug/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || say "warning: could not mount tracefs; tracepoint probes will not attach"
fi
