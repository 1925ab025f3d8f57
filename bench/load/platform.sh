# Sourced by bench/load/run.sh and bench/load/ceiling.sh: starts City Events distributed (five
# processes in the production profile on PostgreSQL, Redis and NATS JetStream, as
# deploy/local/run-distributed.sh runs them) with its own databases, bus namespace and key
# prefix, removed on exit, and rate limits raised (every simulated person comes from one
# address). Sets $work, $port, $components and the CPU helpers `ticks`, `cpu_mark`, `cpu_table`.
work=$(mktemp -d)
prefix="ce_load_$(date +%s)"
# A preset CITYEVENTS_BIN runs that build instead (an A/B of two builds in one session).
if [[ -z "${CITYEVENTS_BIN:-}" ]]; then
  cargo build --release -q -p cityevents
  export CITYEVENTS_BIN=${CARGO_TARGET_DIR:-target}/release/cityevents
fi
export STATE="$work/state" CITYEVENTS_DB_PREFIX=$prefix CITYEVENTS_BUS_NAMESPACE=$prefix
# Every user comes from this one address: every policy (per user, per IP, sign-up) is raised.
export CITYEVENTS_GATEWAY__REDIS__KEY_PREFIX="$prefix:" CITYEVENTS_RATE_LIMIT=1000000
export CITYEVENTS_IP_RATE_LIMIT=1000000 CITYEVENTS_STRICT_RATE_LIMIT=1000000
# The seeded organizers cannot follow a verification mail: they create events unverified.
export CITYEVENTS_EVENTS__APP__REQUIRE_VERIFIED_EMAIL=false
export CITYEVENTS_GATEWAY__LOG__ACCESS_LOG=true
# The module table (deploy/services.tsv): each service at its default port's distance from the
# gateway's, counted from this run's gateway port.
source deploy/services.sh
port=${CITYEVENTS_GATEWAY_PORT:-18080}
last=$port
for svc in "${SERVICES[@]}"; do
  up=$(tr '[:lower:]' '[:upper:]' <<<"$svc")
  p=$((port + PORT[$svc] - PORT[gateway]))
  ((p > last)) && last=$p
  export "CITYEVENTS_${up}_PORT=$p" "CITYEVENTS_${up}__MANAGEMENT__ADDR=127.0.0.1:0"
done
# The services share their ports (`http.reuse_port`): a platform already running there would
# silently get half of this run's connections, and its CPU would be counted as this run's.
for p in $(seq "$port" "$last"); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "127.0.0.1:$p already answers: another platform is running (stop it, or set CITYEVENTS_GATEWAY_PORT)" >&2
    rm -rf "$work"
    exit 1
  fi
done

bash deploy/local/run-distributed.sh >"$work/platform.log" 2>&1 &
platform=$!
cleanup() {
  kill -TERM "$platform" 2>/dev/null || true
  wait "$platform" 2>/dev/null || true
  for svc in "${DB_SERVICES[@]}" pgbench; do
    psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"${prefix}_$svc\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 240); do grep -q 'run-distributed: ready' "$work/platform.log" && break; sleep 1; done
grep -q 'run-distributed: ready' "$work/platform.log" || { tail -50 "$work/platform.log"; exit 1; }

# CPU ticks (user + system) of the processes whose command line matches each pattern.
ticks() { # pattern
  local total=0 pid
  for pid in $(pgrep -f "$1" || true); do
    read -r -a f <"/proc/$pid/stat" 2>/dev/null || continue
    # Fields after the command name, which may hold spaces: utime and stime are 14th and 15th.
    local rest=${f[*]}; rest=${rest#*) }; read -r -a g <<<"$rest"
    total=$((total + g[11] + g[12]))
  done
  echo "$total"
}
components=("serve gateway" "serve auth" "serve events" "serve joins" "serve notifier" "postgres" "redis-server" "nats-server")

# `cpu_mark` notes every component's CPU ticks; `cpu_table SECONDS GENERATOR TIME_FILE` then prints
# each one's CPU since, and its share of SECONDS on every core, and the load generator's (the
# user and system seconds bash's `time` wrote, with TIMEFORMAT='%U %S', as TIME_FILE's last line).
declare -A cpu_before
cpu_mark() { for c in "${components[@]}"; do cpu_before[$c]=$(ticks "$c"); done; }
cpu_table() { # seconds generator time-file
  local run=$1 hz c used lu ls
  hz=$(getconf CLK_TCK)
  echo "| process | CPU seconds | share of the run's $(nproc)-core capacity |"
  echo "|---|---|---|"
  for c in "${components[@]}"; do
    used=$(python3 -c "print(($(ticks "$c") - ${cpu_before[$c]}) / $hz)")
    echo "| ${c#serve } | $(python3 -c "print(f'{$used:.1f}')") | $(python3 -c "print(f'{100 * $used / ($run * $(nproc)):.0f} %')") |"
  done
  read -r lu ls < <(tail -n 1 "$3")
  echo "| $2 (the load generator) | $(python3 -c "print(f'{$lu + $ls:.1f}')") | $(python3 -c "print(f'{100 * ($lu + $ls) / ($run * $(nproc)):.0f} %')") |"
}
