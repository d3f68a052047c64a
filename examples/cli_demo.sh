#!/usr/bin/env bash
# The konductor command, on the local store: no cluster needed.
#
#   examples/cli_demo.sh            # a fresh temporary store file
#   examples/cli_demo.sh my.db      # or this SQLite file
#
# Every `konductor` below is a process of its own. They coordinate through one
# local store file exactly as pods coordinate through the Kubernetes API: on a
# cluster, drop KONDUCTOR_STORE and pass --kubeconfig/--namespace (or nothing,
# inside a pod). KONDUCTOR names the command (default `konductor`; the tests
# run it as `python -m konductor`).
set -euo pipefail

KONDUCTOR=${KONDUCTOR:-konductor}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export KONDUCTOR_STORE="local:${1:-$work/konductor.db}"
k() { $KONDUCTOR "$@"; }

echo "== 1. semaphore: 5 jobs, at most 2 at a time (a cluster-wide flock)"
k semaphore create reports --permits 2
for i in 1 2 3 4 5; do
  k semaphore run reports -- sh -c \
    "echo start >> $work/log; sleep 1; echo end >> $work/log; echo \"job $i ran with token \$KONDUCTOR_FENCING_TOKEN\"" &
done
sleep 1.5
k status # holders and waiters, each with its TTL and last renewal
wait
# The jobs' own log is the witness: how many were ever inside at once?
echo "peak concurrency: $(awk '/start/ {n++; if (n > m) m = n} /end/ {n--} END {print m}' "$work/log")"

echo "== 2. barrier: three workers start together"
for w in a b c; do
  k barrier arrive start-line --expected 3 --party "worker-$w" --wait --timeout 60 &
done
wait
k barrier status start-line

echo "== 3. once: the migration runs once, however often it is called"
k once run migrate -- echo "migrating the schema"
k once run migrate -- echo "migrating the schema" # already done: does not run again
k once status migrate

echo "== 4. lease: one leader at a time"
k lease run scheduler -- sh -c 'echo "leading with token $KONDUCTOR_FENCING_TOKEN"'
k lease status scheduler

echo "== 5. gate: the deploy waits until someone opens it"
k gate wait deploy --timeout 60 &
waiter=$!
sleep 1
k gate open deploy
wait "$waiter"

echo "== 6. exit codes"
set +e
k semaphore run reports -- sh -c 'exit 7'
echo "the command's own code: $?"
k barrier wait nobody-comes --timeout 0.5 2>/dev/null
echo "timeout: $?"
k semaphore get Not_A_Name 2>/dev/null
echo "usage error: $?"
set -e

echo "== 7. everything in the namespace"
k status

echo "== 8. watch who holds and who waits, then one object's full story"
# (Started as plain commands, not through k(), so that $! is konductor's own pid.)
$KONDUCTOR status --watch -o json > "$work/watch.jsonl" & # a JSON line after every change
watcher=$!
until [ -s "$work/watch.jsonl" ]; do sleep 0.1; done
$KONDUCTOR semaphore acquire reports --count 2 > /dev/null 2>&1 & # holds both permits until stopped
holder=$!
until k describe semaphore reports -o json | grep -q '"role": "holder"'; do sleep 0.2; done
k semaphore acquire reports --for 0 > /dev/null 2>&1 & # queues behind it
waiter=$!
until k describe semaphore reports -o json | grep -q '"role": "waiting"'; do sleep 0.2; done
k describe semaphore reports # the holder, the waiter at queue position 1, tokens, expiries
kill -TERM "$holder" # Ctrl-C / SIGTERM releases: the waiter gets the permits
wait "$holder" "$waiter"
until tail -n 1 "$work/watch.jsonl" | grep -q '"state": "0/2 in use"'; do sleep 0.2; done
kill -TERM "$watcher"
wait "$watcher"
echo "the watch printed $(grep -c '"position": 1' "$work/watch.jsonl") line(s) with a waiter at queue position 1"
