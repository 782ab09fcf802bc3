#!/usr/bin/env bash
# tests/pg/cluster.sh — a local PostgreSQL primary with N streaming replicas, from the installed
# server binaries. Used by bench/quickstart.sh, the integration tests and bench/.
#
# Usage: tests/pg/cluster.sh COMMAND [--dir DIR] [--port PORT] [--replicas N]
#   up             create (first time) and start the primary and replicas; wait until every
#                  replica streams. Idempotent: running nodes are left alone.
#   down [--purge] stop every node (replicas first); --purge also deletes DIR
#   status         each node: port, running or not, role; exit 1 unless all run
#   env            the server's variables (DATABASE_URL, DB_READ_REPLICA_1..n), for `eval`
#   stop NODE      stop one node (`primary`, `replica1`, ...) with a fast shutdown
#   start NODE     start one stopped node again
#   sql NODE SQL   run SQL on a node's `coinbit` database with psql; prints the rows
# Options (or environment): --dir (PG_DIR, default /tmp/coinbit-pg-PORT), --port (PG_PORT, the
# primary's port, default 25432; replica i listens on PORT+i; keep below 32768, above it is the
# ephemeral range and a node may find its port taken), --replicas (PG_REPLICAS, default 3).
# As root, PostgreSQL refuses to run: the nodes run as the `postgres` user.
set -euo pipefail

die() { echo "cluster.sh: $*" >&2; exit 1; }

command=${1:-}
[ -n "$command" ] && shift
node_arg=""
sql_arg=""
case "$command" in
    stop|start) node_arg=${1:-}; [ -n "$node_arg" ] && shift ;;
    sql) node_arg=${1:-}; sql_arg=${2:-}; shift $(( $# < 2 ? $# : 2 )) ;;
esac
PORT=${PG_PORT:-25432}
REPLICAS=${PG_REPLICAS:-3}
DIR=${PG_DIR:-}
PURGE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) DIR=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --replicas) REPLICAS=$2; shift 2 ;;
        --purge) PURGE=1; shift ;;
        *) die "unknown argument: $1 (see the usage at the top of $0)" ;;
    esac
done
[[ "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number, got '$PORT'"
[[ "$REPLICAS" =~ ^[0-9]+$ ]] || die "--replicas must be a number, got '$REPLICAS'"
if [ "$PORT" -lt 1024 ] || [ $((PORT + REPLICAS)) -ge 32768 ]; then
    die "ports $PORT..$((PORT + REPLICAS)) must lie in 1024..32767 (above is the ephemeral range)"
fi
DIR=${DIR:-/tmp/coinbit-pg-$PORT}
case "$DIR" in /root|/root/*) die "--dir $DIR: the postgres user cannot enter /root; pick another" ;; esac
DB=coinbit

find_bin() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$found" ] && [ -x "$found/initdb" ]; then echo "$found"; return; fi
    found=$(command -v initdb 2>/dev/null || true)
    [ -n "$found" ] && { dirname "$found"; return; }
    die "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin and PATH).
Install them:  apt-get install -y postgresql   (Debian/Ubuntu; the service itself need not run)"
}

# PostgreSQL refuses to run as root: run its tools as the postgres user then.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user (apt-get install -y postgresql creates it)"
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

nodes() { echo primary; for i in $(seq 1 "$REPLICAS"); do echo "replica$i"; done; }
node_port() { if [ "$1" = primary ]; then echo "$PORT"; else echo $((PORT + ${1#replica})); fi; }
running() { [ -f "$DIR/$1/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$DIR/$1" status >/dev/null 2>&1; }
psql_at() { local port=$1; shift; "$BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -At "$@"; }

port_free() { [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

start_node() {
    local node=$1 port
    port=$(node_port "$node")
    running "$node" && return 0
    port_free "$port" || die "port $port (for $node) is taken by another program; pick another --port"
    # A daemon must not keep the caller's descriptors (a test's pipes, a bench's lock file):
    # close everything above stderr in the subshell that starts it.
    (
        for fd in $(ls /proc/$BASHPID/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done
        as_pg "$BIN/pg_ctl" -D "$DIR/$node" -l "$DIR/$node.log" -w -t 60 start >/dev/null
    ) || die "$node did not start on port $port; its log: $DIR/$node.log
$(tail -n 20 "$DIR/$node.log" 2>/dev/null)"
}

init_primary() {
    local data=$DIR/primary
    as_pg "$BIN/initdb" -D "$data" -U postgres --auth=trust --locale=C -E UTF8 >"$DIR/initdb.log" 2>&1 \
        || die "initdb failed; see $DIR/initdb.log"
    cat >>"$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$data'
wal_level = replica
max_wal_senders = $((REPLICAS + 5))
max_replication_slots = $((REPLICAS + 5))
hot_standby = on
max_connections = 200
cluster_name = 'primary'
# The tests count the statements each node ran (tests/database.rs, batched reads).
shared_preload_libraries = 'pg_stat_statements'
EOF
    cat >"$data/pg_hba.conf" <<EOF
local all all trust
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
local replication all trust
host replication all 127.0.0.1/32 trust
host replication all ::1/128 trust
EOF
}

init_replica() {
    local node=$1 port slot
    port=$(node_port "$node")
    slot="coinbit_$node"
    # A slot left by an earlier replica of this name would make -C fail.
    psql_at "$PORT" -d postgres -c "select pg_drop_replication_slot('$slot') from pg_replication_slots where slot_name = '$slot'" >/dev/null
    as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PORT" -U postgres -D "$DIR/$node" -R -X stream -C -S "$slot" -c fast \
        >"$DIR/$node.basebackup.log" 2>&1 || die "pg_basebackup of $node failed; see $DIR/$node.basebackup.log"
    cat >>"$DIR/$node/postgresql.auto.conf" <<EOF
port = $port
unix_socket_directories = '$DIR/$node'
cluster_name = '$node'
EOF
}

wait_streaming() {
    local want=$1 streaming=0
    for _ in $(seq 300); do
        streaming=$(psql_at "$PORT" -d postgres -c "select count(*) from pg_stat_replication where state = 'streaming'" 2>/dev/null || echo 0)
        [ "$streaming" -ge "$want" ] && return 0
        sleep 0.1
    done
    die "only $streaming of $want replicas stream after 30 s; logs in $DIR/*.log"
}

up() {
    mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres: "$DIR"
    chmod 700 "$DIR"
    if [ ! -f "$DIR/primary/PG_VERSION" ]; then
        rm -rf "$DIR/primary"
        init_primary
    fi
    start_node primary
    if [ "$(psql_at "$PORT" -d postgres -c "select count(*) from pg_database where datname = '$DB'")" = 0 ]; then
        psql_at "$PORT" -d postgres -c "create database $DB" >/dev/null
    fi
    for node in $(nodes); do
        [ "$node" = primary ] && continue
        if [ ! -f "$DIR/$node/PG_VERSION" ]; then
            rm -rf "${DIR:?}/$node"
            init_replica "$node"
        fi
        start_node "$node"
    done
    wait_streaming "$REPLICAS"
    echo "cluster up in $DIR: primary on $PORT, $REPLICAS replicas on $((PORT + 1))..$((PORT + REPLICAS))"
}

stop_node() {
    running "$1" || return 0
    as_pg "$BIN/pg_ctl" -D "$DIR/$1" -m fast -w -t 60 stop >/dev/null
}

down() {
    if [ -d "$DIR" ]; then
        for node in $(nodes | tac); do [ -d "$DIR/$node" ] && stop_node "$node"; done
    fi
    if [ "$PURGE" = 1 ]; then rm -rf "$DIR"; echo "cluster down, $DIR deleted"; else echo "cluster down ($DIR kept)"; fi
}

status() {
    local all=0 role
    for node in $(nodes); do
        port=$(node_port "$node")
        if running "$node"; then
            role=$(psql_at "$port" -d postgres -c "select case when pg_is_in_recovery() then 'replica' else 'primary' end" 2>/dev/null || echo unknown)
            echo "$node port=$port running role=$role"
        else
            echo "$node port=$port stopped"
            all=1
        fi
    done
    return $all
}

env_lines() {
    echo "DATABASE_URL=postgres://postgres@127.0.0.1:$PORT/$DB"
    for i in $(seq 1 "$REPLICAS"); do
        echo "DB_READ_REPLICA_$i=postgres://postgres@127.0.0.1:$((PORT + i))/$DB"
    done
}

check_node() {
    # (No `grep -q` in a pipe: under pipefail its early exit fails the pipe.)
    [[ " $(nodes | tr '\n' ' ') " == *" $1 "* ]] || die "no node '$1' (nodes: $(nodes | tr '\n' ' '))"
}

case "$command" in
    up) BIN=$(find_bin); up ;;
    down) BIN=$(find_bin); down ;;
    status) BIN=$(find_bin); status ;;
    env) env_lines ;;
    stop) BIN=$(find_bin); check_node "$node_arg"; stop_node "$node_arg" ;;
    start) BIN=$(find_bin); check_node "$node_arg"; start_node "$node_arg" ;;
    sql) BIN=$(find_bin); check_node "$node_arg"; [ -n "$sql_arg" ] || die "sql NODE SQL: no SQL given"
         psql_at "$(node_port "$node_arg")" -d "$DB" -v ON_ERROR_STOP=1 -c "$sql_arg" ;;
    *) die "usage: $0 up|down|status|env|stop NODE|start NODE|sql NODE SQL [--dir DIR] [--port PORT] [--replicas N]" ;;
esac
