#!/bin/sh
# pg-ha-entrypoint.sh monitor | node NAME | rw
#   monitor   the pg_auto_failover monitor, with the tuned timeouts of deploy/pg-ha (health check
#             every 1 s, unhealthy after 5 s, 10 s for a primary to demote itself)
#   node NAME a PostgreSQL node (the first to register becomes primary, the next its synchronous
#             standby), database and user `leasehold`, trust on the compose network (--pg-hba-lan)
#   rw        HAProxy's read-write listener on 5432: only a node where `SHOW transaction_read_only`
#             is off takes connections; sessions of a node marked down are shut down
set -eu
pgdata=/var/lib/postgresql/pgaf/data
mkdir -p "$XDG_CONFIG_HOME" "$XDG_DATA_HOME"
case "${1:-}" in
monitor)
    if [ ! -f "$pgdata/PG_VERSION" ]; then
        pg_autoctl create monitor --pgdata "$pgdata" --pgport 5432 --hostname monitor --auth trust --no-ssl
        cat >>"$pgdata/postgresql.conf" <<'CONF'
pgautofailover.health_check_period = 1000
pgautofailover.health_check_timeout = 1000
pgautofailover.health_check_max_retries = 1
pgautofailover.health_check_retry_delay = 500
pgautofailover.node_considered_unhealthy_timeout = 5000
pgautofailover.primary_demote_timeout = 10000
CONF
    fi
    exec pg_autoctl run --pgdata "$pgdata"
    ;;
node)
    name=${2:?node NAME}
    if ! pg_autoctl config get --pgdata "$pgdata" pg_autoctl.role >/dev/null 2>&1; then
        pg_autoctl create postgres --pgdata "$pgdata" --pgport 5432 --hostname "$name" --name "$name" \
            --auth trust --no-ssl --pg-hba-lan --username leasehold --dbname leasehold \
            --monitor postgres://autoctl_node@monitor:5432/pg_auto_failover
        pg_autoctl config set --pgdata "$pgdata" timeout.network_partition_timeout 5
    fi
    exec pg_autoctl run --pgdata "$pgdata"
    ;;
rw)
    cat >/tmp/check-rw <<'CHECK'
#!/bin/sh
# HAProxy external check: $3 $4 are the server's address and port.
[ "$(psql "postgres://leasehold@$3:$4/leasehold?connect_timeout=1" -XAtc 'SHOW transaction_read_only' 2>/dev/null)" = off ]
CHECK
    chmod +x /tmp/check-rw
    cat >/tmp/haproxy.cfg <<'CFG'
global
    external-check
    insecure-fork-wanted

resolvers docker
    nameserver dns 127.0.0.11:53
    hold valid 1s

defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout check 2s

listen postgres_rw
    bind *:5432
    balance first
    option external-check
    external-check path "/usr/lib/postgresql/15/bin:/usr/bin:/bin"
    external-check command /tmp/check-rw
    default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions init-addr last,libc,none resolvers docker
    server node1 node1:5432 check
    server node2 node2:5432 check
CFG
    exec haproxy -db -f /tmp/haproxy.cfg
    ;;
*)
    echo "usage: pg-ha-entrypoint.sh monitor | node NAME | rw" >&2
    exit 2
    ;;
esac
