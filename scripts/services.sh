#!/usr/bin/env bash
# Start the local services the tests use, where they are not already running:
# PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379). Idempotent.
set -euo pipefail
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if up 6379; then echo "redis: running"; else
  if ! command -v redis-server >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
  fi
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/konductor-ci.log
  for _ in $(seq 50); do up 6379 && break; sleep 0.1; done
  up 6379 && echo "redis: started" || { echo "redis: could not start" >&2; exit 1; }
fi

if up 5432; then echo "postgresql: running"; else
  if ! ls /etc/postgresql >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
  fi
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  for _ in $(seq 100); do up 5432 && break; sleep 0.1; done
  up 5432 && echo "postgresql: started" || { echo "postgresql: could not start" >&2; exit 1; }
fi
