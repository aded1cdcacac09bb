#!/bin/sh
# Installs the Debian 12 packages attend builds with, only those missing (nothing when all are
# present); uses sudo when not run as root.
set -eu
pkgs="cmake g++ make libeigen3-dev libxsimd-dev libgtest-dev libbenchmark-dev $*"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
