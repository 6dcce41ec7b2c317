#!/usr/bin/env bash
# Starts or stops a local memdb cluster in the background.
#
#   scripts/cluster.sh start network   # leader :8080 + network replicas :8081-8083
#   scripts/cluster.sh start local     # leader :8080 + local (mmap) replicas :8081-8083
#   scripts/cluster.sh start ha        # raft group: voters :8080 :8180 :8280, each with
#                                      # a local replica one port up (:8081 :8181 :8281)
#   scripts/cluster.sh start tls       # leader :8080, network replicas :8081 :8082 and a
#                                      # local replica :8083, all HTTPS with mutual TLS
#                                      # between nodes and a token (certs from a throwaway
#                                      # CA made by `memdb certs` on first start)
#   scripts/cluster.sh stop network|local|ha|tls
#   scripts/cluster.sh running network|local|ha|tls   # exit 0 if any of its processes runs
#   scripts/cluster.sh revive ha N     # start voter N again (after it was killed)
#   scripts/cluster.sh leader ha       # print the id of the voter that leads
#
# Everything lives under $MEMDB_RUN_DIR/<mode> (default ./run/<mode>): data/, logs/,
# pids/. Processes are stopped by the PIDs recorded at start, never by name.
set -euo pipefail

action=${1:-}
mode=${2:-network}
case "$action:$mode" in
  start:network | stop:network | start:local | stop:local | running:network | running:local) ;;
  start:tls | stop:tls | running:tls) ;;
  start:ha | stop:ha | running:ha | revive:ha | leader:ha) ;;
  *) echo "usage: $0 start|stop|running network|local|ha|tls; $0 revive ha N; $0 leader ha" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${MEMDB_BIN:-$root/target/release/memdb}
run=${MEMDB_RUN_DIR:-$root/run}/$mode
host=127.0.0.1
leader_port=${MEMDB_LEADER_PORT:-8080}
replica_ports=${MEMDB_REPLICA_PORTS:-"8081 8082 8083"}
# The TLS cluster's certificates and token live beside its data; curl trusts its CA.
scheme=http
curl_tls=()
if [ "$mode" = tls ]; then
  scheme=https
  curl_tls=(--cacert "$run/certs/ca.pem")
fi

# The make target that stops a cluster of this mode.
stop_target() {
  case "$1" in
    network) echo stop-servers ;;
    local) echo stop-servers-local-replicas ;;
    *) echo "stop-servers-$1" ;;
  esac
}

# " <mode> ('make <target>')" for each cluster of any mode with a live recorded PID.
running_clusters() {
  local m f
  for m in network local ha tls; do
    for f in "${MEMDB_RUN_DIR:-$root/run}/$m"/pids/*.pid; do
      if [ -f "$f" ] && pid_alive "$(cat "$f")"; then
        printf " %s ('make %s')" "$m" "$(stop_target "$m")"
        break
      fi
    done
  done
}

pid_alive() {
  # Alive, and still our binary (a PID can be reused after a crash). The exe link,
  # not cmdline: cmdline reads empty for a moment while a process execs, and a dead
  # process (a zombie too) has no exe link at all.
  local pid=$1
  readlink "/proc/$pid/exe" 2>/dev/null | grep -q "memdb"
}

stop_all() {
  local stopped=0
  shopt -s nullglob
  for f in "$run"/pids/*.pid; do
    local pid name
    pid=$(cat "$f")
    name=$(basename "$f" .pid)
    if pid_alive "$pid"; then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do pid_alive "$pid" || break; sleep 0.1; done
      if pid_alive "$pid"; then
        echo "$name (pid $pid) did not stop within 10s; sending SIGKILL" >&2
        kill -KILL "$pid" || true
      fi
      echo "stopped $name (pid $pid)"
      stopped=$((stopped + 1))
    fi
    rm -f "$f"
  done
  [ "$stopped" -gt 0 ] || echo "nothing was running under $run"
}

any_running() {
  shopt -s nullglob
  for f in "$run"/pids/*.pid; do
    pid_alive "$(cat "$f")" && return 0
  done
  return 1
}

# Waits until the process we started answers /health itself (its pid is in the
# answer: another process on the same port does not count). Fails as soon as the
# process exits, showing why.
wait_healthy() {
  local name=$1 url=$2 pid
  pid=$(cat "$run/pids/$name.pid")
  for _ in $(seq 1 300); do
    if ! pid_alive "$pid"; then
      echo "$name (pid $pid) exited during start:" >&2
      tail -n 20 "$run/logs/$name.log" >&2 || true
      return 1
    fi
    if curl -sS --max-time 1 "${curl_tls[@]}" "$url/health" 2>/dev/null | grep -q "\"pid\":$pid[,}]"; then
      return 0
    fi
    sleep 0.1
  done
  echo "$name (pid $pid) at $url did not become healthy within 30s; last log lines:" >&2
  tail -n 20 "$run/logs/$name.log" >&2 || true
  return 1
}

start_one() {
  local name=$1 pid; shift
  RUST_BACKTRACE=0 nohup "$bin" "$@" >"$run/logs/$name.log" 2>&1 &
  pid=$!
  echo "$pid" >"$run/pids/$name.pid"
  # Return once the child runs memdb (or has died): until its exec, /proc shows this
  # shell and then nohup, which every later check would take for a dead process.
  for _ in $(seq 1 500); do
    if pid_alive "$pid" || ! kill -0 "$pid" 2>/dev/null; then return 0; fi
    sleep 0.01
  done
}

# Something (another cluster, another program) already listens on a port we need.
port_taken() {
  (exec 3<>"/dev/tcp/$host/$1") 2>/dev/null
}

voter_ports=${MEMDB_VOTER_PORTS:-"8080 8180 8280"}
peers=""
id=0
for p in $voter_ports; do
  id=$((id + 1))
  peers="$peers${peers:+,}$id=http://$host:$p"
done

# The leader id voter $1 names in /health, or nothing.
leader_named_by() {
  curl -sS --max-time 1 "http://$host:$1/health" 2>/dev/null |
    grep -o '"leader_id":[0-9]*' | head -n 1 | cut -d: -f2
}

# The id of the voter that the first voter answering names as leader, or nothing.
current_leader() {
  local p
  for p in $voter_ports; do
    leader_named_by "$p" && return 0
  done
  return 1
}

# The leader's id once every voter names the same one, or nothing: until then a
# follower that has not heard from the leader answers a write with 503 no_leader
# rather than a redirect.
agreed_leader() {
  local p id agreed=""
  for p in $voter_ports; do
    id=$(leader_named_by "$p" || true)
    [ -n "$id" ] && { [ -z "$agreed" ] || [ "$id" = "$agreed" ]; } || return 1
    agreed=$id
  done
  echo "$agreed"
}

start_voter() {
  local id=$1 port
  port=$(echo $voter_ports | cut -d' ' -f"$id")
  start_one "voter-$id" leader --host "$host" --port "$port" --data-dir "$run/data/voter-$id" \
    --node-id "$id" --peers "$peers"
}

if [ "$action" = stop ]; then
  stop_all
  exit 0
fi
if [ "$action" = leader ]; then
  l=$(current_leader) && [ -n "$l" ] && echo "$l"
  exit $?
fi
if [ "$action" = revive ]; then
  n=${3:?usage: $0 revive ha N}
  f="$run/pids/voter-$n.pid"
  if [ -e "$f" ] && pid_alive "$(cat "$f")"; then
    echo "voter $n (pid $(cat "$f")) is running" >&2
    exit 1
  fi
  start_voter "$n"
  wait_healthy "voter-$n" "http://$host:$(echo $voter_ports | cut -d' ' -f"$n")"
  exit $?
fi
if [ "$action" = running ]; then
  any_running
  exit $?
fi

[ -x "$bin" ] || { echo "no binary at $bin: run 'make build' first" >&2; exit 1; }
mkdir -p "$run/data" "$run/logs" "$run/pids"
chmod 700 "$run/data"
shopt -s nullglob
for f in "$run"/pids/*.pid; do
  if pid_alive "$(cat "$f")"; then
    echo "a $mode cluster is already running (see $run/pids); stop it with 'make $(stop_target "$mode")'" >&2
    exit 1
  fi
  rm -f "$f"
done
if [ "$mode" = ha ]; then
  all_ports=""
  for p in $voter_ports; do all_ports="$all_ports $p $((p + 1))"; done
else
  all_ports="$leader_port $replica_ports"
fi
for p in $all_ports; do
  if port_taken "$p"; then
    others=$(running_clusters)
    if [ -n "$others" ]; then
      echo "port $p on $host is already in use, and these memdb clusters are running:$others; nothing was started" >&2
    else
      echo "port $p on $host is already in use by something that is not a cluster this script started; nothing was started" >&2
    fi
    exit 1
  fi
done

if [ "$mode" = ha ]; then
  n=0
  for p in $voter_ports; do n=$((n + 1)); start_voter "$n"; done
  n=0
  for p in $voter_ports; do
    n=$((n + 1))
    if ! wait_healthy "voter-$n" "http://$host:$p"; then stop_all; exit 1; fi
    start_one "local-$((p + 1))" local-replica --host "$host" --port "$((p + 1))" \
      --data-dir "$run/data/voter-$n"
  done
  for p in $voter_ports; do
    if ! wait_healthy "local-$((p + 1))" "http://$host:$((p + 1))"; then stop_all; exit 1; fi
  done
  leader=""
  for _ in $(seq 1 100); do
    leader=$(agreed_leader || true)
    [ -n "$leader" ] && break
    sleep 0.1
  done
  if [ -z "$leader" ]; then
    echo "the voters did not agree on an elected leader within 10s; logs in $run/logs" >&2
    stop_all
    exit 1
  fi
  echo "memdb raft group is up; voter $leader leads:"
  n=0
  for p in $voter_ports; do
    n=$((n + 1))
    role=$([ "$n" = "$leader" ] && echo "leader  " || echo "follower")
    echo "  voter $n ($role)  http://$host:$p   local replica http://$host:$((p + 1))"
  done
  echo "  data      $run/data"
  echo "  logs      $run/logs"
  echo "  pids      $run/pids"
  echo "write to any voter (a follower redirects with 307 to the leader):"
  first=$(echo $voter_ports | cut -d' ' -f1)
  second=$(echo $voter_ports | cut -d' ' -f2)
  echo "try:  curl -sL -H 'Idempotency-Key: k1' -d text='hello world' http://$host:$first/post"
  echo "      curl -s 'http://$host:$((second + 1))/wordcount?word=hello'"
  exit 0
fi

tls_flags=()
if [ "$mode" = tls ]; then
  # Made once; a second start reuses them (memdb certs never replaces a pair unasked).
  certs="$run/certs"
  if [ ! -e "$certs/node.pem" ]; then
    "$bin" certs --dir "$certs" --name node --host "$host,localhost" >/dev/null
  fi
  if [ ! -e "$certs/client.pem" ]; then
    "$bin" certs --dir "$certs" --name client --host client >/dev/null
  fi
  # Two secrets: the client token (writes), and the peer token the nodes use among
  # themselves (replication, admin): a client that may write cannot forge replication.
  for secret in token peer-token; do
    if [ ! -s "$run/$secret" ]; then
      (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$run/$secret")
    fi
  done
  tls_flags=(--tls-cert "$certs/node.pem" --tls-key "$certs/node-key.pem"
    --tls-ca "$certs/ca.pem" --tls-client-ca "$certs/ca.pem" --auth-token-file "$run/token"
    --peer-token-file "$run/peer-token")
fi

leader_url="$scheme://$host:$leader_port"
start_one leader leader --host "$host" --port "$leader_port" --data-dir "$run/data/leader" \
  "${tls_flags[@]}"
if ! wait_healthy leader "$leader_url"; then stop_all; exit 1; fi
urls=()
kinds=()
last_port=$(echo $replica_ports | awk '{print $NF}')
for p in $replica_ports; do
  # The TLS cluster shows both kinds: its last port is a local replica.
  if [ "$mode" = local ] || { [ "$mode" = tls ] && [ "$p" = "$last_port" ]; }; then
    start_one "replica-$p" local-replica --host "$host" --port "$p" \
      --data-dir "$run/data/leader" "${tls_flags[@]}"
    kinds+=("local replica (mmap)")
  else
    # Its own data directory: the leader's files it maps, kept across restarts so a
    # restarted replica downloads only what changed.
    start_one "replica-$p" replica --host "$host" --port "$p" --leader "$leader_url" \
      --data-dir "$run/data/replica-$p" "${tls_flags[@]}"
    kinds+=("network replica     ")
  fi
  urls+=("$scheme://$host:$p")
done
for p in $replica_ports; do
  if ! wait_healthy "replica-$p" "$scheme://$host:$p"; then stop_all; exit 1; fi
done

echo "memdb $mode cluster is up:"
echo "  leader    $leader_url   (POST /post, GET /sync, GET /wordcount, GET /health)"
for i in "${!urls[@]}"; do
  echo "  ${kinds[$i]}   ${urls[$i]}   (GET /wordcount, GET /top, GET /health)"
done
echo "  data      $run/data"
echo "  logs      $run/logs"
echo "  pids      $run/pids"
if [ "$mode" = tls ]; then
  echo "  certs     $run/certs (throwaway CA: ca.pem; node and client pairs)"
  echo "  token     $run/token (writes)   peer token  $run/peer-token (replication, admin)"
  echo "try:  curl -s --cacert $run/certs/ca.pem -H \"Authorization: Bearer \$(cat $run/token)\" -d text='hello world' $leader_url/post"
  echo "      curl -s --cacert $run/certs/ca.pem '${urls[0]}/wordcount?word=hello'"
  echo "      $bin status --url $leader_url --tls-ca $run/certs/ca.pem"
else
  echo "try:  curl -s -d text='hello world' $leader_url/post"
  echo "      curl -s '${urls[0]}/wordcount?word=hello'"
fi
