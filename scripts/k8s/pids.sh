# Process helpers shared by control-plane.sh and node.sh (sourced, not run): every process they start writes
# its PID to $RUN/NAME.pid and is stopped through it. The sourcing script defines RUN and log().

# alive NAME: the process of $RUN/NAME.pid runs.
alive() { [[ -f $RUN/$1.pid ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

# wait_for WHAT SECONDS COMMAND...: runs COMMAND every 0.2 s until it succeeds, at most SECONDS.
wait_for() {
    local what=$1 seconds=$2 i
    shift 2
    for ((i = 0; i < seconds * 5; i++)); do
        if "$@"; then return 0; fi
        sleep 0.2
    done
    log "$what did not come up within ${seconds}s; logs in $RUN/logs"
    return 1
}

# stop NAME: stops the process of $RUN/NAME.pid: SIGTERM, then SIGKILL after 10 s.
stop() {
    local name=$1 pid i
    [[ -f $RUN/$name.pid ]] || return 0
    pid=$(cat "$RUN/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$RUN/$name.pid"
}
