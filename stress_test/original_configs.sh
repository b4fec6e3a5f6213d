#!/usr/bin/env bash
# The original project's three locust configurations (50, 100 and 500 users, spawned 5 a second), headless,
# against the system `make run` starts. Writes stress_test/reports/users-<N>_*.csv and prints a summary.
#   stress_test/original_configs.sh            # 3 min at 50 and 100 users, 5 min at 500
#   DURATIONS="5m 5m 5m" stress_test/original_configs.sh   # the original's 5 minutes each
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
read -r -a durations <<< "${DURATIONS:-3m 3m 5m}"
users=(50 100 500)
log=stress_test/reports/system.log
$PY -m launcher >"$log" 2>&1 &
system=$!
trap 'kill -INT $system 2>/dev/null; wait $system 2>/dev/null || true' EXIT
for _ in $(seq 240); do
    curl -fs http://127.0.0.1:8000/readyz >/dev/null 2>&1 && curl -fs http://127.0.0.1:8001/readyz >/dev/null 2>&1 && break
    sleep 1
done
sleep 5  # the consumers settle into their group
for i in 0 1 2; do
    n=${users[$i]}
    echo "== $n users, spawn 5/s, ${durations[$i]} ($(date -u +%FT%TZ))"
    $PY -m locust -f stress_test/locustfile.py --headless -u "$n" -r 5 -t "${durations[$i]}" \
        --host http://localhost:8000 --csv "stress_test/reports/users-$n" --only-summary 2>&1 | tail -25
    sleep 10  # the backlog drains before the next level
done
