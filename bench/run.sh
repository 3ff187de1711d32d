#!/usr/bin/env bash
# Side-by-side benchmark of ws_to_tcp against two references, a plain Go
# TCP relay and a bare WebSocket-to-TCP relay (and websockify when
# installed), interleaved, reporting ratios to both references. See
# bench/README.md.
#
#   bash bench/run.sh                    # full run, REPS=5
#   REPS=1 QUICK=1 bash bench/run.sh     # smoke run
#
# Knobs (environment): REPS (5), QUICK (0), SIZE (256MiB; QUICK: 32MiB),
# DURATION (10s; QUICK: 3s), RTT_COUNT (20000; QUICK: 5000), IDLE_CONNS
# ("1000 5000 9000"; QUICK: "1000"), HOLD (2s), WEBSOCKIFY (auto|0),
# WSFY_IDLE_MAX (500: websockify 0.10 uses select(), so its per-connection
# processes fail with "filedescriptor out of range" past about 500 connections),
# LOAD_TIMEOUT (300s), CADDY_BIN (use this caddy instead of building one),
# KEEP_TMP (1: keep the work directory with logs).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

REPS=${REPS:-5}
QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
	SIZE=${SIZE:-32MiB}
	DURATION=${DURATION:-3s}
	RTT_COUNT=${RTT_COUNT:-5000}
	IDLE_CONNS=${IDLE_CONNS:-1000}
else
	SIZE=${SIZE:-256MiB}
	DURATION=${DURATION:-10s}
	RTT_COUNT=${RTT_COUNT:-20000}
	IDLE_CONNS=${IDLE_CONNS:-1000 5000 9000}
fi
HOLD=${HOLD:-2s}
WEBSOCKIFY=${WEBSOCKIFY:-auto}
WSFY_IDLE_MAX=${WSFY_IDLE_MAX:-500}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-300s}
KEEP_TMP=${KEEP_TMP:-0}

TMP=$(mktemp -d /tmp/wsbench.XXXXXX)
BIN=$TMP/bin
RESULTS=$TMP/results.jsonl
mkdir -p "$BIN" "$TMP/xdg"
: >"$RESULTS"

declare -A PID=()     # name -> pid of every process this script started
declare -A PHASE=()   # proxy -> what its current process has run (for peak RSS)
LOADPID=

# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

cleanup() {
	local rc=$?
	[[ -n $LOADPID ]] && kill "$LOADPID" 2>/dev/null || true
	for name in "${!PID[@]}"; do
		kill_tree "${PID[$name]}"
	done
	wait 2>/dev/null || true
	if [[ $KEEP_TMP == 1 || $rc != 0 ]]; then
		log "work directory kept: $TMP"
	else
		rm -rf "$TMP"
	fi
}
trap cleanup EXIT

# kill_tree PID: the process and its children (websockify's per-connection
# processes), all started by this script.
kill_tree() {
	local pid=$1 child
	for child in $(pgrep -P "$pid" 2>/dev/null || true); do
		kill "$child" 2>/dev/null || true
	done
	kill "$pid" 2>/dev/null || true
}

# first_line FILE: wait for a process to print its address.

# ---- machine and build ----------------------------------------------------

machine_facts
WSFY_VERSION=
if [[ $WEBSOCKIFY != 0 ]] && command -v websockify >/dev/null; then
	WEBSOCKIFY=1
	WSFY_VERSION=$(dpkg-query -W -f '${Version}' websockify 2>/dev/null || echo "unknown version")
else
	WEBSOCKIFY=0
fi

build_into "$BIN" relay wsrelay

# ---- upstreams (started once, shared by all proxies) ----------------------

declare -A UP=()
start_upstreams

# ---- proxies --------------------------------------------------------------

PROXIES=(ws_to_tcp wsrelay relay)
[[ $WEBSOCKIFY == 1 ]] && PROXIES+=(websockify)
declare -A ADDR=()    # proxy/upstream -> address

# start_ws_to_tcp: a Caddy on a free port. On a machine shared with other
# work, a start can be slow or lose its port to another process between
# `load freeport` and the bind: it is tried three times, 60 s each.
start_ws_to_tcp() {
	local port try
	for try in 1 2 3; do
		port=$("$LOAD" freeport)
		cat >"$TMP/Caddyfile" <<-EOF
			{
				admin off
				persist_config off
				auto_https off
				log {
					output discard
				}
			}
			http://127.0.0.1:$port {
				bind 127.0.0.1
				ws_to_tcp /echo ${UP[echo]}
				ws_to_tcp /sink ${UP[sink]}
				ws_to_tcp /source ${UP[source]}
			}
		EOF
		XDG_DATA_HOME=$TMP/xdg XDG_CONFIG_HOME=$TMP/xdg \
			"$BIN/caddy" run --config "$TMP/Caddyfile" --adapter caddyfile >>"$TMP/caddy.log" 2>&1 &
		PID[ws_to_tcp]=$!
		if "$LOAD" waitport -addr "127.0.0.1:$port" -timeout 60s; then
			for up in echo sink source; do ADDR[ws_to_tcp/$up]=ws://127.0.0.1:$port/$up; done
			return 0
		fi
		log "caddy did not listen on 127.0.0.1:$port (try $try): $(tail -3 "$TMP/caddy.log")"
		stop_proc ws_to_tcp
	done
	die "caddy did not start"
}

start_relay() {
	"$BIN/relay" -listen 127.0.0.1:0 -to "${UP[echo]}" -to "${UP[sink]}" -to "${UP[source]}" \
		>"$TMP/relay.out" 2>>"$TMP/relay.err" &
	PID[relay]=$!
	local a line
	line=$(first_line "$TMP/relay.out") || die "the relay did not start: $(tail -3 "$TMP/relay.err")"
	read -r -a a <<<"$line"
	ADDR[relay/echo]=tcp://${a[0]} ADDR[relay/sink]=tcp://${a[1]} ADDR[relay/source]=tcp://${a[2]}
}

# The bare WebSocket relay: like the relay, one process with three
# listeners; any path on a listener goes to its upstream.
start_wsrelay() {
	"$BIN/wsrelay" -listen 127.0.0.1:0 -to "${UP[echo]}" -to "${UP[sink]}" -to "${UP[source]}" \
		>"$TMP/wsrelay.out" 2>>"$TMP/wsrelay.err" &
	PID[wsrelay]=$!
	local a line
	line=$(first_line "$TMP/wsrelay.out") || die "wsrelay did not start: $(tail -3 "$TMP/wsrelay.err")"
	read -r -a a <<<"$line"
	ADDR[wsrelay/echo]=ws://${a[0]}/ ADDR[wsrelay/sink]=ws://${a[1]}/ ADDR[wsrelay/source]=ws://${a[2]}/
}

# websockify has one target per process: one process per upstream.
start_websockify_one() {
	local up=$1 port
	port=$("$LOAD" freeport)
	websockify "127.0.0.1:$port" "${UP[$up]}" >>"$TMP/websockify_$up.log" 2>&1 &
	PID[websockify_$up]=$!
	"$LOAD" waitport -addr "127.0.0.1:$port"
	ADDR[websockify/$up]=ws://127.0.0.1:$port/
}

start_websockify() {
	local up
	for up in echo sink source; do start_websockify_one "$up"; done
}

# stop_proc NAME: stop one started process (and its children), wait for it.
stop_proc() {
	local name=$1 pid=${PID[$1]:-}
	[[ -z $pid ]] && return 0
	kill_tree "$pid"
	wait "$pid" 2>/dev/null || true
	unset "PID[$name]"
}

# record_rss PROXY REP: the peak RSS of the proxy's current process.
record_rss() { record_peak_rss "${PID[$1]:-}" "${PHASE[$1]:-throughput}" "$1" "$2"; }

# restart PROXY REP [PHASE]: a fresh process (websockify: only for the echo
# upstream when PHASE is given, the idle scenarios use only that one).
restart() {
	local proxy=$1 rep=$2 phase=${3:-throughput}
	case $proxy in
	websockify)
		if [[ -n ${3:-} ]]; then
			stop_proc websockify_echo
			start_websockify_one echo
		else
			stop_proc websockify_echo
			stop_proc websockify_sink
			stop_proc websockify_source
			start_websockify
		fi
		;;
	*)
		if [[ -n ${PID[$proxy]:-} ]]; then
			record_rss "$proxy" "$rep"
			stop_proc "$proxy"
		fi
		"start_$proxy"
		;;
	esac
	PHASE[$proxy]=$phase
	sleep 0.5 # let the new process settle before measuring it
}

# pids_of PROXY UPSTREAM: the root PIDs whose CPU/memory count.
pids_of() {
	case $1 in
	websockify) echo "${PID[websockify_$2]}" ;;
	*) echo "${PID[$1]}" ;;
	esac
}

# ---- scenarios --------------------------------------------------------------

# label | upstream | load arguments
SCENARIOS=(
	"upload_64k|sink|-scenario upload -size $SIZE -msg 64KiB"
	"upload_1k|sink|-scenario upload -size $SIZE -msg 1KiB"
	"download|source|-scenario download -size $SIZE"
	"echo_8|echo|-scenario echo -conns 8 -total $SIZE -msg 32KiB"
	"echo_64|echo|-scenario echo -conns 64 -total $SIZE -msg 32KiB"
	"rtt_1|echo|-scenario rtt -conns 1 -msg 64 -count $RTT_COUNT"
	"rtt_16|echo|-scenario rtt -conns 16 -msg 1024 -duration $DURATION"
	"connrate|echo|-scenario connrate -workers 16 -duration $DURATION"
)

# run_load REP LABEL PROXY UPSTREAM ARGS...: one run, one result line.
run_load() {
	local rep=$1 label=$2 proxy=$3 up=$4
	shift 4
	# shellcheck disable=SC2068
	load_and_record "$rep" "$label" "$proxy" -target "${ADDR[$proxy/$up]}" -pids "$(pids_of "$proxy" "$up")" $@
}

# ---- the run ------------------------------------------------------------------

T_START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "REPS=$REPS SIZE=$SIZE DURATION=$DURATION IDLE_CONNS='$IDLE_CONNS' proxies: ${PROXIES[*]}"
for ((rep = 1; rep <= REPS; rep++)); do
	rep_order "$rep" "${PROXIES[@]}"
	# Each repetition starts from fresh proxy processes.
	for proxy in "${PROXIES[@]}"; do restart "$proxy" "$((rep - 1))"; done
	for sc in "${SCENARIOS[@]}"; do
		IFS='|' read -r label up args <<<"$sc"
		for proxy in "${ORDER[@]}"; do
			# shellcheck disable=SC2086
			run_load "$rep" "$label" "$proxy" "$up" $args
		done
	done
	# Idle memory: each measured on a freshly started proxy process.
	for n in $IDLE_CONNS; do
		for proxy in "${ORDER[@]}"; do
			if [[ $proxy == websockify ]] && ((n > WSFY_IDLE_MAX)); then
				printf '{"label":"idle_%s","proxy":"websockify","rep":%s,"skipped":true}\n' "$n" "$rep" >>"$RESULTS"
				continue
			fi
			restart "$proxy" "$rep" "idle_$n"
			run_load "$rep" "idle_$n" "$proxy" echo -scenario idle -conns "$n" -hold "$HOLD" -concurrency 64
		done
	done
done
for proxy in "${PROXIES[@]}"; do
	[[ $proxy == websockify ]] || record_rss "$proxy" "$REPS"
done
ELAPSED=$(($(date +%s) - T_START))
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- report -------------------------------------------------------------------

mkdir -p "$ROOT/bench/results"
cp "$RESULTS" "$ROOT/bench/results/latest.jsonl"
{
	report_header "ws_to_tcp benchmark"
	echo "- load average (1, 5, 15 min) at the start: $LOAD_START, at the end: $LOAD_END" \
		"(this script's own processes use about 2 CPUs while it runs: more means other work shared the machine)"
	echo "- references: relay = bench/relay (plain Go TCP relay), wsrelay = bench/wsrelay" \
		"(net/http + gorilla's Upgrade + internal/relay, the module's tunnel)"
	echo "- REPS=$REPS, SIZE=$SIZE, DURATION=$DURATION, RTT_COUNT=$RTT_COUNT, IDLE_CONNS=$IDLE_CONNS, HOLD=$HOLD; run took ${ELAPSED}s"
	if [[ $WEBSOCKIFY == 1 ]]; then
		echo "- websockify $WSFY_VERSION, one process per upstream; idle runs only up to $WSFY_IDLE_MAX conns" \
			"(it forks a process per connection and its select() fails past ~500 connections)"
	else
		echo "- websockify: not installed (column n/a)"
	fi
	echo
	"$LOAD" report -in "$RESULTS"
} | tee "$ROOT/bench/results/latest.md"
log "results: bench/results/latest.md, raw: bench/results/latest.jsonl (${ELAPSED}s)"
