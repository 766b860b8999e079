#!/usr/bin/env bash
# A real kube-apiserver on this machine's loopback, for measuring against (plexus-bench
# --kubeconfig, plexus-conformance --kubeconfig): etcd and kube-apiserver as a kubeadm
# control plane runs them (HTTPS with an RSA 2048 serving certificate of a cluster CA,
# bearer-token authentication, RBAC), no controller manager, scheduler or kubelet, with
# the NetworkAttachmentDefinition CRD installed.
#
#   scripts/local-apiserver.sh start KUBE_APISERVER_BINARY DIR   # writes DIR/kubeconfig
#   scripts/local-apiserver.sh stop DIR
#
# kube-apiserver is not packaged by Debian; it builds from Debian's `kubernetes` source
# package (1.20): `apt-get source kubernetes`, then `make WHAT=cmd/kube-apiserver` in it
# (about 12 minutes on 2 cores). etcd comes from the `etcd-server` package.
# Without a controller manager nothing creates service-account tokens, so the
# ServiceAccount admission plugin is off; everything else is kube-apiserver's default.
set -euo pipefail

cmd=${1:-}
case "$cmd" in
start)
  bin=${2:?kube-apiserver binary}
  dir=${3:?work directory}
  ;;
stop)
  dir=${2:?work directory}
  for p in kube-apiserver etcd; do
    if [ -f "$dir/$p.pid" ]; then
      kill "$(cat "$dir/$p.pid")" 2>/dev/null || true
      rm -f "$dir/$p.pid"
    fi
  done
  exit 0
  ;;
*)
  echo "usage: $0 start KUBE_APISERVER_BINARY DIR | stop DIR" >&2
  exit 2
  ;;
esac

command -v etcd >/dev/null || { echo "etcd is missing: apt-get install etcd-server" >&2; exit 1; }
command -v openssl >/dev/null || { echo "openssl is missing: apt-get install openssl" >&2; exit 1; }
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir/pki" "$dir/etcd"
cd "$dir"
pki=$dir/pki

# The cluster CA and the serving certificate, RSA 2048 as kubeadm makes them.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=kubernetes" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
  -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default\nextendedKeyUsage=serverAuth\n' > "$pki/san.ext"
openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
  -CAcreateserial -days 2 -extfile "$pki/san.ext" -out "$pki/apiserver.crt" 2>/dev/null
# Service-account token signing keys.
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
# An administrator's bearer token (system:masters).
token=$(openssl rand -hex 16)
echo "$token,admin,admin,system:masters" > "$pki/tokens.csv"

etcd --data-dir "$dir/etcd" --listen-client-urls http://127.0.0.1:2379 \
  --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
  > "$dir/etcd.log" 2>&1 &
echo $! > "$dir/etcd.pid"

"$bin" --etcd-servers=http://127.0.0.1:2379 --bind-address=127.0.0.1 --secure-port=6443 \
  --advertise-address=127.0.0.1 \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" --token-auth-file="$pki/tokens.csv" \
  --authorization-mode=Node,RBAC --disable-admission-plugins=ServiceAccount \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range=10.96.0.0/12 --allow-privileged=true \
  > "$dir/kube-apiserver.log" 2>&1 &
echo $! > "$dir/kube-apiserver.pid"

cat > "$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: local
  context: {cluster: local, user: admin}
current-context: local
EOF

for _ in $(seq 120); do
  if curl -sf --cacert "$pki/ca.crt" -H "Authorization: Bearer $token" \
      https://127.0.0.1:6443/readyz >/dev/null 2>&1; then
    break
  fi
  sleep 1
done
curl -sf --cacert "$pki/ca.crt" -H "Authorization: Bearer $token" https://127.0.0.1:6443/readyz >/dev/null \
  || { echo "kube-apiserver did not become ready; see $dir/kube-apiserver.log" >&2; exit 1; }
curl -sf --cacert "$pki/ca.crt" -H "Authorization: Bearer $token" -H "Content-Type: application/yaml" \
  -X POST --data-binary @"$root/deploy/crd.yaml" \
  https://127.0.0.1:6443/apis/apiextensions.k8s.io/v1/customresourcedefinitions >/dev/null
# The CRD's API is served a moment after it is created.
for _ in $(seq 30); do
  if curl -sf --cacert "$pki/ca.crt" -H "Authorization: Bearer $token" \
      https://127.0.0.1:6443/apis/k8s.cni.cncf.io/v1 >/dev/null 2>&1; then
    echo "kube-apiserver ready: $dir/kubeconfig"
    exit 0
  fi
  sleep 1
done
echo "the NetworkAttachmentDefinition API was not served; see $dir/kube-apiserver.log" >&2
exit 1
