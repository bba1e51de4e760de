#!/bin/sh
# Grafana with tierguard's provisioning. The files under provisioning/ are copied to
# $GF_PATHS_PROVISIONING, then a contact point is written for each alert channel whose
# variable is set (SLACK_WEBHOOK_URL, PAGERDUTY_ROUTING_KEY, TIERGUARD_WEBHOOK_URL: the same
# the policy's channels read) and a notification policy sends tierguard's rules
# (label service=tierguard) to all of them. Grafana refuses to start on a contact point
# whose setting is empty, so unset channels are left out; the files hold only ${VAR}
# references, which Grafana expands from its environment: no secret is written to disk.
set -eu

# The datasource's sslmode (provisioning/datasources/tierguard.yaml reads it): require unless set.
# Compose sets disable for its own PostgreSQL, which has no TLS and stays on the compose network.
TIERGUARD_PG_SSLMODE=${TIERGUARD_PG_SSLMODE:-require}
case "$TIERGUARD_PG_SSLMODE" in
  disable | require | verify-ca | verify-full) ;;
  *)
    echo "tierguard: TIERGUARD_PG_SSLMODE=$TIERGUARD_PG_SSLMODE: use disable, require, verify-ca or verify-full" >&2
    exit 1
    ;;
esac
export TIERGUARD_PG_SSLMODE

src=${TIERGUARD_GRAFANA_SRC:-/etc/tierguard-grafana/provisioning}
dst=${GF_PATHS_PROVISIONING:?GF_PATHS_PROVISIONING must name a writable folder}
rm -rf "$dst"
mkdir -p "$dst"
cp -R "$src"/. "$dst"/
mkdir -p "$dst/alerting"

points=""
names=""
add() {  # add NAME TYPE SETTINGS...
  name=$1 type=$2
  shift 2
  points="$points
  - orgId: 1
    name: $name
    receivers:
      - uid: $name
        type: $type
        settings:"
  for setting in "$@"; do
    points="$points
          $setting"
  done
  names="$names $name"
}

if [ -n "${SLACK_WEBHOOK_URL:-}" ]; then
  add tierguard-slack slack 'url: ${SLACK_WEBHOOK_URL}'
fi
if [ -n "${PAGERDUTY_ROUTING_KEY:-}" ]; then
  add tierguard-pagerduty pagerduty 'integrationKey: ${PAGERDUTY_ROUTING_KEY}' 'class: tierguard' \
    'component: tierguard'
fi
if [ -n "${TIERGUARD_WEBHOOK_URL:-}" ]; then
  add tierguard-webhook webhook 'url: ${TIERGUARD_WEBHOOK_URL}' 'httpMethod: POST'
fi

if [ -z "$names" ]; then
  echo "tierguard: no SLACK_WEBHOOK_URL, PAGERDUTY_ROUTING_KEY or TIERGUARD_WEBHOOK_URL set:" \
       "Grafana's alert rules (the backstop) reach no contact point" >&2
else
  first=$(echo $names | cut -d' ' -f1)
  {
    echo "# Written by entrypoint.sh at start from the channels set in the environment."
    echo "apiVersion: 1"
    echo "contactPoints:$points"
  } > "$dst/alerting/contact-points.yaml"
  {
    echo "# Written by entrypoint.sh: tierguard's rules go to every configured channel."
    echo "apiVersion: 1"
    echo "policies:"
    echo "  - orgId: 1"
    echo "    receiver: $first"
    echo "    group_by: [grafana_folder, alertname, category]"
    echo "    group_wait: 30s"
    echo "    group_interval: 5m"
    echo "    repeat_interval: 4h"
    echo "    routes:"
    for name in $names; do
      echo "      - receiver: $name"
      echo "        object_matchers: [[service, '=', tierguard]]"
      echo "        continue: true"
    done
  } > "$dst/alerting/policies.yaml"
fi

exec "${TIERGUARD_GRAFANA_RUN:-/run.sh}" "$@"
