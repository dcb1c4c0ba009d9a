#!/usr/bin/env bash
# Installs the system tools kube-proxy-rs and its tests use, if missing (Debian/Ubuntu, as root).
set -euo pipefail
need=()
for pair in nft:nftables iptables:iptables conntrack:conntrack ipset:ipset ip:iproute2 sysctl:procps; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
