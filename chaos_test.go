package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"chat/client"
	"chat/wire"
)

// chaosDuration is how long TestChaos disturbs the system: CHAT_CHAOS (a Go
// duration, e.g. 10m), else 40s (about a minute with setup and checks).
func chaosDuration(t *testing.T) time.Duration {
	v := os.Getenv("CHAT_CHAOS")
	if v == "" {
		return 40 * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("CHAT_CHAOS=%q: want a duration such as 10m", v)
	}
	return d
}

// TestChaos runs three servers, a broker, a pubsub, two `chat bot` processes,
// an in-process client.Client and a raw protocol client, all posting numbered
// messages with retries, while the leader is SIGKILLed and restarted (at once
// or after a new leader took over) and SIGSTOPped and SIGCONTed, over and
// over. Then: no acknowledged message is missing, none is stored twice, every
// channel's seqs are 1..N, Lamport times grow with seq, epochs only grow, one
// server answered in each epoch (the one that logged leading it), every
// publication and every acknowledgement agrees with the history, a watching
// client saw each message once and in order, and every server holds the same
// log.
func TestChaos(t *testing.T) {
	dur := chaosDuration(t)
	s := newSystem(t, systemOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The raw client posts to #raw and reads every channel at the end.
	raw := newRawClient(t, s.Frontend)
	raw.login(t, "RawPoster", "pw-raw-poster")
	for _, ch := range []string{"raw", "lib", "bots"} {
		raw.join(t, ch)
	}
	pubs := s.recordPublications(wire.ChannelTopic("raw"), wire.ChannelTopic("lib"), wire.ChannelTopic("bots"))

	// A watcher: a client.Client that only receives.
	watcher := dialClient(t, s, "watcher")
	loginClient(t, watcher, "Watcher", "pw-watcher")
	for _, ch := range []string{"raw", "lib", "bots"} {
		if _, err := watcher.Join(ctx, ch); err != nil {
			t.Fatalf("watcher joins %s: %v", ch, err)
		}
	}
	seen := newEventLog(watcher)

	// Bots, as processes.
	var bots []*proc
	for i := 1; i <= 2; i++ {
		bots = append(bots, s.start(fmt.Sprintf("bot-%d", i), []string{"bot", "--broker", s.Frontend, "--pubsub", s.Subscribe,
			"--name", fmt.Sprintf("chaosbot%d", i), "--channel", "bots", "--rate", "10"}, procOptions{}))
	}
	for _, b := range bots {
		b.waitLog(leadTimeout, func(l logLine) bool { return l.msg() == "bot ready" })
	}

	// The library poster and the raw poster.
	lib := startLibPoster(t, s, "lib")
	rp := startPoster(raw, "raw", "raw", postEvery)
	t.Cleanup(rp.stop)
	rp.waitAcks(t, 3, leadTimeout, nil)
	lib.waitAcks(t, 3)

	// Status samples, for the epochs over time.
	sampler := startSampler(t, s)

	// The chaos.
	deadline := time.Now().Add(dur)
	var kills, pauses, restarts int
	for round := 0; time.Now().Before(deadline); round++ {
		// Everything is making progress before each blow.
		rp.waitAcks(t, len(rp.acks())+3, leadTimeout, nil)
		lib.waitAcks(t, lib.count()+3)
		st := s.waitStatus(leadTimeout, func(st *wire.StatusReply) error {
			if st.Leader == 0 {
				return errors.New("no leader")
			}
			for _, sv := range st.Servers {
				if sv.Role == wire.RoleUnreachable {
					return fmt.Errorf("server %d unreachable", sv.ID)
				}
			}
			return nil
		})
		leader, epoch := st.Leader, st.Epoch
		victim := s.server(leader)
		switch round % 3 {
		case 0: // SIGKILL; restart once another leads
			victim.kill()
			kills++
			st2 := s.waitNewLeader(leader, epoch)
			s.startServer(leader)
			restarts++
			s.waitFollower(leader, st2.Leader)
		case 1: // SIGSTOP; SIGCONT once another leads and has acknowledged writes
			victim.pause()
			pauses++
			s.waitNewLeader(leader, epoch)
			rp.waitAcks(t, 3, leadTimeout, func(a ack) bool { return a.Epoch > epoch })
			resumed := time.Now()
			victim.resume()
			victim.waitLog(leadTimeout, func(l logLine) bool {
				return l.At.After(resumed) && (l.msg() == "stopped leading" || l.msg() == "stepped down")
			})
		case 2: // SIGKILL and restart at once, during the election
			victim.kill()
			kills++
			s.startServer(leader)
			restarts++
			s.waitStatus(leadTimeout, func(st *wire.StatusReply) error {
				if st.Leader == 0 || st.Epoch <= epoch {
					return fmt.Errorf("no leader in an epoch above %d", epoch)
				}
				return nil
			})
		}
	}
	t.Logf("chaos for %v: %d SIGKILLs, %d restarts, %d SIGSTOP/SIGCONT", dur, kills, restarts, pauses)

	// Stop the load: posters, then the bots (clean exits, with their counts).
	rp.stop()
	lib.stop()
	botPosted := map[string]int{}
	for i, b := range bots {
		b.term()
		name := fmt.Sprintf("chaosbot%d", i+1)
		l := b.waitLog(time.Second, func(l logLine) bool { return l.msg() == "bot stopping" || l.msg() == "bot done" })
		botPosted[name] = int(l.num("posted"))
	}
	samples := sampler.stop()

	// Every server holds the same log.
	final := s.waitStatus(leadTimeout, func(st *wire.StatusReply) error {
		for _, sv := range st.Servers {
			if sv.Role == wire.RoleUnreachable || sv.Lag != 0 || sv.Index != st.Index {
				return fmt.Errorf("server %d: %s, index %d, lag %d; leader index %d", sv.ID, sv.Role, sv.Index, sv.Lag, st.Index)
			}
		}
		return nil
	})
	t.Logf("final status: %s", fmtStatus(final))

	// The stored history against everything the clients were told.
	leaders := s.checkOneLeaderPerEpoch()
	hist := map[string][]wire.Message{}
	for _, ch := range []string{"raw", "lib", "bots"} {
		hist[ch] = raw.history(t, ch)
		checkPublications(t, ch, pubs.all(), hist[ch], leaders)
		seen.check(t, ch, hist[ch])
	}
	checkStored(t, "raw", hist["raw"], "raw", rp.acks(), rp.uncertain)
	for _, r := range rp.refused {
		t.Errorf("raw post refused: %s", r)
	}
	checkStored(t, "lib", hist["lib"], "lib", lib.acks(), lib.uncertain())
	for _, r := range lib.refusedList() {
		t.Errorf("library post refused: %s", r)
	}
	checkStored(t, "bots", hist["bots"], "", nil, nil)
	for name, posted := range botPosted {
		n := 0
		for _, m := range hist["bots"] {
			if strings.HasPrefix(m.Text, name+" #") {
				n++
			}
		}
		if n < posted {
			t.Errorf("%s: %d acknowledged posts, %d stored", name, posted, n)
		}
		t.Logf("%s: %d acknowledged, %d stored", name, posted, n)
	}
	epochs := checkReplies(t, raw.allReplies(), leaders)
	checkPostReplies(t, "raw", hist["raw"], raw.allReplies())
	checkSamples(t, samples, leaders)
	t.Logf("%d epochs led: %v; the raw client was answered in %d of them; %d status samples", len(leaders), leaders, epochs, len(samples))
}

// --- the library poster ---

// libPoster posts "lib #N" to a channel through client.Client.Post (the
// library's own retries), one at a time.
type libPoster struct {
	c      *client.Client
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	acked   []ack
	unknown []string
	refused []string
	changed chan struct{}
}

func dialClient(t *testing.T, s *system, name string) *client.Client {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		f, err := os.Create(s.dir + "/" + name + ".inproc.log")
		if err == nil {
			t.Cleanup(func() { f.Close() })
			log = slog.New(slog.NewJSONHandler(f, &slog.HandlerOptions{Level: slog.LevelInfo}))
		}
	}
	c, err := client.Dial(context.Background(), client.Config{Broker: s.Frontend, PubSub: s.Subscribe, Timeout: time.Second, Retries: 20, Logger: log})
	if err != nil {
		t.Fatalf("dial %s: %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func loginClient(t *testing.T, c *client.Client, user, password string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), replyTimeout)
	defer cancel()
	if err := c.Register(ctx, user, password); err != nil && wire.ErrorCode(err) != wire.CodeExists {
		t.Fatalf("register %s: %v", user, err)
	}
	if _, err := c.Login(ctx, user, password); err != nil {
		t.Fatalf("login %s: %v", user, err)
	}
}

func startLibPoster(t *testing.T, s *system, channel string) *libPoster {
	t.Helper()
	c := dialClient(t, s, "lib-poster")
	loginClient(t, c, "LibPoster", "pw-lib-poster")
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := c.Create(ctx, channel, "client library posts"); err != nil && wire.ErrorCode(err) != wire.CodeExists {
		t.Fatalf("create %s: %v", channel, err)
	}
	if _, err := c.Join(ctx, channel); err != nil {
		t.Fatalf("join %s: %v", channel, err)
	}
	p := &libPoster{c: c, cancel: cancel, done: make(chan struct{}), changed: make(chan struct{})}
	go func() {
		defer close(p.done)
		go func() { // a client must read its events
			for range c.Events() {
			}
		}()
		tick := time.NewTicker(postEvery)
		defer tick.Stop()
		for n := 1; ctx.Err() == nil; n++ {
			text := fmt.Sprintf("lib #%d", n)
			m, err := c.Post(ctx, channel, text)
			var ue *client.UnreachableError
			p.mu.Lock()
			switch {
			case err == nil:
				p.acked = append(p.acked, ack{Text: text, Seq: m.Seq, Epoch: c.Epoch(), At: time.Now()})
			case errors.As(err, &ue) || ctx.Err() != nil:
				p.unknown = append(p.unknown, text)
			default:
				p.refused = append(p.refused, fmt.Sprintf("%s: %v (%s)", text, err, wire.ErrorCode(err)))
			}
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
			select {
			case <-tick.C:
			case <-ctx.Done():
			}
		}
	}()
	t.Cleanup(p.stop)
	return p
}

func (p *libPoster) stop() {
	p.cancel()
	<-p.done
}

func (p *libPoster) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acked)
}

func (p *libPoster) acks() []ack {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.acked)
}

func (p *libPoster) uncertain() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.unknown)
}

func (p *libPoster) refusedList() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.refused)
}

func (p *libPoster) waitAcks(t *testing.T, n int) {
	t.Helper()
	deadline := time.NewTimer(leadTimeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		got, ch := len(p.acked), p.changed
		p.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-p.done:
			t.Fatalf("library poster stopped at %d of %d acknowledgements", got, n)
		case <-deadline.C:
			t.Fatalf("library poster: %d of %d acknowledgements within %v", got, n, leadTimeout)
		}
	}
}

// --- what a watching client was shown ---

type eventLog struct {
	mu     sync.Mutex
	byChan map[string][]client.Event
	done   chan struct{}
}

func newEventLog(c *client.Client) *eventLog {
	e := &eventLog{byChan: map[string][]client.Event{}, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		for ev := range c.Events() {
			e.mu.Lock()
			e.byChan[ev.Channel] = append(e.byChan[ev.Channel], ev)
			e.mu.Unlock()
		}
	}()
	return e
}

// check waits until the watcher was shown the channel's last message, then
// checks it was shown each message once, in order, as stored.
func (e *eventLog) check(t *testing.T, channel string, hist []wire.Message) {
	t.Helper()
	err := poll(leadTimeout, func() error {
		e.mu.Lock()
		defer e.mu.Unlock()
		evs := e.byChan[channel]
		if len(evs) == 0 || evs[len(evs)-1].Seq < uint64(len(hist)) {
			last := uint64(0)
			if len(evs) > 0 {
				last = evs[len(evs)-1].Seq
			}
			return fmt.Errorf("watcher of %s shown up to seq %d of %d", channel, last, len(hist))
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	e.mu.Lock()
	evs := slices.Clone(e.byChan[channel])
	e.mu.Unlock()
	recovered := 0
	for i, ev := range evs {
		if i > 0 && ev.Seq != evs[i-1].Seq+1 {
			t.Errorf("watcher of %s: seq %d shown after seq %d", channel, ev.Seq, evs[i-1].Seq)
		}
		if ev.Seq == 0 || ev.Seq > uint64(len(hist)) || hist[ev.Seq-1].Text != ev.Text {
			t.Errorf("watcher of %s: shown seq %d %q, which the history contradicts", channel, ev.Seq, ev.Text)
		}
		if ev.Recovered {
			recovered++
		}
	}
	t.Logf("watcher of %s: shown %d messages (%d recovered from history)", channel, len(evs), recovered)
}

// --- status samples ---

type sample struct {
	At     time.Time
	Leader int
	Epoch  uint64
}

type sampler struct {
	cancel  context.CancelFunc
	done    chan struct{}
	samples []sample
}

// startSampler asks for the status every 100ms through its own client.
func startSampler(t *testing.T, s *system) *sampler {
	c := dialClient(t, s, "sampler")
	ctx, cancel := context.WithCancel(context.Background())
	sm := &sampler{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(sm.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for ctx.Err() == nil {
			rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
			st, err := c.Status(rctx)
			rcancel()
			if err == nil && st.Leader != 0 {
				sm.samples = append(sm.samples, sample{At: time.Now(), Leader: st.Leader, Epoch: st.Epoch})
			}
			select {
			case <-tick.C:
			case <-ctx.Done():
			}
		}
	}()
	t.Cleanup(func() { sm.stop() })
	return sm
}

func (sm *sampler) stop() []sample {
	sm.cancel()
	<-sm.done
	return sm.samples
}

// checkSamples checks that the epochs the status reported never went back
// and that each epoch had the leader the logs name.
func checkSamples(t *testing.T, samples []sample, leaders map[uint64]int) {
	t.Helper()
	changes := 0
	for i, sm := range samples {
		if i > 0 && sm.Epoch < samples[i-1].Epoch {
			t.Errorf("status went from epoch %d (at %s) back to epoch %d (at %s)", samples[i-1].Epoch,
				samples[i-1].At.Format("15:04:05.000"), sm.Epoch, sm.At.Format("15:04:05.000"))
		}
		if i > 0 && sm.Epoch != samples[i-1].Epoch {
			changes++
		}
		if l, ok := leaders[sm.Epoch]; ok && l != sm.Leader {
			t.Errorf("status named server %d leader of epoch %d; the logs say %d", sm.Leader, sm.Epoch, l)
		}
	}
	t.Logf("status samples: %d, epoch changes seen: %d", len(samples), changes)
}
