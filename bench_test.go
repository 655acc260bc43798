package main

// Failover and takeover measurements with real processes, written up in
// BENCHMARKS.md. They are tests gated by CHAT_BENCH=1 (they take minutes and
// measure time, which a shared machine makes noisy), and print a table:
//
//	CHAT_BENCH=1 go test -run 'TestBench' -v -timeout 30m .
//
// CHAT_BENCH_KILLS (default 25) kills per signal for the failover table,
// CHAT_BENCH_TAKEOVERS (default 15) kills per log size for the takeover
// table, CHAT_BENCH_MESSAGES (default 1000000) the large log's size.

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"chat/store"
	"chat/store/filelog"
	"chat/wire"
)

func benchOnly(t *testing.T) {
	if os.Getenv("CHAT_BENCH") == "" {
		t.Skip("a measurement: run with CHAT_BENCH=1 (see BENCHMARKS.md)")
	}
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// stats summarizes durations.
type stats struct {
	n                        int
	min, p50, p90, p99, max  time.Duration
	mean                     time.Duration
	sorted                   []time.Duration
	serverTook, serverTook50 time.Duration
}

func summarize(ds []time.Duration) stats {
	s := stats{n: len(ds), sorted: slices.Clone(ds)}
	if len(ds) == 0 {
		return s
	}
	slices.Sort(s.sorted)
	// Nearest rank.
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(s.sorted))+0.999999) - 1
		return s.sorted[max(0, min(i, len(s.sorted)-1))]
	}
	s.min, s.max = s.sorted[0], s.sorted[len(s.sorted)-1]
	s.p50, s.p90, s.p99 = rank(0.50), rank(0.90), rank(0.99)
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	s.mean = sum / time.Duration(len(ds))
	return s
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }

// allUp waits until every server is a leader or a follower with lag 0.
func allUp(s *system) *wire.StatusReply {
	s.t.Helper()
	return s.waitStatus(leadTimeout, func(st *wire.StatusReply) error {
		if st.Leader == 0 {
			return fmt.Errorf("no leader")
		}
		for _, sv := range st.Servers {
			if sv.Role == wire.RoleUnreachable || sv.Lag != 0 {
				return fmt.Errorf("server %d is %s with lag %d", sv.ID, sv.Role, sv.Lag)
			}
		}
		return nil
	})
}

// measureFailover stops the leader with sig (SIGKILL, SIGSTOP or SIGTERM) and returns
// the time from the signal to the first acknowledged write of a newer epoch,
// as a client posting in a loop sees it; then it brings the old leader back
// as a follower. It returns the new leader's own "leading ... took" too.
func measureFailover(t *testing.T, s *system, c *rawClient, sig string, channel string) (time.Duration, time.Duration) {
	t.Helper()
	st := allUp(s)
	round := time.Now().UnixNano()
	c.must(t, wire.Post, wire.PostRequest{Channel: channel, Text: fmt.Sprintf("before %s %d", sig, round)}, nil)
	leader, epoch := st.Leader, st.Epoch
	victim := s.server(leader)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t0 := time.Now()
	switch sig {
	case "SIGKILL":
		victim.sigkill()
	case "SIGSTOP":
		victim.pause()
	case "SIGTERM":
		victim.sigterm()
	}
	var took time.Duration
	for n := 1; ; n++ {
		rep, err := c.do(ctx, wire.Post, wire.PostRequest{Channel: channel, Text: fmt.Sprintf("after %s %d.%d", sig, round, n)})
		if err != nil {
			t.Fatalf("no write acknowledged after %s of the leader: %v", sig, err)
		}
		if !rep.OK {
			t.Fatalf("post refused after %s: %s", sig, rep.Error.Message)
		}
		if rep.Epoch > epoch {
			took = rep.At.Sub(t0)
			break
		}
	}

	// The new leader's own view of its takeover: from elected to leading.
	var serverTook time.Duration
	if p := s.server(s.waitNewLeader(leader, epoch).Leader); p != nil {
		l := p.waitLog(leadTimeout, func(l logLine) bool { return l.msg() == "leading" && l.num("epoch") > epoch })
		serverTook = time.Duration(l.num("took"))
	}

	switch sig {
	case "SIGKILL":
		<-victim.exited
		s.startServer(leader)
	case "SIGTERM":
		<-victim.exited
		if err := victim.cleanExit(); err != nil {
			t.Fatal(err)
		}
		s.startServer(leader)
	case "SIGSTOP":
		resumed := time.Now()
		victim.resume()
		victim.waitLog(leadTimeout, func(l logLine) bool {
			return l.At.After(resumed) && (l.msg() == "stopped leading" || l.msg() == "stepped down")
		})
	}
	return took, serverTook
}

// TestBenchFailover measures failover time (signal to the leader -> first
// acknowledged write in the new epoch) over CHAT_BENCH_KILLS SIGKILLs, as
// many SIGSTOPs and as many SIGTERMs (clean handovers) of the leader.
func TestBenchFailover(t *testing.T) {
	benchOnly(t)
	kills := envInt(t, "CHAT_BENCH_KILLS", 25)
	s := newSystem(t, systemOptions{})
	c := newRawClient(t, s.Frontend)
	c.login(t, "Bench", "pw-bench")
	c.join(t, "bench")

	var rows []string
	for _, sig := range []string{"SIGKILL", "SIGSTOP", "SIGTERM"} {
		var ds, server []time.Duration
		for i := 0; i < kills; i++ {
			d, st := measureFailover(t, s, c, sig, "bench")
			ds, server = append(ds, d), append(server, st)
			t.Logf("%s %d: %v (new leader's catch-up %v)", sig, i+1, d.Round(time.Microsecond), st)
		}
		st, sv := summarize(ds), summarize(server)
		rows = append(rows, fmt.Sprintf("| %s | %d | %s | %s | %s | %s | %s | %s |", sig, st.n, ms(st.min), ms(st.p50), ms(st.p90), ms(st.p99), ms(st.max), ms(sv.p50)))
	}
	hist := c.history(t, "bench")
	checkStored(t, "bench", hist, "", nil, nil)
	s.checkOneLeaderPerEpoch()
	report(t, "Failover: signal to the leader -> first acknowledged write in a newer epoch (ms)",
		"| signal | kills | min | p50 | p90 | p99 | max | new leader's catch-up p50 |\n|---|---|---|---|---|---|---|---|", rows)
}

// TestBenchTakeover measures takeover time (SIGKILL of the leader -> first
// acknowledged write) with an empty log and with CHAT_BENCH_MESSAGES stored
// messages, in one run: both systems run side by side and the kills
// alternate between them, so both see the same machine. A hot standby must
// not take longer to take over a longer history.
func TestBenchTakeover(t *testing.T) {
	benchOnly(t)
	kills := envInt(t, "CHAT_BENCH_TAKEOVERS", 15)
	big := envInt(t, "CHAT_BENCH_MESSAGES", 1_000_000)

	type takeoverRun struct {
		messages    int
		s           *system
		c           *rawClient
		took, catch []time.Duration
		ready, fill time.Duration
	}
	var systems []*takeoverRun
	for _, n := range []int{big, 0} {
		sys := &takeoverRun{messages: n}
		dir := t.TempDir()
		if n > 0 {
			start := time.Now()
			buildLog(t, dir, n)
			sys.fill = time.Since(start)
			t.Logf("wrote a log of %d posts in %v", n, sys.fill.Round(time.Millisecond))
		}
		start := time.Now()
		sys.s = newSystem(t, systemOptions{data: dir, ready: 10 * time.Minute})
		sys.c = newRawClient(t, sys.s.Frontend)
		sys.c.login(t, "Bench", "pw-bench")
		sys.c.join(t, "bench")
		// The followers are hot: caught up, and their first snapshot written
		// (a server snapshots every 100000 entries applied).
		st := allUp(sys.s)
		if n >= 100_000 {
			for _, id := range sys.s.serverIDs() {
				if id != st.Leader {
					sys.s.server(id).waitLog(10*time.Minute, func(l logLine) bool { return l.msg() == "snapshot saved" })
				}
			}
		}
		sys.ready = time.Since(start)
		t.Logf("%d messages: system up and followers hot in %v", n, sys.ready.Round(time.Millisecond))
		systems = append(systems, sys)
	}
	for i := 0; i < kills; i++ {
		for _, sys := range systems {
			d, c := measureFailover(t, sys.s, sys.c, "SIGKILL", "bench")
			sys.took, sys.catch = append(sys.took, d), append(sys.catch, c)
			t.Logf("takeover %d with %d messages: %v (new leader's catch-up %v)", i+1, sys.messages, d.Round(time.Microsecond), c)
		}
	}
	slices.Reverse(systems) // 0 first
	var rows []string
	for _, sys := range systems {
		st, c := summarize(sys.took), summarize(sys.catch)
		rows = append(rows, fmt.Sprintf("| %d | %d | %s | %s | %s | %s | %s | %.0f µs | %.1fs |", sys.messages, st.n, ms(st.min), ms(st.p50),
			ms(st.p90), ms(st.max), ms(st.mean), float64(c.p50)/float64(time.Microsecond), sys.ready.Seconds()))
	}
	p0, p1 := summarize(systems[0].took).p50, summarize(systems[1].took).p50
	ratio := float64(p1) / float64(p0)
	rows = append(rows, fmt.Sprintf("\nratio of the p50s (%d / 0 messages): %.2f (target: under 1.5)", big, ratio))
	report(t, "Takeover: SIGKILL of the leader -> first acknowledged write (ms)",
		"| stored messages | kills | min | p50 | p90 | max | mean | new leader's catch-up p50 | start-up (replay, snapshot) |\n|---|---|---|---|---|---|---|---|---|", rows)
	if ratio >= 1.5 {
		t.Errorf("takeover with %d messages takes %.2f times as long as with none (target: under 1.5)", big, ratio)
	}
}

// report prints a table (and appends it to CHAT_BENCH_OUT when set).
func report(t *testing.T, title, header string, rows []string) {
	text := fmt.Sprintf("%s\n\n%s\n%s\n", title, header, strings.Join(rows, "\n"))
	t.Logf("\n%s", text)
	fmt.Println(text)
	if out := os.Getenv("CHAT_BENCH_OUT"); out != "" {
		f, err := os.OpenFile(out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintf(f, "%s\n", text)
			f.Close()
		}
	}
}

// buildLog writes a realistic log of n posts into dir through the filelog
// API: ten users (registered with a placeholder hash: they never log in), ten
// channels they all joined, and n posts spread over them, each with a client
// id, request number, Lamport time and time, in batches of 4096.
func buildLog(t testing.TB, dir string, n int) {
	t.Helper()
	l, err := filelog.Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Claim(1, 1); err != nil {
		t.Fatal(err)
	}
	const users, channels = 10, 10
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var lamport uint64
	var batch [][]byte
	flush := func() {
		if err := l.Append(1, batch); err != nil {
			t.Fatal(err)
		}
		batch = batch[:0]
	}
	add := func(c *store.Command) {
		lamport++
		c.Lamport = lamport
		c.Time = base.Add(time.Duration(lamport) * time.Millisecond)
		b, err := store.EncodeCommand(c)
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, b)
		if len(batch) == 4096 {
			flush()
		}
	}
	user := func(u int) string { return fmt.Sprintf("filler%d", u) }
	channel := func(c int) string { return fmt.Sprintf("big%d", c) }
	for u := range users {
		add(&store.Command{Op: wire.Register, User: user(u), Hash: "$argon2id$v=19$m=65536,t=1,p=2$placeholder$placeholder"})
	}
	for c := range channels {
		add(&store.Command{Op: wire.Create, User: user(0), Name: channel(c), Description: "a channel with a long history"})
	}
	for u := 1; u < users; u++ {
		for c := range channels {
			add(&store.Command{Op: wire.Join, User: user(u), Name: channel(c)})
		}
	}
	for i := range n {
		u, c := i%users, (i/users)%channels
		add(&store.Command{Op: wire.Post, Client: "filler-client-" + strconv.Itoa(u), Req: uint64(i/users + 1), User: user(u), Name: channel(c),
			Text: fmt.Sprintf("message %d from %s: the quick brown fox jumps over the lazy dog", i, user(u))})
	}
	if len(batch) > 0 {
		flush()
	}
}
