#!/usr/bin/env bash
# System packages the project needs on a Debian machine (developer, CI): an MIT Kerberos KDC for the
# integration suite's throwaway realm, the Kerberos client tools, and the headers that the pinned
# gssapi/krb5 Python packages compile against (they ship no Linux wheels).
# Idempotent: does nothing when every package is installed; otherwise `apt-get update` once, then install.
set -euo pipefail

packages=(krb5-kdc krb5-admin-server krb5-user libkrb5-dev gcc)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "missing system packages: ${missing[*]} (install them with your package manager)" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing system packages: ${missing[*]}"
$sudo apt-get update -qq
# krb5-config asks for a default realm otherwise; the suite writes its own krb5.conf per run.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
