#!/usr/bin/env bash
# ws_to_tcp over its three TLS transports, interleaved in one run: WebSockets
# over HTTP/1.1 (an upgrade on its own TLS connection), over HTTP/2 (RFC
# 8441 extended CONNECT) and over HTTP/3 (RFC 9220), all served by one Caddy
# with a self-signed certificate. Reports each transport's figures and its
# ratio to HTTP/1.1+TLS. See bench/README.md, "Transports".
#
#   bash bench/run_transports.sh                      # REPS=3, SIZE=128MiB: ~5 min
#   REPS=1 IDLE_CONNS=1000 bash bench/run_transports.sh   # smoke run
#
# Knobs (environment): REPS (3), SIZE (128MiB), RTT_COUNT (5000), IDLE_CONNS
# ("1000 5000"), HOLD (2s), PER_CONN (100: tunnels per HTTP/2 or HTTP/3
# connection), TRANSPORTS ("h1 h2 h3"), BUFFER_SIZE (ws_to_tcp's buffer_size;
# empty: its default), LOAD_TIMEOUT (300s), CADDY_BIN (use this caddy instead
# of building one), KEEP_TMP (1: keep the work directory). IDLE_CONNS= (empty)
# leaves the idle scenarios out.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

REPS=${REPS:-3}
SIZE=${SIZE:-128MiB}
RTT_COUNT=${RTT_COUNT:-5000}
IDLE_CONNS=${IDLE_CONNS-1000 5000}
HOLD=${HOLD:-2s}
PER_CONN=${PER_CONN:-100}
read -r -a TRANSPORTS <<<"${TRANSPORTS:-h1 h2 h3}"
BUFFER_SIZE=${BUFFER_SIZE:-}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-300s}
KEEP_TMP=${KEEP_TMP:-0}

TMP=$(mktemp -d /tmp/wsbench-tr.XXXXXX)
BIN=$TMP/bin
RESULTS=$TMP/results.jsonl
mkdir -p "$BIN" "$TMP/xdg"
: >"$RESULTS"

declare -A PID=() # name -> pid of every process this script started
PHASE=throughput  # what the current Caddy has run (for its peak RSS)
PHASE_PROTO=all
LOADPID=

# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

cleanup() {
	local rc=$?
	[[ -n $LOADPID ]] && kill "$LOADPID" 2>/dev/null || true
	for name in "${!PID[@]}"; do
		kill "${PID[$name]}" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	if [[ $KEEP_TMP == 1 || $rc != 0 ]]; then
		log "work directory kept: $TMP"
	else
		rm -rf "$TMP"
	fi
}
trap cleanup EXIT

# first_line FILE: wait for a process to print its address.

# ---- machine and build ----------------------------------------------------

machine_facts

build_into "$BIN"
"$LOAD" cert -dir "$TMP"

# ---- upstreams (started once) --------------------------------------------

declare -A UP=()
start_upstreams

# ---- Caddy ------------------------------------------------------------------

# One Caddy serves the three transports on one port: HTTP/1.1 and HTTP/2 on
# TCP (chosen by ALPN), HTTP/3 on UDP. GODEBUG=http2xconnect=1 lets Go's
# HTTP/2 server advertise extended CONNECT (README, HTTP/2 and HTTP/3).
PORT=
OPTS=
[[ -n $BUFFER_SIZE ]] && OPTS=" {
		buffer_size $BUFFER_SIZE
	}"
start_caddy() {
	PORT=$("$LOAD" freeport)
	cat >"$TMP/Caddyfile" <<-EOF
		{
			admin off
			persist_config off
			https_port $PORT
			log {
				output discard
			}
		}
		https://127.0.0.1:$PORT {
			bind 127.0.0.1
			tls $TMP/cert.pem $TMP/key.pem
			ws_to_tcp /echo ${UP[echo]}$OPTS
			ws_to_tcp /sink ${UP[sink]}$OPTS
			ws_to_tcp /source ${UP[source]}$OPTS
		}
	EOF
	GODEBUG=http2xconnect=1 XDG_DATA_HOME=$TMP/xdg XDG_CONFIG_HOME=$TMP/xdg \
		"$BIN/caddy" run --config "$TMP/Caddyfile" --adapter caddyfile >>"$TMP/caddy.log" 2>&1 &
	PID[caddy]=$!
	"$LOAD" waitport -addr "127.0.0.1:$PORT" -timeout 60s
}

# record_rss REP: the peak RSS of the current Caddy.
record_rss() { record_peak_rss "${PID[caddy]:-}" "$PHASE" "$PHASE_PROTO" "$1"; }

# restart REP PHASE PROTO: a fresh Caddy.
restart() {
	if [[ -n ${PID[caddy]:-} ]]; then
		record_rss "$1"
		kill "${PID[caddy]}" 2>/dev/null || true
		wait "${PID[caddy]}" 2>/dev/null || true
		unset "PID[caddy]"
	fi
	start_caddy
	PHASE=$2 PHASE_PROTO=$3
	sleep 0.5 # let the new process settle before measuring it
}

# ---- scenarios --------------------------------------------------------------

# label | upstream | load arguments
SCENARIOS=(
	"upload_64k|sink|-scenario upload -size $SIZE -msg 64KiB"
	"download|source|-scenario download -size $SIZE"
	"echo_64|echo|-scenario echo -conns 64 -total $SIZE -msg 32KiB"
	"rtt_1|echo|-scenario rtt -conns 1 -msg 64 -count $RTT_COUNT"
)

# run_load REP LABEL PROTO UPSTREAM ARGS...: one run, one result line.
run_load() {
	local rep=$1 label=$2 proto=$3 up=$4
	shift 4
	# shellcheck disable=SC2068
	load_and_record "$rep" "$label" "$proto" -target "wss://127.0.0.1:$PORT/$up" -proto "$proto" -per-conn "$PER_CONN" \
		-pids "${PID[caddy]}" $@
}

# ---- the run ------------------------------------------------------------------

T_START=$(date +%s)
log "REPS=$REPS SIZE=$SIZE RTT_COUNT=$RTT_COUNT IDLE_CONNS='$IDLE_CONNS' PER_CONN=$PER_CONN transports: ${TRANSPORTS[*]}"
for ((rep = 1; rep <= REPS; rep++)); do
	rep_order "$rep" "${TRANSPORTS[@]}"
	# Each repetition starts from a fresh Caddy.
	restart "$((rep - 1))" throughput all
	for sc in "${SCENARIOS[@]}"; do
		IFS='|' read -r label up args <<<"$sc"
		for proto in "${ORDER[@]}"; do
			# shellcheck disable=SC2086
			run_load "$rep" "$label" "$proto" "$up" $args
		done
	done
	# Idle memory: each measured on a freshly started Caddy.
	for n in $IDLE_CONNS; do
		for proto in "${ORDER[@]}"; do
			restart "$rep" "idle_$n" "$proto"
			run_load "$rep" "idle_$n" "$proto" echo -scenario idle -conns "$n" -hold "$HOLD" -concurrency 64
		done
	done
done
record_rss "$REPS"
ELAPSED=$(($(date +%s) - T_START))

# ---- report -------------------------------------------------------------------

mkdir -p "$ROOT/bench/results"
cp "$RESULTS" "$ROOT/bench/results/transports.jsonl"
{
	report_header "ws_to_tcp over HTTP/1.1+TLS, HTTP/2 and HTTP/3"
	echo "- REPS=$REPS, SIZE=$SIZE, RTT_COUNT=$RTT_COUNT, IDLE_CONNS=$IDLE_CONNS, HOLD=$HOLD, PER_CONN=$PER_CONN, buffer_size ${BUFFER_SIZE:-default (32 KiB)}; run took ${ELAPSED}s"
	echo
	"$LOAD" report -transports -in "$RESULTS"
} | tee "$ROOT/bench/results/transports.md"
log "results: bench/results/transports.md, raw: bench/results/transports.jsonl (${ELAPSED}s)"
