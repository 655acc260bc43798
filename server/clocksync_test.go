package server_test

import (
	"context"
	"math"
	"testing"
	"time"

	"chat/client"
	"chat/clock"
	"chat/internal/cluster"
	"chat/server"
	"chat/wire"
)

// skewed starts a cluster whose servers' clocks are off by skews (by id) and
// synchronize every 100ms.
func skewed(t *testing.T, skews map[int]time.Duration) *cluster.Cluster {
	return cluster.Start(t, cluster.Options{Servers: len(skews), Tune: func(cfg *server.Config) {
		cfg.ClockSkew = skews[cfg.ID]
		cfg.ClockSync = 100 * time.Millisecond
	}})
}

func ms(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }

// spread returns how far apart the servers' clocks are, as the status
// service measured them (each against the leader's, half the round trip
// compensated), and whether every server answered.
func spread(st wire.StatusReply) (time.Duration, bool) {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range st.Servers {
		if s.Role == wire.RoleUnreachable {
			return 0, false
		}
		lo, hi = min(lo, s.Offset), max(hi, s.Offset)
	}
	return ms(hi - lo), true
}

// waitAgree polls status until the servers' clocks agree within tol and
// check (if any) accepts the reply. It fails the test after timeout, and if
// any server's clock, as status shows it, ever goes backwards (but for a
// step back of an outlier).
func waitAgree(t *testing.T, raw *rawClient, tol, timeout time.Duration, check func(wire.StatusReply) bool) (wire.StatusReply, time.Duration) {
	t.Helper()
	start := time.Now()
	seen := map[int]time.Time{}
	var st wire.StatusReply
	for {
		mustOK(t, raw.do(wire.Status, nil), &st)
		for _, s := range st.Servers {
			if s.Role == wire.RoleUnreachable {
				continue
			}
			// Only a clock more than clock.MaxSlew ahead is stepped back.
			if last, ok := seen[s.ID]; ok && s.Seen.Before(last) && last.Sub(s.Seen) <= clock.MaxSlew {
				t.Fatalf("server %d's clock went back by %v", s.ID, last.Sub(s.Seen))
			}
			seen[s.ID] = s.Seen
		}
		if d, ok := spread(st); ok && d <= tol && (check == nil || check(st)) {
			return st, time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("clocks did not agree within %v after %v: %+v", tol, timeout, st.Servers)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func correction(st wire.StatusReply, id int) time.Duration {
	for _, s := range st.Servers {
		if s.ID == id {
			return ms(s.Correction)
		}
	}
	return 0
}

// commonTime returns the range of the servers' clocks as offsets from the OS
// clock (skew + correction): one value when they agree.
func commonTime(st wire.StatusReply, skews map[int]time.Duration) (lo, hi time.Duration) {
	first := true
	for id, skew := range skews {
		at := correction(st, id) + skew
		if first {
			lo, hi, first = at, at, false
		}
		lo, hi = min(lo, at), max(hi, at)
	}
	return lo, hi
}

func near(a, b, tol time.Duration) bool { return a-b <= tol && b-a <= tol }

// Three servers, one 3s ahead and one 2s behind: they agree on the average of
// the three (+1/3 s) within a few milliseconds, without any clock going back;
// then a client whose own clock is 2s ahead measures its offset from them.
func TestClockSyncConverges(t *testing.T) {
	skews := map[int]time.Duration{1: 3 * time.Second, 2: -2 * time.Second, 3: 0}
	c := skewed(t, skews)
	leader, _ := c.WaitLeader(10 * time.Second)
	raw := newRaw(t, c.Frontend)

	// Every server ends up on one common time (correction + skew equal for
	// all), inside the range the clocks started in: the average of the
	// three (+1/3 s) when nothing disturbs the rounds; under load, a round
	// that reads a clock still slewing lands elsewhere in that range.
	const tol = 2 * time.Millisecond
	st, took := waitAgree(t, raw, tol, 15*time.Second, func(st wire.StatusReply) bool {
		lo, hi := commonTime(st, skews)
		return hi-lo <= 5*time.Millisecond && lo >= -2*time.Second && hi <= 3*time.Second
	})
	d, _ := spread(st)
	t.Logf("clocks agree within %v after %v (the +3s clock slews 2.67s back at half speed)", d, took.Round(time.Millisecond))
	for _, s := range st.Servers {
		t.Logf("server %d (%s): correction %.3f ms, offset %.3f ms", s.ID, s.Role, s.Correction, s.Offset)
	}

	t.Run("client time", func(t *testing.T) {
		cl, err := client.Dial(context.Background(), client.Config{Broker: c.Frontend, PubSub: c.Subscribe, Skew: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var before, after wire.StatusReply
		mustOK(t, raw.do(wire.Status, nil), &before)
		info, err := cl.Time(ctx, 5)
		if err != nil {
			t.Fatal(err)
		}
		mustOK(t, raw.do(wire.Status, nil), &after)
		// The servers' time is the OS clock plus the leader's skew and
		// correction; the client's is the OS clock plus 2s.
		lo := skews[leader] + min(correction(before, leader), correction(after, leader)) - 2*time.Second
		hi := skews[leader] + max(correction(before, leader), correction(after, leader)) - 2*time.Second
		t.Logf("offset %v, rtt %v, error bound %v; true offset %v", info.Offset, info.RTT, info.Error, lo)
		if info.Offset < lo-info.Error || info.Offset > hi+info.Error {
			t.Fatalf("client offset %v, want %v within the error bound %v", info.Offset, lo, info.Error)
		}
	})

	// The new leader takes the time daemon's role over: the old leader,
	// restarted with its uncorrected clock 1/3 s behind the others, is
	// brought in, and the three agree on their new average.
	t.Run("failover", func(t *testing.T) {
		_, epoch := c.WaitLeader(time.Second)
		c.Kill(leader)
		c.WaitNewLeader(epoch, 10*time.Second)
		c.StartServer(leader)
		st, took := waitAgree(t, raw, tol, 10*time.Second, func(st wire.StatusReply) bool {
			lo, hi := commonTime(st, skews)
			return hi-lo <= 5*time.Millisecond && correction(st, leader) != 0
		})
		d, _ := spread(st)
		t.Logf("leader %d: clocks agree within %v after %v", st.Leader, d, took.Round(time.Millisecond))
	})
}

// A server an hour ahead is left out of the average: the others agree on
// the average of their own clocks (+1s), and it is brought to them.
func TestClockSyncOutlierDoesNotDrag(t *testing.T) {
	skews := map[int]time.Duration{1: 2 * time.Second, 2: 0, 3: time.Hour}
	c := skewed(t, skews)
	c.WaitLeader(10 * time.Second)
	raw := newRaw(t, c.Frontend)
	// All three agree on a time between the two sane clocks (their average,
	// +1s, when no round reads a clock mid-slew), an hour away from the
	// outlier's.
	st, took := waitAgree(t, raw, 2*time.Millisecond, 15*time.Second, func(st wire.StatusReply) bool {
		lo, hi := commonTime(st, skews)
		return hi-lo <= 5*time.Millisecond && lo >= 0 && hi <= 2*time.Second
	})
	agreed, _ := commonTime(st, skews)
	t.Logf("agreed after %v: %+v", took.Round(time.Millisecond), st.Servers)
	// The agreed time, read the NTP way: the OS clock plus 1s.
	t0 := time.Now()
	var tr wire.TimeReply
	mustOK(t, raw.do(wire.Time, nil), &tr)
	t1 := time.Now()
	rtt := t1.Sub(t0)
	off := tr.Time.Sub(t0.Add(rtt / 2))
	if !near(off, agreed, rtt/2+5*time.Millisecond) || off < 0 || off > 2*time.Second+rtt {
		t.Fatalf("the servers' time is OS%+v (rtt %v), want OS+%v, between the sane clocks: the outlier dragged it", off, rtt, agreed)
	}
}

// Lamport order end to end: each message sent after receiving another has a
// greater timestamp, across two clients, a direct message and a failover.
func TestLamportCausalChain(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Servers: 3})
	leader, epoch := c.WaitLeader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dial := func(user string) *client.Client {
		cl, err := client.Dial(ctx, client.Config{Broker: c.Frontend, PubSub: c.Subscribe, Timeout: time.Second, ResyncEvery: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		if err := cl.Register(ctx, user, "secret1"); err != nil {
			t.Fatalf("register %s: %v", user, err)
		}
		if _, err := cl.Login(ctx, user, "secret1"); err != nil {
			t.Fatalf("login %s: %v", user, err)
		}
		return cl
	}
	ana, bob := dial("ana"), dial("bob")
	if _, err := ana.Create(ctx, "general", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Join(ctx, "general"); err != nil {
		t.Fatal(err)
	}
	// receive waits for the event with text, checks the receiver's clock
	// moved past it, and returns it.
	receive := func(cl *client.Client, text string) client.Event {
		t.Helper()
		for {
			select {
			case ev := <-cl.Events():
				if ev.Text != text {
					continue
				}
				if cl.Lamport() <= ev.Lamport {
					t.Fatalf("received %q at lamport %d but the clock is only %d", text, ev.Lamport, cl.Lamport())
				}
				return ev
			case <-ctx.Done():
				t.Fatalf("%q never arrived", text)
			}
		}
	}
	after := func(prev uint64, text string, m wire.Message, err error) uint64 {
		t.Helper()
		if err != nil {
			t.Fatalf("send %q: %v", text, err)
		}
		if m.Lamport <= prev {
			t.Fatalf("%q sent after receiving lamport %d got %d", text, prev, m.Lamport)
		}
		return m.Lamport
	}

	m, err := ana.Post(ctx, "general", "one")
	l := after(0, "one", m, err)
	ev := receive(bob, "one")
	if ev.Lamport != l {
		t.Fatalf("bob saw lamport %d for a message stored at %d", ev.Lamport, l)
	}
	m, err = bob.Post(ctx, "general", "two")
	l = after(l, "two", m, err)
	receive(ana, "two")
	m, err = ana.DM(ctx, "bob", "three")
	l = after(l, "three", m, err)
	receive(bob, "three")

	c.Kill(leader)
	c.WaitNewLeader(epoch, 10*time.Second)
	m, err = bob.Post(ctx, "general", "four")
	l = after(l, "four", m, err)
	receive(ana, "four")
	m, err = ana.DM(ctx, "bob", "five")
	l = after(l, "five", m, err)
	receive(bob, "five")

	h, err := bob.History(ctx, wire.HistoryRequest{Channel: "general"})
	if err != nil {
		t.Fatal(err)
	}
	var last uint64
	for _, m := range h.Messages {
		if m.Lamport <= last {
			t.Fatalf("history is not in lamport order: %+v", h.Messages)
		}
		last = m.Lamport
	}
	if len(h.Messages) != 3 {
		t.Fatalf("history has %d messages, want 3", len(h.Messages))
	}
}
