package server

import (
	"context"
	"sync"
	"time"

	"chat/clock"
)

// Berkeley synchronization of the servers' software clocks (clock.Berkeley
// does the arithmetic). The leader is the time daemon: every
// Config.ClockSync it polls each follower's clock with probes (a few per
// follower, keeping the one with the shortest round trip), reads its own,
// averages the readings that are not outliers, sends each follower its
// correction in an "adjust" peer message carrying the leader's epoch (a
// follower ignores one from a deposed leader), and applies its own. Servers
// only ever change their software clock (clock.Software), never the OS clock.
//
// A correction that would move a clock back is slewed (the clock runs at half
// speed until it is absorbed), so no server's timestamps go backwards; only a
// clock more than clock.MaxSlew ahead is stepped back. While a follower slews,
// its probe shows where it is, not where it is heading; the daemon remembers
// the correction it told each follower to head for and counts what the
// follower's reported correction has not yet absorbed, so a slewing clock
// does not drag the average. A new leader starts with no such memory: for
// its first rounds a follower still slewing is counted where it reads, a
// transient the following rounds undo.
//
// A new leader takes the role over by itself: the loop runs on every server
// and acts only while this one leads.

const (
	syncSamples = 3 // probes per follower per round; the shortest round trip wins
	// Readings with a longer round trip are too imprecise (the error bound is
	// half of it): that follower waits for the next round.
	syncMaxRTT = 200 * time.Millisecond
	// A clock already heading within this of the agreed time is left alone:
	// smaller corrections are within the measurement error and would only
	// restart a slew in progress.
	syncMinChange = 500 * time.Microsecond
)

// told is what the time daemon last told a follower: the correction it was
// to end up with (its reported correction plus the delta), and the delta.
type told struct {
	want, delta time.Duration
}

// pending estimates the part of a backward correction a follower that now
// reports corr has still to absorb: between delta and 0, and 0 after a
// forward or stepped correction, which apply at once.
func (t told) pending(corr time.Duration) time.Duration {
	return min(max(t.want-corr, min(t.delta, 0)), 0)
}

// clockSync runs the time daemon while this server leads.
func (s *Server) clockSync() {
	every := s.cfg.ClockSync
	if every <= 0 {
		return
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	var epoch uint64
	memory := map[int]told{}
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
		}
		ep := s.epoch.Load()
		if ep == 0 {
			continue
		}
		if ep != epoch {
			epoch = ep
			clear(memory)
		}
		s.syncClocks(ep, min(every/2, time.Second), memory)
	}
}

// polled is one follower's best reading in a round.
type polled struct {
	r    clock.Reading
	corr time.Duration // the follower's correction when it answered
	ok   bool
}

// syncClocks runs one round of Berkeley synchronization as the leader of
// epoch ep; each phase (polling, adjusting) gets at most timeout.
func (s *Server) syncClocks(ep uint64, timeout time.Duration, memory map[int]told) {
	ids := s.peers.ids()
	got := make([]polled, len(ids))
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	var wg sync.WaitGroup
	for i, id := range ids {
		m, known := memory[id]
		wg.Go(func() { got[i] = s.pollClock(ctx, id, m, known) })
	}
	wg.Wait()
	cancel()

	now, pending := s.clock.Read()
	readings := []clock.Reading{clock.Self(s.cfg.ID, now, pending)}
	corrs := map[int]time.Duration{}
	for i, p := range got {
		if !p.ok {
			delete(memory, ids[i]) // unreachable: it may come back restarted
			continue
		}
		readings = append(readings, p.r)
		corrs[p.r.ID] = p.corr
	}
	res := clock.Berkeley{MaxRTT: syncMaxRTT, MinChange: syncMinChange}.Average(s.cfg.ID, readings)
	if s.epoch.Load() != ep {
		return // deposed meanwhile: the new leader synchronizes
	}

	ctx, cancel = context.WithTimeout(s.ctx, timeout)
	defer cancel()
	acked := make([]bool, len(res.Corrections))
	for i, c := range res.Corrections {
		if c.Outlier {
			s.log.Warn("clock outlier", "server", c.ID, "offset", c.Offset, "median", res.Median)
		}
		if !c.Send() {
			continue
		}
		if c.ID == s.cfg.ID {
			s.clock.Adjust(c.Delta)
			acked[i] = true
			continue
		}
		wg.Go(func() {
			r, ok := s.peers.ask(ctx, c.ID, peerMsg{Type: "adjust", DeltaNS: int64(c.Delta), Epoch: ep})
			acked[i] = ok && r.Type == "ok"
		})
	}
	wg.Wait()

	adjusted, largest := 0, time.Duration(0)
	for i, c := range res.Corrections {
		if !c.Send() {
			continue
		}
		if !acked[i] {
			delete(memory, c.ID)
			continue
		}
		if c.ID != s.cfg.ID {
			memory[c.ID] = told{want: corrs[c.ID] + c.Delta, delta: c.Delta}
		}
		adjusted++
		largest = max(largest, c.Delta, -c.Delta)
	}
	level := s.log.Debug
	if largest >= 10*time.Millisecond {
		level = s.log.Info
	}
	if adjusted > 0 {
		level("clocks synchronized", "epoch", ep, "clocks", len(readings), "averaged", res.Averaged,
			"average", res.Average, "adjusted", adjusted, "largest", largest)
	}
}

// pollClock reads follower id's clock syncSamples times and returns the
// reading with the shortest round trip. Sent and Received are this server's
// clock target (its reading plus any slew still to come), which runs at real
// speed even while this clock slews.
func (s *Server) pollClock(ctx context.Context, id int, m told, known bool) polled {
	ref := func() time.Time {
		now, pending := s.clock.Read()
		return now.Add(pending)
	}
	var best polled
	for range syncSamples {
		sent := ref()
		st, _, ok := s.peers.state(ctx, id)
		received := ref()
		if !ok {
			break
		}
		r := clock.Reading{ID: id, Clock: st.Time, Sent: sent, Received: received}
		corr := time.Duration(st.Correction)
		if known {
			r.Pending = m.pending(corr)
		}
		if !best.ok || r.RTT() < best.r.RTT() {
			best = polled{r: r, corr: corr, ok: true}
		}
	}
	return best
}
