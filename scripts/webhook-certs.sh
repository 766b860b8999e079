#!/usr/bin/env bash
# Makes plexus-webhook's serving certificate without cert-manager: a CA and a key pair
# for plexus-webhook.kube-system.svc (openssl), stored as the Secret plexus-webhook-tls,
# the CA put in the caBundle of the webhook configurations of deploy/. Run again to
# renew: the webhook serves the new certificate without a restart.
# Needs kubectl with rights on kube-system and on the webhook configurations.
set -euo pipefail
ns=kube-system
svc=plexus-webhook
days=${DAYS:-365}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=plexus-webhook-ca" \
  -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$svc.$ns.svc" \
  -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s,DNS:%s.%s,DNS:%s.%s.svc\nextendedKeyUsage=serverAuth\n' \
  "$svc" "$svc" "$ns" "$svc" "$ns" > "$dir/ext"
openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
  -days "$days" -extfile "$dir/ext" -out "$dir/tls.crt" 2>/dev/null
kubectl -n "$ns" create secret tls plexus-webhook-tls --cert="$dir/tls.crt" --key="$dir/tls.key" \
  --dry-run=client -o yaml | kubectl apply -f -
bundle=$(base64 -w0 < "$dir/ca.crt")
for i in 0 1; do
  kubectl patch validatingwebhookconfiguration plexus --type=json \
    -p "[{\"op\":\"replace\",\"path\":\"/webhooks/$i/clientConfig/caBundle\",\"value\":\"$bundle\"}]"
done
if kubectl get mutatingwebhookconfiguration plexus-resources >/dev/null 2>&1; then
  kubectl patch mutatingwebhookconfiguration plexus-resources --type=json \
    -p "[{\"op\":\"replace\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"$bundle\"}]"
fi
echo "plexus-webhook: certificate valid for $days days, CA in the webhook configurations"
