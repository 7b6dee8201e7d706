#!/usr/bin/env bash
# Redis (6379) and RabbitMQ (5672) on loopback, started only when nothing answers there.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

redis_answers() {
    local reply=""
    { exec 3<>/dev/tcp/127.0.0.1/6379; } 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    read -r -t 2 reply <&3 || true
    exec 3>&-
    [[ $reply == "+PONG"* ]]
}
port_open() { { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null && exec 3>&-; }

wait_for() {  # SECONDS WHAT CMD...
    local limit="$1" what="$2"
    shift 2
    local i
    for ((i = 0; i < limit * 4; i++)); do
        "$@" && return 0
        sleep 0.25
    done
    die "$what did not answer within ${limit}s"
}

if redis_answers; then
    say "redis: answering on 127.0.0.1:6379"
else
    say "redis: starting"
    install -d /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log 9>&- || die "redis-server failed to start (see /var/log/redis/ci.log)"
    wait_for 20 "redis on 127.0.0.1:6379" redis_answers
    info "redis answering"
fi

if port_open 5672; then
    say "rabbitmq: answering on 127.0.0.1:5672"
else
    say "rabbitmq: starting (takes a few seconds)"
    rabbitmq-server -detached </dev/null >/dev/null 2>&1 9>&- || die "rabbitmq-server -detached failed"
    wait_for 120 "rabbitmq on 127.0.0.1:5672" port_open 5672
    info "rabbitmq answering"
fi
