#!/usr/bin/env bash
# compose-e2e: the failover demo of docs/compose.md, played unattended against
# the real compose stack, with what it measured printed at the end.
#
#   scripts/compose-e2e.sh
#
# It builds the image, brings the cluster up in a compose project of its own
# (a unique name, its own image tag, host ports chosen by Docker), registers a
# user, creates a channel and posts. Then, with the leader's container stopped
# (docker stop), killed (docker kill), frozen (docker pause) and, where this
# shell may signal the container's process, crashed (its process SIGKILLed
# behind Docker's back, so that the restart policy brings it back), while a
# client keeps posting: it measures how soon another server leads, checks
# that the user, the channel and every acknowledged message are still there
# exactly once and that the bots still post, brings the old leader back (or
# lets Docker do it) and sees it rejoin as a follower. It tears everything down, on
# failure too, and exits non-zero on any failure. Without a Docker engine it
# says "skipped" and exits 0.
#
# Environment:
#   COMPOSE              the compose command (default: `docker compose` if it
#                        works, else `docker-compose`)
#   CHAT_E2E_POSTS       posts of the client during each failover (80)
#   CHAT_E2E_KEEP=1      leave the stack running at the end (to look around)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

say() { printf 'compose-e2e: %s\n' "$*" >&2; }
fail() {
	say "FAIL: $*"
	exit 1
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ---- preconditions: skip where there is no engine ---------------------------
if ! command -v docker >/dev/null 2>&1 || ! timeout 20 docker info >/dev/null 2>&1; then
	say "skipped: no Docker engine (docker info does not answer)"
	exit 0
fi
if [[ -z ${COMPOSE:-} ]]; then
	if timeout 20 docker compose version >/dev/null 2>&1; then
		COMPOSE="docker compose"
	elif command -v docker-compose >/dev/null 2>&1; then
		COMPOSE="docker-compose"
	else
		say "skipped: no docker compose (v2 plugin) nor docker-compose (v1) on this machine"
		exit 0
	fi
fi
command -v python3 >/dev/null || fail "python3 is needed to read the JSON replies"
command -v go >/dev/null || fail "go is needed to build the binary"

posts=${CHAT_E2E_POSTS:-80}
project="chate2e$(date +%s)$$"
image="chat:e2e-$project"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/chat-e2e.XXXXXX")
: >"$tmp/empty.env"
export CHAT_IMAGE=$image CHAT_PUBLISH=127.0.0.1 CHAT_BROKER_PORT='' CHAT_PUBSUB_PORT='' CHAT_LOG_LEVEL=info
# The servers authenticate with a fresh cluster secret; the JWT key is the
# file the first server writes on the shared volume (so a token one leader
# signed must pass with the next: the writer logs in once, before failover).
CHAT_CLUSTER_SECRET=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
export CHAT_CLUSTER_SECRET
unset CHAT_JWT_SECRET CHAT_JWT_SECRET_FILE CHAT_CLUSTER_SECRET_FILE
# shellcheck disable=SC2206
dc=($COMPOSE -f "$root/compose.yaml" -p "$project" --env-file "$tmp/empty.env")
started=$(now_ms)
# what HOW: the failure, for people.
what() {
	case $1 in
	crash) echo "a crash (kill -9 of the process)" ;;
	*) echo "docker $1" ;;
	esac
}

# ---- teardown, always -------------------------------------------------------
teardown() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	# Clients still running in the background (a writer, on failure).
	local job
	for job in $(jobs -p); do kill "$job" 2>/dev/null; done
	if [[ $rc -eq 130 ]]; then
		say "interrupted"
	elif [[ $rc -ne 0 ]]; then
		say "failed: the last log lines of each service follow"
		timeout 60 "${dc[@]}" logs --no-color --tail 40 >&2 2>&1
	fi
	# A paused container can't be stopped: thaw them all first.
	for id in $(docker ps -q --filter "label=com.docker.compose.project=$project" --filter status=paused); do
		timeout 20 docker unpause "$id" >/dev/null
	done
	if [[ ${CHAT_E2E_KEEP:-} == 1 ]]; then
		say "CHAT_E2E_KEEP=1: left running; remove it with:"
		say "  CHAT_IMAGE=$image $COMPOSE -p $project down -v; docker rmi $image"
	else
		say "tearing down (down -v)"
		timeout 120 "${dc[@]}" down -v --remove-orphans >/dev/null 2>&1 ||
			say "down -v failed: remove project $project by hand"
		timeout 60 docker rmi "$image" >/dev/null 2>&1
	fi
	rm -rf "$tmp"
	if [[ $rc -eq 0 ]]; then
		echo "compose-e2e: ${#scenarios[@]} passed, 0 failed"
	fi
	exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# ---- JSON helpers -----------------------------------------------------------
cat >"$tmp/e2e.py" <<'PY'
import json, sys, datetime

def objects(path):
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except ValueError:
                    pass

def parse_time(t):
    # RFC 3339 with up to 9 fractional digits, in UTC ("Z")
    t = t.rstrip("Z")
    whole, _, frac = t.partition(".")
    d = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return d + datetime.timedelta(microseconds=int((frac + "000000")[:6]))

def replies(path, command):
    return [o for o in objects(path) if o.get("type") == "reply" and o.get("command") == command]

cmd, args = sys.argv[1], sys.argv[2:]

if cmd == "status":
    # stdin: `chat status --json` -> "LEADER EPOCH id:role:epoch:lag ..."
    s = json.load(sys.stdin)
    servers = " ".join("%s:%s:%s:%s" % (x["id"], x["role"], x.get("epoch", 0), x.get("lag", 0)) for x in s["servers"])
    print(s.get("leader", 0), s.get("epoch", 0), servers)

elif cmd == "ok":
    # FILE COMMAND...: every reply to these commands succeeded (and exists)
    path, wanted = args[0], args[1:]
    for c in wanted:
        rs = replies(path, c)
        if not rs:
            sys.exit("no reply to /%s" % c)
        for r in rs:
            if not r.get("ok"):
                sys.exit("/%s failed: %s" % (c, r.get("error")))

elif cmd == "acked":
    # FILE PREFIX OUT: write the acknowledged posts' texts to OUT; print "acked failed"
    path, prefix, out = args
    posts = [r for r in replies(path, "post") if (r.get("message") or {}).get("text", "").startswith(prefix) or not r.get("ok")]
    ok = [r["message"]["text"] for r in posts if r.get("ok")]
    with open(out, "w") as f:
        for t in ok:
            f.write(t + "\n")
    failed = [r.get("error", "?") for r in posts if not r.get("ok")]
    print(len(ok), len(failed))

elif cmd == "gap":
    # FILE: the longest wait between two acknowledged posts, by server time, in ms
    ts = []
    for r in replies(args[0], "post"):
        if r.get("ok"):
            ts.append(parse_time(r["message"]["time"]))
    gaps = [(b - a).total_seconds() * 1000 for a, b in zip(ts, ts[1:])]
    print(int(max(gaps)) if gaps else 0)

elif cmd == "check":
    # FILE CHANNEL ACKED...: the user logged in, the channel is listed, and the
    # channel's history holds every acknowledged text exactly once, in order,
    # with contiguous sequence numbers.
    # Prints "lost dups stored extra general_seq bots".
    path, channel, acked_files = args[0], args[1], args[2:]
    for c in ("login", "channels", "history"):
        rs = replies(path, c)
        if not rs:
            sys.exit("/%s: no reply" % c)
        for r in rs:
            if not r.get("ok"):
                sys.exit("/%s: %s" % (c, r.get("error")))
    chans = {c["name"]: c for c in replies(path, "channels")[0]["channels"]}
    if channel not in chans:
        sys.exit("channel %r is gone: channels are %s" % (channel, sorted(chans)))
    hist = replies(path, "history")
    msgs = hist[0]["messages"]
    seqs = [m["seq"] for m in msgs]
    if seqs != list(range(1, len(seqs) + 1)):
        sys.exit("channel %r: sequence numbers are not 1..%d: %s" % (channel, len(seqs), seqs))
    acked = []
    for a in acked_files:
        with open(a) as f:
            acked += [l.rstrip("\n") for l in f if l.strip()]
    where = {}
    for m in msgs:
        where.setdefault(m["text"], []).append(m["seq"])
    lost = [t for t in acked if t not in where]
    dups = [t for t, s in where.items() if len(s) > 1]
    order = [where[t][0] for t in acked if t in where]
    if order != sorted(order):
        sys.exit("acknowledged messages are out of order in the history")
    extra = len(set(where) - set(acked))
    for t in lost[:5]:
        print("lost: %s" % t, file=sys.stderr)
    for t in dups[:5]:
        print("duplicated: %s at seq %s" % (t, where[t]), file=sys.stderr)
    general = chans.get("general", {}).get("seq", 0)
    bots = len({m["from"] for m in hist[1]["messages"]}) if len(hist) > 1 else 0
    print(len(lost), len(dups), len(msgs), extra, general, bots)

elif cmd == "seq":
    # FILE CHANNEL: the channel's sequence number from /channels
    chans = {c["name"]: c for c in replies(args[0], "channels")[0]["channels"]}
    print(chans.get(args[1], {}).get("seq", 0))

elif cmd == "ms":
    # stdin: an RFC 3339 time; print it in ms since 1970
    print(int(parse_time(sys.stdin.read().strip()).timestamp() * 1000))

elif cmd == "logtime":
    # MSG EPOCH: stdin is a role's log; print the time (ms since 1970) of its
    # first line with msg=MSG and epoch=EPOCH
    msg, epoch = args
    for line in sys.stdin:
        fields = dict(f.split("=", 1) for f in line.replace('msg="leader elected"', "msg=leader-elected").split() if "=" in f)
        if fields.get("msg") == msg and fields.get("epoch") == epoch:
            print(int(parse_time(fields["time"]).timestamp() * 1000))
            break
PY
py() { python3 "$tmp/e2e.py" "$@"; }

# ---- docker helpers ---------------------------------------------------------
# cid SERVICE: its container id(s), as load_ids found them (`docker start`
# keeps them); compose's own `ps` is slow enough to skew the timings.
declare -A ids
load_ids() {
	local s
	for s in broker pubsub server-1 server-2 server-3 bot; do
		ids[$s]=$(timeout 30 "${dc[@]}" ps -q "$s")
		[[ -n ${ids[$s]} ]] || fail "no container for the service $s"
	done
}
cid() { echo "${ids[$1]}"; }

# chat runs one chat subcommand inside the broker's container (no container
# to create: fast enough to poll).
chat_in_broker() { timeout 15 docker exec "$broker" /chat "$@" --broker tcp://localhost:5555; }

# status prints "LEADER EPOCH id:role:epoch:lag..." or nothing.
status() {
	local out
	out=$(chat_in_broker status --json --timeout 1s --retries 1 2>/dev/null) || return 0
	py status <<<"$out" 2>/dev/null || true
}

# client runs a scripted `chat client --json` (its commands on stdin) in a
# one-off container of the compose project's client service, output in $1.
client() {
	local out=$1
	shift
	timeout "${CLIENT_TIMEOUT:-90}" "${dc[@]}" run --rm -T --no-deps client client --json >"$out" 2>>"$tmp/client.stderr"
}

health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1" 2>/dev/null || echo gone; }

# wait_healthy TIMEOUT SERVICE...: wait until each service's container is healthy.
wait_healthy() {
	local limit=$1 deadline last=0 s id h waiting
	shift
	deadline=$(($(now_ms) + limit * 1000))
	while :; do
		waiting=()
		for s in "$@"; do
			id=$(cid "$s")
			h=$(health "$id")
			[[ $h == healthy ]] || waiting+=("$s($h)")
		done
		[[ ${#waiting[@]} -eq 0 ]] && return 0
		if (($(now_ms) > deadline)); then
			fail "not healthy after ${limit}s: ${waiting[*]}"
		fi
		if (($(now_ms) - last >= 2000)); then
			say "  waiting for: ${waiting[*]}"
			last=$(now_ms)
		fi
		sleep 0.5
	done
}

# ---- build and start --------------------------------------------------------
say "compose: $COMPOSE ($(${COMPOSE} version --short 2>/dev/null || ${COMPOSE} version | head -1)); project $project"
say "building the image $image"
CHAT_IMAGE=$image timeout 600 "$root/scripts/build-image.sh"

say "starting the cluster"
up_start=$(now_ms)
timeout 180 "${dc[@]}" up -d >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log" >&2; fail "compose up"; }
say "containers created in $(($(now_ms) - up_start)) ms; waiting for their healthchecks"
load_ids
wait_healthy 90 broker pubsub server-1 server-2 server-3
broker=$(cid broker)
bots=$(timeout 30 "${dc[@]}" ps -q bot | wc -l)
[[ $bots -eq 2 ]] || fail "expected 2 bot replicas, found $bots"
say "cluster healthy after $(($(now_ms) - up_start)) ms (2 bots running)"
for s in broker pubsub server-1 server-2 server-3; do
	if timeout 30 docker logs "$(cid "$s")" 2>&1 | grep -q "no cluster secret"; then
		fail "$s runs without the cluster secret: compose.yaml does not pass CHAT_CLUSTER_SECRET to it"
	fi
done

# A leader, and every server in its epoch.
deadline=$(($(now_ms) + 30000))
while :; do
	read -r leader epoch servers <<<"$(status)" || true
	if [[ ${leader:-0} -gt 0 && $servers != *unreachable* && $(grep -o ':follower:' <<<"$servers" | wc -l) -eq 2 ]]; then
		break
	fi
	(($(now_ms) < deadline)) || fail "no leader with two followers after 30s: ${servers:-no status}"
	sleep 0.3
done
say "server $leader leads, epoch $epoch ($servers)"

# The host can reach the published ports too.
if [[ $(uname -s) == Linux ]]; then
	hostport=$(docker port "$broker" 5555/tcp | head -1)
	timeout 30 docker cp "$broker:/chat" "$tmp/chat" >/dev/null
	timeout 20 "$tmp/chat" status --broker "tcp://$hostport" --retries 2 >"$tmp/host-status" 2>&1 ||
		{ cat "$tmp/host-status" >&2; fail "chat status from the host at $hostport"; }
	say "the host reaches the broker at $hostport: $(head -1 "$tmp/host-status")"
fi

# ---- a user, a channel, messages ---------------------------------------------
user="e2e-user"
pass="e2e-password-$RANDOM$RANDOM"
chan="e2e"
{
	echo "/register $user $pass"
	echo "/login $user $pass"
	echo "/create $chan failover demo"
	for i in $(seq -w 1 20); do echo "setup $i"; done
} | client "$tmp/setup.out" || fail "the setup client failed: $(tail -3 "$tmp/client.stderr")"
py ok "$tmp/setup.out" register login create post || fail "setup: $(py ok "$tmp/setup.out" register login create post 2>&1)"
read -r n nfail <<<"$(py acked "$tmp/setup.out" "setup " "$tmp/acked.setup")"
[[ $n -eq 20 && $nfail -eq 0 ]] || fail "setup: $n of 20 posts acknowledged"
say "registered $user, created #$chan, posted 20 messages (all acknowledged)"
acked_files=("$tmp/acked.setup")

# ---- failovers --------------------------------------------------------------
scenarios=(stop kill pause)
# A crash needs the container's process to be ours to signal (root on the
# engine's host; not Docker Desktop's VM).
pid=$(docker inspect -f '{{.State.Pid}}' "$(cid server-1)")
if [[ $pid -gt 0 ]] && kill -0 "$pid" 2>/dev/null; then
	scenarios+=(crash)
else
	say "no crash scenario: this shell can't signal the containers' processes"
fi
declare -A result restarts
for how in "${scenarios[@]}"; do
	say "---- $(what "$how") of the leader ----"
	read -r old epoch servers <<<"$(status)" || true
	[[ ${old:-0} -gt 0 ]] || fail "no leader before docker $how"
	victim=$(cid "server-$old")
	say "server $old leads epoch $epoch; a client starts posting $posts messages"

	# The writer posts one message every 100 ms through the failover.
	{
		echo "/login $user $pass"
		echo "/join $chan"
		for i in $(seq -w 1 "$posts"); do
			echo "$how $i"
			sleep 0.1
		done
	} | CLIENT_TIMEOUT=180 client "$tmp/$how.out" &
	writer=$!
	# Let it get going, so the failover hits it mid-stream.
	deadline=$(($(now_ms) + 30000))
	until [[ $(grep -c '"command":"post","ok":true' "$tmp/$how.out" 2>/dev/null) -ge 10 ]]; do
		(($(now_ms) < deadline)) || fail "the writer did not get 10 posts through in 30s"
		sleep 0.1
	done

	t0=$(now_ms)
	if [[ $how == crash ]]; then
		kill -KILL "$(docker inspect -f '{{.State.Pid}}' "$victim")" || fail "kill -9 server-$old's process"
		restarts[$victim]=1
	else
		timeout 60 docker "$how" "$victim" >/dev/null || fail "docker $how server-$old"
	fi
	say "$(what "$how") server-$old took $(($(now_ms) - t0)) ms"

	deadline=$((t0 + 20000))
	while :; do
		read -r new nepoch servers <<<"$(status)" || true
		if [[ ${new:-0} -gt 0 && $new != "$old" && ${nepoch:-0} -gt $epoch ]]; then
			break
		fi
		(($(now_ms) < deadline)) || fail "no new leader 20s after $(what "$how") (status: ${new:-none} ${nepoch:-} ${servers:-})"
		sleep 0.1
	done
	t_status=$(($(now_ms) - t0))
	t_led=$(timeout 30 docker logs "$(cid "server-$new")" 2>&1 | py logtime leading "$nepoch")
	t_elect=$((${t_led:-$t0} - t0))
	t_brk=$(timeout 30 docker logs "$broker" 2>&1 | py logtime leader-elected "$nepoch")
	t_broker=$((${t_brk:-$t0} - t0))
	say "server $new leads epoch $nepoch: elected $t_elect ms after $(what "$how"), known to the broker after $t_broker ms, seen by chat status after $t_status ms"

	wait "$writer" || fail "the writer client failed: $(tail -3 "$tmp/client.stderr")"
	read -r nack nfail <<<"$(py acked "$tmp/$how.out" "$how " "$tmp/acked.$how")"
	acked_files+=("$tmp/acked.$how")
	gap=$(py gap "$tmp/$how.out")
	say "the writer: $nack of $posts posts acknowledged, $nfail failed; longest wait between two acknowledgements $gap ms"

	# Everything still there: the user logs in, the channel, every message.
	{
		echo "/login $user $pass"
		echo "/channels"
		echo "/history $chan 500"
		echo "/join general"
		echo "/history general 50"
	} | client "$tmp/$how.check" || fail "the checking client failed"
	if ! out=$(py check "$tmp/$how.check" "$chan" "${acked_files[@]}" 2>"$tmp/check.err"); then
		cat "$tmp/check.err" >&2
		fail "after $(what "$how"): $(tail -1 "$tmp/check.err")"
	fi
	cat "$tmp/check.err" >&2
	read -r lost dups stored extra gseq1 nbots <<<"$out"
	say "after $(what "$how"): $user logs in, #$chan holds $stored messages: lost $lost, duplicated $dups, unacknowledged but stored $extra"
	[[ $lost -eq 0 && $dups -eq 0 && $nfail -eq 0 ]] || fail "$(what "$how"): lost $lost, duplicated $dups, failed posts $nfail"
	[[ $nbots -ge 2 ]] || fail "after $(what "$how"): the last 50 messages of #general come from $nbots bot(s), not 2"

	# The old leader comes back, and follows.
	t1=$(now_ms)
	[[ $how != crash ]] || t1=$t0
	case $how in
	pause) timeout 30 docker unpause "$victim" >/dev/null || fail "docker unpause" ;;
	crash) ;; # the restart policy's job
	*) timeout 30 docker start "$victim" >/dev/null || fail "docker start" ;;
	esac
	deadline=$((t1 + 40000))
	while :; do
		read -r cur cepoch servers <<<"$(status)" || true
		if [[ ${cur:-0} -gt 0 && " $servers " == *" $old:follower:$cepoch:"* ]]; then
			lag=${servers##*"$old:follower:$cepoch:"}
			lag=${lag%% *}
			[[ $lag -le 50 ]] && break
		fi
		(($(now_ms) < deadline)) || fail "server $old did not rejoin as a follower in 40s (status: ${cur:-none} ${cepoch:-} ${servers:-})"
		sleep 0.2
	done
	t_rejoin=$(($(now_ms) - t1))
	if [[ $how == crash ]]; then
		# The poll above began late (after the checks): Docker's restart time
		# is the telling one.
		t_rejoin=$(($(docker inspect -f '{{.State.StartedAt}}' "$victim" | py ms) - t0))
		say "Docker restarted server-$old $t_rejoin ms after the crash"
	fi
	wait_healthy 30 "server-$old"
	[[ $cur == "$new" ]] || say "note: leadership moved again, to server $cur"
	say "server $old is back as a follower of server $cur (epoch $cepoch) after $t_rejoin ms"

	# The bots kept posting: #general grew since the check above.
	echo "/login $user $pass
/channels" | client "$tmp/$how.seq" || fail "the client failed"
	gseq2=$(py seq "$tmp/$how.seq" general)
	[[ $gseq2 -gt $gseq1 ]] || fail "the bots stopped: #general at seq $gseq1, then $gseq2"
	say "the bots keep posting: #general seq $gseq1 -> $gseq2"

	result[$how]="$old $new $epoch->$nepoch $t_elect $t_broker $t_status $gap $nack/$posts $lost $dups $t_rejoin"
done

# ---- no role crashed --------------------------------------------------------
crashed=()
for s in broker pubsub bot server-1 server-2 server-3; do
	for id in $(cid "$s"); do
		n=$(docker inspect -f '{{.RestartCount}}' "$id")
		[[ $n -eq ${restarts[$id]:-0} ]] || crashed+=("$s($n restarts)")
	done
done
[[ ${#crashed[@]} -eq 0 ]] || fail "roles restarted by Docker (crashed): ${crashed[*]}"
botstats=$(timeout 30 "${dc[@]}" logs --no-color bot 2>/dev/null | grep 'msg="bot progress"' |
	awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "bot") b = kv[2]; if (kv[1] == "posted") p[b] = kv[2]; if (kv[1] == "failed") f[b] = kv[2] } }
		END { for (b in p) printf "%s posted %s (failed %s); ", b, p[b], f[b] }')

# ---- summary (on stdout; progress went to stderr) ---------------------------
{
	echo
	echo "compose-e2e summary ($COMPOSE, $(($(now_ms) - started)) ms in all)"
	f='%-7s %-6s %-6s %-6s %-8s %-8s %-8s %-9s %-7s %-5s %-5s %-7s\n'
	# shellcheck disable=SC2059
	printf "$f" failure leader new epoch elected broker status max-wait acked lost dups rejoin
	for how in "${scenarios[@]}"; do
		read -r o n e te tb ts g a l d r <<<"${result[$how]}"
		# shellcheck disable=SC2059
		printf "$f" "$how" "$o" "$n" "$e" "$te" "$tb" "$ts" "$g" "$a" "$l" "$d" "$r"
	done
	echo "times in ms after the failure began: elected: the new leader's 'leading' log line;"
	echo "broker: the broker's 'leader elected' line (requests flow again); status: chat status first shows it;"
	echo "max-wait: the longest gap between two acknowledged posts of the writer; rejoin: from docker start/unpause"
	echo "until chat status shows the old leader as a follower of the current epoch (crash: until Docker restarted it)"
	echo "bots: ${botstats:-?}"
	echo "messages lost: 0, duplicated: 0; no container restarted by Docker but the crashed ones"
}
