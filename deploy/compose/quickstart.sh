#!/usr/bin/env bash
# One command: start the quick start (compose.yaml), then print a token and the DSNs to try.
#   ./quickstart.sh            start (building the image) and print
#   ./quickstart.sh --print    print only (the stack is already up)
# HOOPWIRE_CMD (default: hoopwire inside the running container) mints the token; tests point
# it at a local `hoopwire` with HOOPWIRE_DEVKEY at a key of their own.
set -euo pipefail
cd "$(dirname "$0")"

COMPOSE=${COMPOSE:-docker compose}
HOOPWIRE_CMD=${HOOPWIRE_CMD:-$COMPOSE exec -T hoopwire hoopwire}
HOOPWIRE_DEVKEY=${HOOPWIRE_DEVKEY:-/devkey/dev-key.pem}
HOST=${HOOPWIRE_HOST:-localhost}
PORT=${HOOPWIRE_PORT:-6432}
ADMIN=${HOOPWIRE_ADMIN:-http://localhost:9187}

if [ "${1:-}" != "--print" ]; then
    # --wait: until every service is healthy or has exited 0 (devkey)
    $COMPOSE up -d --build --wait
fi

token() {   # subject groups audience
    $HOOPWIRE_CMD token --key "$HOOPWIRE_DEVKEY" --subject "$1" --groups "$2" --audience "$3" --ttl 1h
}
AGENT=$(token agent-7 agents hoopwire)
ADMIN_TOKEN=$(token alice platform hoopwire-admin)   # the admin API's audience

cat <<TXT
A token for agent-7 (group agents, valid 1 h):
$AGENT

Try (the token is the password):
  psql "host=$HOST port=$PORT dbname=orders user=agent-7 sslmode=disable password=$AGENT" -c 'SELECT * FROM customers'
  psql "postgresql://agent-7:$AGENT@$HOST:$PORT/orders?sslmode=disable" -c 'DROP TABLE customers'   # refused by destructive-ddl
  psql "postgresql://agent-7:$AGENT@$HOST:$PORT/orders?sslmode=disable" -c 'DELETE FROM customers WHERE id = 2'   # held for approval

Approve it as alice (group platform): list what is held, then approve its id
  curl -s -H "Authorization: Bearer $ADMIN_TOKEN" $ADMIN/api/v1/approvals
  curl -s -X POST -H "Authorization: Bearer $ADMIN_TOKEN" $ADMIN/api/v1/approvals/<id>/approve

MariaDB and an HTTP service, reachable directly (this config fronts only PostgreSQL; hoopwire
fronts both too: see \`hoopwire demo mysql\` and \`hoopwire demo http\`):
  mysql://app:app-dev-password@$HOST:3306/orders      http://$HOST:8080/
Metrics: $ADMIN/metrics    Prometheus: http://$HOST:9090
TXT
