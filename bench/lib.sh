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
