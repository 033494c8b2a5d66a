#!/usr/bin/env bash
# Quickstart: builds the binaries, starts a control plane on the embedded SQLite store, applies
# the seed's example resources with kumactl, shows them, and stays up until Ctrl-C.
#
# Today this is a single (standalone) zone: global/zone sync over KDS and cross-zone traffic are
# being built (see docs/STATUS.md); the script will grow into the full multi-zone walkthrough.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins
bin="$PWD/target/debug"
work="$(mktemp -d /tmp/meshzone-quickstart.XXXXXX)"
export HOME="$work"            # kumactl config and the CP work dir (~/.kuma) live here
api_port="${KUMA_API_SERVER_HTTP_PORT:-5681}"

cleanup() {
  [ -n "${cp_pid:-}" ] && kill "$cp_pid" 2>/dev/null && wait "$cp_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

echo "==> starting kuma-cp (zone, store: sqlite in $work/.kuma)"
KUMA_MODE=zone KUMA_API_SERVER_HTTP_PORT="$api_port" "$bin/kuma-cp" run 2>"$work/kuma-cp.log" &
cp_pid=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:${KUMA_DIAGNOSTICS_SERVER_PORT:-5680}/ready" >/dev/null && break
  kill -0 "$cp_pid" 2>/dev/null || { cat "$work/kuma-cp.log"; exit 1; }
  sleep 0.1
done

"$bin/kumactl" config control-planes add --name quickstart --address "http://127.0.0.1:$api_port"

echo "==> kumactl apply"
"$bin/kumactl" apply -f - <<'YAML'
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
    - name: ca-1
      type: builtin
---
type: Dataplane
mesh: default
name: echo-server-1
networking:
  address: 127.0.0.1
  inbound:
    - port: 10011
      servicePort: 1010
      tags:
        kuma.io/service: echo-server_echo-example_svc_1010
---
type: Dataplane
mesh: default
name: client-1
networking:
  address: 127.0.0.1
  inbound:
    - port: 10021
      servicePort: 2020
      tags:
        kuma.io/service: client
  outbound:
    - port: 20012
      tags:
        kuma.io/service: echo-server_echo-example_svc_1010
YAML

echo "==> kumactl get meshes";        "$bin/kumactl" get meshes
echo "==> kumactl get dataplanes";    "$bin/kumactl" get dataplanes
echo "==> kumactl inspect services";  "$bin/kumactl" inspect services
echo
echo "kuma-cp API: http://127.0.0.1:$api_port  (kumactl is configured; HOME=$work)"
echo "Press Ctrl-C to stop and clean up."
wait "$cp_pid"
