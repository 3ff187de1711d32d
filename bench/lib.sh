# Shared by bench/run.sh and bench/run_transports.sh (sourced, not run).

log() { echo "[$(date +%T)] $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# first_line FILE: the first line a process printed there (its address),
# waiting up to 30 s for it.
first_line() {
	local i
	for ((i = 0; i < 600; i++)); do
		if [[ -s $1 ]] && head -n1 "$1" | grep -q .; then
			head -n1 "$1"
			return
		fi
		sleep 0.05
	done
	log "no address in $1"
	return 1
}

# load_and_record REP LABEL PROXY LOAD-ARGS...: runs `load run LOAD-ARGS`
# in the background (so that the trap can stop it), then appends its
# result line to $RESULTS, or an error line when it printed none.
load_and_record() {
	local rep=$1 label=$2 proxy=$3 out=$TMP/load.out line rc=0
	shift 3
	"$LOAD" run -label "$label" -proxy "$proxy" -rep "$rep" -clk-tck "$CLK_TCK" -timeout "$LOAD_TIMEOUT" "$@" \
		>"$out" 2>>"$TMP/load.err" </dev/null &
	LOADPID=$!
	wait "$LOADPID" || rc=$?
	LOADPID=
	line=$(tail -n1 "$out")
	if [[ $line != "{"* ]]; then
		line=$(printf '{"label":"%s","proxy":"%s","rep":%s,"error":"load exited with status %s and no result"}' \
			"$label" "$proxy" "$rep" "$rc")
	fi
	echo "$line" >>"$RESULTS"
	log "rep $rep $label $proxy: ${line:0:240}"
}

# machine_facts: raises the open-file limit to the hard one (idle runs
# hold thousands of sockets) and reads what the report states of the
# machine: CLK_TCK, NPROC, CPU_MODEL, KERNEL.
machine_facts() {
	ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
	CLK_TCK=$(getconf CLK_TCK)
	NPROC=$(nproc)
	CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
	KERNEL=$(uname -sr)
}

# build_into DIR [PROGRAM...]: the caddy to measure ($CADDY_BIN, or
# ./cmd/caddy built), the load generator (LOAD) and the named programs of
# bench/, into DIR.
build_into() {
	local dir=$1 prog
	shift
	log "building into $dir"
	if [[ -n ${CADDY_BIN:-} ]]; then
		cp "$CADDY_BIN" "$dir/caddy"
	elif ! go build -o "$dir/caddy" ./cmd/caddy; then
		die "building ./cmd/caddy failed (a tree being edited?): retry later, or set CADDY_BIN"
	fi
	for prog in load "$@"; do
		go build -o "$dir/$prog" "./bench/$prog"
	done
	LOAD=$dir/load
}

# start_upstreams: the load generator's echo, sink and source upstreams on
# free ports (their addresses in UP, their PIDs in PID), started once and
# shared by everything measured.
start_upstreams() {
	local mode
	for mode in echo sink source; do
		"$LOAD" upstream -mode "$mode" -listen 127.0.0.1:0 >"$TMP/up_$mode.out" 2>"$TMP/up_$mode.err" &
		PID[up_$mode]=$!
	done
	for mode in echo sink source; do
		UP[$mode]=$(first_line "$TMP/up_$mode.out")
	done
	log "upstreams: echo ${UP[echo]} sink ${UP[sink]} source ${UP[source]}"
}

# record_peak_rss PID PHASE PROXY REP: the peak RSS (VmHWM) of process PID,
# recorded as PROXY's under the phase it has run.
record_peak_rss() {
	local pid=$1 phase=$2 proxy=$3 rep=$4 kb
	[[ -z $pid || ! -r /proc/$pid/status ]] && return 0
	kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
	[[ -z $kb ]] && return 0
	printf '{"label":"rss_%s","proxy":"%s","rep":%s,"peak_rss_mb":%s}\n' \
		"$phase" "$proxy" "$rep" "$(awk -v k="$kb" 'BEGIN {printf "%.1f", k/1024}')" >>"$RESULTS"
}

# rep_order REP ITEM...: the items into ORDER, reversed on even
# repetitions, so that drift and warm-up hit all of them alike.
rep_order() {
	local rep=$1 i
	shift
	ORDER=("$@")
	if ((rep % 2 == 0)); then
		ORDER=()
		for ((i = $#; i >= 1; i--)); do ORDER+=("${!i}"); done
	fi
}

# report_header TITLE: a report's first lines: the title and date, the
# machine, the commit measured and where its caddy came from.
report_header() {
	echo "# $1 — $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	echo "- machine: $NPROC CPUs, $CPU_MODEL, $KERNEL, $(go version | cut -d' ' -f3-)"
	echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- . ':!bench' 2>/dev/null || echo ' + uncommitted changes')"
	if [[ -n ${CADDY_BIN:-} ]]; then
		echo "- caddy: prebuilt binary $CADDY_BIN (CADDY_BIN), not built from this tree"
	fi
}
