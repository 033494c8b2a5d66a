#!/usr/bin/env bash
# Multi-zone quickstart on this machine, on the embedded SQLite store, following the seed's
# Universal steps: builds the binaries, starts a global control plane and two zone control planes,
# a mesh with mTLS, a zone ingress per zone (zone tokens from global), an echo service behind a
# kuma-dp sidecar in zone-1 and a client sidecar in zone-2 whose outbound (localhost:20012) reaches
# the echo service across zones (client sidecar -> zone-1 ingress -> echo sidecar, mTLS end to
# end). Prints `kumactl get zones`, `inspect zones`, `inspect services`, `inspect zoneingresses`
# from global and the zone-2 `.mesh` DNS answer, then stays up until Ctrl-C (and cleans up).
set -euo pipefail
cd "$(dirname "$0")/.."

# MESHZONE_QUICKSTART_BIN_DIR: run binaries built elsewhere (the test of this script does).
if [ -n "${MESHZONE_QUICKSTART_BIN_DIR:-}" ]; then
  bin="$MESHZONE_QUICKSTART_BIN_DIR"
else
  cargo build --workspace --bins
  bin="${CARGO_TARGET_DIR:-$PWD/target}/debug"
fi
work="$(mktemp -d /tmp/meshzone-quickstart.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

wait_ready() { # url, log
  for _ in $(seq 1 200); do
    curl -sf "$1" >/dev/null && return 0
    sleep 0.1
  done
  echo "not ready: $1"; cat "$2"; exit 1
}

echo "==> global control plane (API :5681, KDS :5685)"
mkdir -p "$work/global"
HOME="$work/global" KUMA_MODE=global "$bin/kuma-cp" run 2>"$work/global.log" &
pids+=($!)
wait_ready http://127.0.0.1:5680/ready "$work/global.log"

for z in 1 2; do
  echo "==> zone-$z control plane (API :${z}5681, xDS :${z}5678)"
  mkdir -p "$work/zone-$z"
  HOME="$work/zone-$z" KUMA_MODE=zone KUMA_MULTIZONE_ZONE_NAME="zone-$z" \
    KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS=grpcs://127.0.0.1:5685 \
    KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE="$work/global/.kuma/kuma-cp.crt" \
    KUMA_API_SERVER_HTTP_PORT="${z}5681" KUMA_API_SERVER_HTTPS_PORT="${z}5682" KUMA_DIAGNOSTICS_SERVER_PORT="${z}5680" \
    KUMA_DP_SERVER_PORT="${z}5678" KUMA_DNS_SERVER_PORT="${z}5653" "$bin/kuma-cp" run 2>"$work/zone-$z.log" &
  pids+=($!)
  wait_ready "http://127.0.0.1:${z}5680/ready" "$work/zone-$z.log"
done

export HOME="$work"   # kumactl's config lives here
kumactl() { "$bin/kumactl" "$@"; }
kumactl config control-planes add --name global --address http://127.0.0.1:5681

echo "==> a mesh with mTLS, applied on global"
kumactl apply -f - <<'YAML'
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
    - name: ca-1
      type: builtin
YAML

echo "==> zone ingresses: one per zone, registered with a zone token generated on global"
for z in 1 2; do
  kumactl generate zone-token --zone="zone-$z" --scope egress --scope ingress > "$work/zone-$z.token"
  cat > "$work/ingress-$z.yaml" <<YAML
type: ZoneIngress
name: ingress-0$z
networking:
  address: 127.0.0.1
  port: 1000$z
  advertisedAddress: 127.0.0.1
  advertisedPort: 1000$z
YAML
  HOME="$work/zone-$z" "$bin/kuma-dp" run --proxy-type=ingress --cp-address="https://127.0.0.1:${z}5678" \
    --dataplane-token-file="$work/zone-$z.token" --ca-cert-file="$work/zone-$z/.kuma/kuma-cp.crt" \
    --dataplane-file="$work/ingress-$z.yaml" --admin-port="1990$z" 2>"$work/ingress-$z.log" &
  pids+=($!)
  wait_ready "http://127.0.0.1:1990$z/ready" "$work/ingress-$z.log"
done

echo "==> echo app + sidecar in zone-1, a client sidecar in zone-2"
mkdir -p "$work/app" && echo "hello from echo-server in zone-1" > "$work/app/index.html"
python3 -m http.server 18080 --bind 127.0.0.1 --directory "$work/app" >/dev/null 2>&1 &
pids+=($!)
for z in 1 2; do
  "$bin/kumactl" --config-file "$work/zone-$z.kumactl" config control-planes add --name "zone-$z" --address "http://127.0.0.1:${z}5681" >/dev/null
done
"$bin/kumactl" --config-file "$work/zone-1.kumactl" generate dataplane-token --name echo-server-1 > "$work/echo.token"
"$bin/kumactl" --config-file "$work/zone-2.kumactl" generate dataplane-token --name client-1 > "$work/client.token"
cat > "$work/echo.yaml" <<'YAML'
type: Dataplane
mesh: default
name: echo-server-1
networking:
  address: 127.0.0.1
  inbound:
    - port: 10011
      servicePort: 18080
      tags:
        kuma.io/service: echo-server_echo-example_svc_1010
        kuma.io/protocol: http
YAML
cat > "$work/client.yaml" <<'YAML'
type: Dataplane
mesh: default
name: client-1
networking:
  address: 127.0.0.1
  inbound:
    - port: 10021
      servicePort: 18081
      tags:
        kuma.io/service: client
  outbound:
    - port: 20012
      tags:
        kuma.io/service: echo-server_echo-example_svc_1010
YAML
for dp in echo client; do
  z=$([ "$dp" = echo ] && echo 1 || echo 2)
  port=$([ "$dp" = echo ] && echo 19911 || echo 19912)
  HOME="$work/zone-$z" "$bin/kuma-dp" run --cp-address="https://127.0.0.1:${z}5678" \
    --ca-cert-file="$work/zone-$z/.kuma/kuma-cp.crt" --dataplane-file="$work/$dp.yaml" \
    --dataplane-token-file="$work/$dp.token" --admin-port="$port" 2>"$work/$dp-dp.log" &
  pids+=($!)
  wait_ready "http://127.0.0.1:$port/ready" "$work/$dp-dp.log"
done

echo "==> cross-zone requests from zone-2 (client sidecar -> zone-1 ingress -> echo sidecar -> app)"
for i in 1 2 3; do
  for _ in $(seq 1 100); do
    if out=$(curl -sf -m 2 http://127.0.0.1:20012/); then echo "  $i: $out"; break; fi
    sleep 0.1
  done
done

sleep 1.5  # let the proxies' insights reach global (written at most once a second)
echo "==> kumactl get zones (global)";       kumactl get zones
echo "==> kumactl inspect zones (global)";   kumactl inspect zones
echo "==> kumactl inspect services (global)"; kumactl inspect services
echo "==> kumactl inspect zoneingresses (global)"; kumactl inspect zoneingresses
echo
echo "==> .mesh DNS of zone-2 (UDP 25653) for the zone-1 service: echo-server_echo-example_svc_1010.mesh"
if command -v dig >/dev/null; then
  dig @127.0.0.1 -p 25653 +short echo-server_echo-example_svc_1010.mesh echo-server.echo-example.svc.1010.mesh
fi
echo
echo "Global API http://127.0.0.1:5681, zone-1 API http://127.0.0.1:15681, zone-2 API http://127.0.0.1:25681"
echo "kumactl is configured (HOME=$work). Press Ctrl-C to stop and clean up."
wait
