#!/usr/bin/env bash
# Starts a Kafka-protocol broker for the `kafka` feature's tests and example:
# tansu 0.6.0 on 127.0.0.1:19092 with in-memory storage (nothing persists).
# Installs tansu with cargo if it is missing. Idempotent: if a broker already
# answers on the port, it does nothing.
#
# Environment: KAFKA_PORT (default 19092), TANSU_LOG (default /tmp/tansu.log).
set -euo pipefail

HOST=127.0.0.1
PORT="${KAFKA_PORT:-19092}"
LOG="${TANSU_LOG:-/tmp/tansu.log}"
VERSION=0.6.0

listening() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

if listening; then
    echo "kafka-broker: a broker already listens on $HOST:$PORT"
    exit 0
fi

TANSU="$(command -v tansu || true)"
if [ -z "$TANSU" ] && [ -x "$HOME/.cargo/bin/tansu" ]; then
    TANSU="$HOME/.cargo/bin/tansu"
fi
if [ -z "$TANSU" ]; then
    echo "kafka-broker: installing tansu $VERSION (cargo install, a few minutes)"
    cargo install tansu --version "$VERSION" --features dynostore --locked
    TANSU="$HOME/.cargo/bin/tansu"
fi

echo "kafka-broker: starting $TANSU on $HOST:$PORT (log: $LOG)"
nohup "$TANSU" broker \
    --listener-url "tcp://$HOST:$PORT" \
    --advertised-listener-url "tcp://$HOST:$PORT" \
    --storage-engine "memory://tansu/" \
    >"$LOG" 2>&1 </dev/null &
PID=$!

for _ in $(seq 1 100); do
    if listening; then
        echo "kafka-broker: tansu (pid $PID) listens on $HOST:$PORT"
        exit 0
    fi
    if ! kill -0 "$PID" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
echo "kafka-broker: tansu did not start on $HOST:$PORT; its log:" >&2
cat "$LOG" >&2
exit 1
