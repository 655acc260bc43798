package clock

import (
	"testing"
	"time"
)

func TestReadingCompensatesHalfTheRoundTrip(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	// Polled at t0, answered at t0+10ms: the clock's 3.004s-ahead answer is
	// taken as from t0+5ms, so it is 2.999s ahead, give or take 5ms.
	r := Reading{ID: 2, Sent: t0, Received: t0.Add(10 * time.Millisecond), Clock: t0.Add(3004 * time.Millisecond), Pending: -time.Second}
	if r.RTT() != 10*time.Millisecond || r.Error() != 5*time.Millisecond {
		t.Fatalf("rtt %v error %v, want 10ms and 5ms", r.RTT(), r.Error())
	}
	if r.Offset() != 2999*time.Millisecond || r.Target() != 1999*time.Millisecond {
		t.Fatalf("offset %v target %v, want 2.999s and 1.999s", r.Offset(), r.Target())
	}
	self := Self(1, t0, -time.Second)
	if self.RTT() != 0 || self.Offset() != time.Second || self.Target() != 0 {
		t.Fatalf("own reading: rtt %v offset %v target %v, want 0, 1s, 0", self.RTT(), self.Offset(), self.Target())
	}
}

func TestBestSampleHasTheShortestRoundTrip(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	sample := func(rtt, offset time.Duration) Reading {
		return Reading{Sent: t0, Received: t0.Add(rtt), Clock: t0.Add(rtt/2 + offset)}
	}
	best, ok := Best([]Reading{sample(9*time.Millisecond, 40*time.Millisecond), sample(time.Millisecond, 2*time.Second), sample(3*time.Millisecond, 0)})
	if !ok || best.RTT() != time.Millisecond || best.Offset() != 2*time.Second {
		t.Fatalf("best: rtt %v offset %v, want the 1ms sample", best.RTT(), best.Offset())
	}
	if _, ok := Best(nil); ok {
		t.Fatal("best of no samples reported ok")
	}
}

// world is a time daemon and the clocks it synchronizes, on one fake OS
// clock. Each poll takes rtt, split out and back as given.
type world struct {
	host   *fakeOS
	clocks map[int]*Software
	ids    []int
	daemon int
	out    time.Duration // one way, there
	back   time.Duration // one way, back
	b      Berkeley
}

func newWorld(daemon int, skews map[int]time.Duration) *world {
	w := &world{host: newFakeOS(), clocks: map[int]*Software{}, daemon: daemon,
		out: time.Millisecond, back: time.Millisecond, b: Berkeley{MinChange: 100 * time.Microsecond}}
	for id := 1; id <= len(skews); id++ {
		w.clocks[id] = w.host.clock(skews[id])
		w.ids = append(w.ids, id)
	}
	return w
}

// round polls every clock, averages, and applies the corrections.
func (w *world) round() Result {
	d := w.clocks[w.daemon]
	ref := func() time.Time { now, p := d.Read(); return now.Add(p) }
	var rs []Reading
	for _, id := range w.ids {
		if id == w.daemon {
			now, p := d.Read()
			rs = append(rs, Self(id, now, p))
			continue
		}
		sent := ref()
		w.host.advance(w.out)
		now, p := w.clocks[id].Read()
		w.host.advance(w.back)
		rs = append(rs, Reading{ID: id, Clock: now, Pending: p, Sent: sent, Received: ref()})
	}
	res := w.b.Average(w.daemon, rs)
	for _, c := range res.Corrections {
		if c.Send() {
			w.clocks[c.ID].Adjust(c.Delta)
		}
	}
	return res
}

// spread returns the largest difference between two clocks' readings, and
// between where they are heading.
func (w *world) spread() (now, target time.Duration) {
	var lo, hi, tlo, thi time.Time
	for i, id := range w.ids {
		n, p := w.clocks[id].Read()
		if i == 0 || n.Before(lo) {
			lo = n
		}
		if i == 0 || n.After(hi) {
			hi = n
		}
		if tn := n.Add(p); i == 0 || tn.Before(tlo) {
			tlo = tn
		}
		if tn := n.Add(p); i == 0 || tn.After(thi) {
			thi = tn
		}
	}
	return hi.Sub(lo), thi.Sub(tlo)
}

func near(a, b, tol time.Duration) bool { return a-b <= tol && b-a <= tol }

// Three clocks, +3s and -2s off the daemon: the first round sets every
// clock heading for the average (+1/3 s), the +3s one slews back at half
// speed, none ever reads backwards, and in the end all read the same.
func TestBerkeleySkewsConverge(t *testing.T) {
	skews := map[int]time.Duration{1: 3 * time.Second, 2: -2 * time.Second, 3: 0}
	w := newWorld(3, skews)
	res := w.round()
	avg := time.Second / 3
	if !near(res.Average, avg, 10*time.Microsecond) || res.Averaged != 3 {
		t.Fatalf("average %v of %d clocks, want %v of 3", res.Average, res.Averaged, avg)
	}
	if _, target := w.spread(); target > 10*time.Microsecond {
		t.Fatalf("after one round the clocks head for times %v apart", target)
	}
	last := map[int]time.Time{}
	for _, id := range w.ids {
		last[id] = w.clocks[id].Now()
	}
	for range 70 { // 7s of 100ms rounds: the -2.67s slew takes 5.3s
		w.host.advance(100*time.Millisecond - 2*(w.out+w.back))
		w.round()
		for _, id := range w.ids {
			now := w.clocks[id].Now()
			if now.Before(last[id]) {
				t.Fatalf("clock %d went back by %v", id, last[id].Sub(now))
			}
			last[id] = now
		}
	}
	if now, _ := w.spread(); now > 10*time.Microsecond {
		t.Fatalf("after 7s the clocks read times %v apart", now)
	}
	for _, id := range w.ids {
		c := w.clocks[id]
		if want := avg - skews[id]; !near(c.Correction(), want, 10*time.Microsecond) || c.Pending() != 0 {
			t.Errorf("clock %d: correction %v pending %v, want %v and 0", id, c.Correction(), c.Pending(), want)
		}
	}
}

// A clock an hour off is left out of the average (the others agree on the
// same time as without it) and is still corrected all the way to it.
func TestBerkeleyOutlierDoesNotDrag(t *testing.T) {
	without := newWorld(3, map[int]time.Duration{1: 3 * time.Second, 2: -2 * time.Second, 3: 0})
	with := newWorld(3, map[int]time.Duration{1: 3 * time.Second, 2: -2 * time.Second, 3: 0, 4: time.Hour})
	want := without.round().Average
	res := with.round()
	if !near(res.Average, want, 10*time.Microsecond) || res.Averaged != 3 {
		t.Fatalf("with a 1h outlier the average is %v of %d clocks, want %v of 3", res.Average, res.Averaged, want)
	}
	out := res.Corrections[3]
	if !out.Outlier || !near(out.Delta, want-time.Hour, 10*time.Microsecond) {
		t.Fatalf("outlier: %+v, want Outlier and Delta %v", out, want-time.Hour)
	}
	if _, target := with.spread(); target > 10*time.Microsecond {
		t.Fatalf("the outlier was not brought in: targets %v apart", target)
	}
}

// When the daemon itself is the outlier, the median still belongs to the
// majority: the daemon corrects itself and barely moves the others.
func TestBerkeleyDaemonIsTheOutlier(t *testing.T) {
	w := newWorld(3, map[int]time.Duration{1: 0, 2: 2 * time.Second, 3: time.Hour})
	res := w.round()
	if c := res.Corrections[2]; !c.Outlier || res.Averaged != 2 {
		t.Fatalf("daemon's own correction %+v, %d averaged; want it an outlier, 2 averaged", c, res.Averaged)
	}
	if _, target := w.spread(); target > 10*time.Microsecond {
		t.Fatalf("clocks heading for times %v apart", target)
	}
	if got := w.clocks[1].Now().Sub(w.host.t); !near(got, time.Second, 10*time.Microsecond) {
		t.Fatalf("the agreed time is OS%+v, want the average of the others, +1s", got)
	}
}

// A clock still slewing counts where it is heading, not where it reads: it
// does not drag the others while it slews.
func TestBerkeleyCountsPendingSlews(t *testing.T) {
	w := newWorld(3, map[int]time.Duration{1: 2 * time.Second, 2: 0, 3: 0})
	w.clocks[1].Adjust(-2 * time.Second)
	w.host.advance(time.Second) // reads +1s, heading for 0
	res := w.round()
	if !near(res.Average, 0, 10*time.Microsecond) {
		t.Fatalf("average %v, want 0: the slewing clock dragged it", res.Average)
	}
	for _, c := range res.Corrections {
		if c.Send() {
			t.Errorf("clock %d told %v though every clock already heads for the same time", c.ID, c.Delta)
		}
	}
}

func TestBerkeleyLateReadingsAreSkipped(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	b := Berkeley{MaxRTT: 50 * time.Millisecond}
	res := b.Average(1, []Reading{
		Self(1, t0, 0),
		{ID: 2, Sent: t0, Received: t0.Add(2 * time.Millisecond), Clock: t0.Add(time.Millisecond + 300*time.Millisecond)},
		{ID: 3, Sent: t0, Received: t0.Add(200 * time.Millisecond), Clock: t0.Add(100*time.Millisecond + 5*time.Second)},
	})
	late := res.Corrections[2]
	if !late.Late || late.Send() || late.Delta != 0 || res.Averaged != 2 || res.Average != 150*time.Millisecond {
		t.Fatalf("late reading %+v, average %v of %d; want it skipped, 150ms of 2", late, res.Average, res.Averaged)
	}
}

func TestBerkeleyNoMajorityKeepsTheDaemonsTime(t *testing.T) {
	w := newWorld(1, map[int]time.Duration{1: 0, 2: time.Hour})
	res := w.round()
	if res.Averaged != 0 || res.Average != 0 {
		t.Fatalf("two clocks 1h apart: average %v of %d, want the daemon's own (0) of 0", res.Average, res.Averaged)
	}
	if got := w.clocks[2].Now().Sub(w.host.t); got != 0 {
		t.Fatalf("clock 2 reads OS%+v, want the daemon's time", got)
	}
}

func TestBerkeleyThresholdTable(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(id int, off time.Duration) Reading {
		return Reading{ID: id, Sent: t0, Received: t0, Clock: t0.Add(off)}
	}
	for _, tc := range []struct {
		name     string
		b        Berkeley
		offsets  []time.Duration
		average  time.Duration
		averaged int
	}{
		{"all within", Berkeley{}, []time.Duration{0, 3 * time.Second, -3 * time.Second}, 0, 3},
		{"default 10s threshold", Berkeley{}, []time.Duration{0, time.Second, 12 * time.Second}, 500 * time.Millisecond, 2},
		{"tight threshold", Berkeley{Threshold: time.Second}, []time.Duration{0, 3 * time.Second, -2 * time.Second, 100 * time.Millisecond}, 50 * time.Millisecond, 2},
		{"even count, majority agrees", Berkeley{}, []time.Duration{0, time.Second, 2 * time.Second, time.Hour}, time.Second, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rs []Reading
			for i, o := range tc.offsets {
				rs = append(rs, at(i+1, o))
			}
			res := tc.b.Average(1, rs)
			if res.Average != tc.average || res.Averaged != tc.averaged {
				t.Fatalf("average %v of %d, want %v of %d", res.Average, res.Averaged, tc.average, tc.averaged)
			}
			for i, c := range res.Corrections {
				if c.Delta != tc.average-tc.offsets[i] {
					t.Errorf("clock %d: delta %v, want %v", c.ID, c.Delta, tc.average-tc.offsets[i])
				}
			}
		})
	}
}
