#!/usr/bin/env bash
# Node CPU time per request of one workload: steadier than req/s on a busy
# machine, since it counts only what the service's process spent.
#
#   DATABASE_URL=<a migrated, seeded database> bench/cpu-per-request.sh w2-list-users.lua [seconds]
#
# Starts dist/server.js (npm run build first) on a free loopback port,
# warms up 2 s, then reads the process's user + system time around a wrk
# run (1 thread, 64 connections) and divides by the requests answered.
# Extra settings go in the environment (WEB_CONCURRENCY is not counted:
# one process only). PEER=express measures bench/peers/express.js instead,
# It also counts the CPU of every postgres process on this machine over
# the same run (a local database server; root reads them all).
# CPU_PROFILE=<folder> runs the service with node --cpu-prof into it (the
# profile is written when the service stops); bench/profile-summary.js
# reads it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
script=${1:?a wrk script from bench/wrk, such as w1-get-user.lua}
seconds=${2:-8}
port=$(node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")
if [[ "${PEER:-}" == express ]]; then
  NODE_ENV=production PORT=$port node "$root/bench/peers/express.js" > /dev/null 2>&1 &
else
  NODE_ENV=production LOG_LEVEL=warn HOST=127.0.0.1 PORT=$port MIGRATE_ON_START=false AUTH_MODE=${AUTH_MODE:-none} \
    node --max-semi-space-size=4 ${CPU_PROFILE:+--cpu-prof --cpu-prof-dir="$CPU_PROFILE"} "$root/dist/server.js" > /dev/null 2>&1 &
fi
pid=$!
# The service writes its profile on the way out: wait for it.
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do curl -sf "http://127.0.0.1:$port/health/ready" > /dev/null && break; sleep 0.2; done
wrk -t1 -c64 -d2s -s "$root/bench/wrk/$script" "http://127.0.0.1:$port/" -- warm > /dev/null
# The database's CPU: every postgres process's user + system ticks (its backends serve this run).
# A process that ends between the glob and cat makes cat fail: not a failure of the run.
postgres_ticks () { { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '$2 == "(postgres)" { sum += $14 + $15 } END { print sum + 0 }'; }
read -r user1 system1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
pg1=$(postgres_ticks)
output=$(wrk -t1 -c64 -d"${seconds}s" -s "$root/bench/wrk/$script" "http://127.0.0.1:$port/" -- measured)
read -r user2 system2 < <(awk '{print $14, $15}' "/proc/$pid/stat")
pg2=$(postgres_ticks)
requests=$(grep -oP '^\s*\K\d+(?= requests in)' <<< "$output")
awk -v ticks=$((user2 + system2 - user1 - system1)) -v pg=$((pg2 - pg1)) -v hz="$(getconf CLK_TCK)" -v n="$requests" -v s="$seconds" \
  'BEGIN { printf "%d requests, %.0f req/s, node CPU %.3f ms a request, PostgreSQL CPU %.3f ms a request\n", n, n / s, ticks * 1000 / hz / n, pg * 1000 / hz / n }'
