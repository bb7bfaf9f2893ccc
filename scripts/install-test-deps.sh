#!/usr/bin/env bash
# Install the Debian packages the integration tests drive, when they are missing and we can.
# Idempotent and fast when everything is present. Never fails: tests that need a missing tool
# skip themselves with a printed reason.
set -uo pipefail

# package -> a file it provides (checked instead of dpkg, which is slow-ish and may be absent).
# libnbd-bin also ships nbdfuse and fuse3 ships fusermount3 (/bin): the FUSE tests (a cache file
# on a faulty disk, test/helpers/fuse.ts) need both, plus /dev/fuse. gnutls-bin's certtool and psktool
# make the TLS tests' certificates and keys (test/daemon-tls.test.ts). systemd ships systemd-notify
# (the sd_notify fallback) and systemd-analyze (checks config/pcached.service); it need not run.
declare -A PROVIDES=(
  [nbdkit]=/usr/bin/nbdkit
  [libnbd-bin]=/usr/bin/nbdinfo
  [python3-libnbd]=/usr/lib/python3/dist-packages/nbd.py
  [fio]=/usr/bin/fio
  [qemu-utils]=/usr/bin/qemu-img
  [fuse3]=/usr/bin/fusermount3
  [e2fsprogs]=/usr/sbin/mkfs.ext4
  [nbd-client]=/usr/sbin/nbd-client
  [gnutls-bin]=/usr/bin/certtool
  [systemd]=/usr/bin/systemd-analyze
)

missing=()
for pkg in nbdkit libnbd-bin python3-libnbd fio qemu-utils fuse3 e2fsprogs nbd-client gnutls-bin systemd; do
  f=${PROVIDES[$pkg]}
  if [[ -e $f ]]; then continue; fi
  # python3-libnbd may live under a versioned path
  if [[ $pkg == python3-libnbd ]] && compgen -G '/usr/lib/python3*/*-packages/nbd.py' >/dev/null; then continue; fi
  missing+=("$pkg")
done

if (( ${#missing[@]} == 0 )); then
  exit 0
fi

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "install-test-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || echo "install-test-deps: apt-get update failed" >&2
  if apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    exit 0
  fi
  # One unavailable package must not stop the others: retry one by one.
  failed=()
  for pkg in "${missing[@]}"; do
    apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1 || failed+=("$pkg")
  done
  if (( ${#failed[@]} )); then
    echo "install-test-deps: could not install ${failed[*]}; tests needing them will be skipped" >&2
  fi
  exit 0
fi

echo "install-test-deps: missing ${missing[*]} (not root or no apt-get); tests needing them will be skipped" >&2
exit 0
