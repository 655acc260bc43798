package clock

import (
	"testing"
	"time"
)

// fakeOS is an OS clock that moves only when told.
type fakeOS struct{ t time.Time }

func newFakeOS() *fakeOS                             { return &fakeOS{t: time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)} }
func (f *fakeOS) now() time.Time                     { return f.t }
func (f *fakeOS) advance(d time.Duration)            { f.t = f.t.Add(d) }
func (f *fakeOS) clock(skew time.Duration) *Software { return NewSoftware(skew, f.now) }

func TestSoftwareSkewAndForwardJump(t *testing.T) {
	host := newFakeOS()
	c := host.clock(3 * time.Second)
	if got := c.Now().Sub(host.t); got != 3*time.Second {
		t.Fatalf("skewed clock reads OS%+v, want +3s", got)
	}
	c.Adjust(250 * time.Millisecond)
	if got := c.Now().Sub(host.t); got != 3250*time.Millisecond {
		t.Fatalf("after +250ms reads OS%+v, want +3.25s at once", got)
	}
	if c.Correction() != 250*time.Millisecond || c.Pending() != 0 {
		t.Fatalf("correction %v pending %v, want 250ms and 0", c.Correction(), c.Pending())
	}
}

func TestSoftwareSlewsBackwardCorrections(t *testing.T) {
	host := newFakeOS()
	c := host.clock(0)
	c.Adjust(-time.Second)
	if got := c.Now().Sub(host.t); got != 0 {
		t.Fatalf("a backward correction jumped: reads OS%+v at once", got)
	}
	if c.Pending() != -time.Second {
		t.Fatalf("pending %v, want -1s", c.Pending())
	}
	last := c.Now()
	for step := range 300 { // 3s in 10ms steps
		host.advance(10 * time.Millisecond)
		now, pending := c.Read()
		if now.Before(last) {
			t.Fatalf("step %d: clock went back from %v to %v", step, last, now)
		}
		if got := now.Sub(host.t); got != c.Correction() {
			t.Fatalf("step %d: clock reads OS%+v but its correction is %v", step, got, c.Correction())
		}
		if step == 99 { // 1s of OS time: half speed, half absorbed
			if now.Sub(last) != 5*time.Millisecond || pending != -500*time.Millisecond {
				t.Fatalf("after 1s: advanced %v in the last 10ms, pending %v; want 5ms and -500ms", now.Sub(last), pending)
			}
		}
		last = now
	}
	if c.Correction() != -time.Second || c.Pending() != 0 {
		t.Fatalf("after 3s: correction %v pending %v, want -1s and 0", c.Correction(), c.Pending())
	}
	if got := c.Now().Sub(host.t); got != -time.Second {
		t.Fatalf("after the slew reads OS%+v, want -1s", got)
	}
}

func TestSoftwareStepsHugeBackwardCorrections(t *testing.T) {
	host := newFakeOS()
	c := host.clock(time.Hour)
	c.Adjust(-time.Hour)
	if got := c.Now().Sub(host.t); got != 0 || c.Pending() != 0 {
		t.Fatalf("-1h: reads OS%+v pending %v, want a step to OS+0", got, c.Pending())
	}
}

func TestSoftwareAdjustReplacesASlewInProgress(t *testing.T) {
	host := newFakeOS()
	c := host.clock(0)
	c.Adjust(-2 * time.Second)
	host.advance(time.Second) // 500ms absorbed, 1.5s to go
	// The reading says the clock is 200ms ahead of where it should be now:
	// the slew still to come is replaced, not added to.
	before := c.Now()
	c.Adjust(-200 * time.Millisecond)
	if c.Pending() != -200*time.Millisecond || !c.Now().Equal(before) {
		t.Fatalf("pending %v (want -200ms), now moved by %v (want 0)", c.Pending(), c.Now().Sub(before))
	}
	c.Adjust(100 * time.Millisecond)
	if c.Pending() != 0 || c.Now().Sub(before) != 100*time.Millisecond {
		t.Fatalf("forward during a slew: pending %v (want 0), moved %v (want +100ms)", c.Pending(), c.Now().Sub(before))
	}
}

func TestSoftwareNeverGoesBackUnderAnySlew(t *testing.T) {
	host := newFakeOS()
	c := host.clock(0)
	last := c.Now()
	deltas := []time.Duration{-3 * time.Second, -time.Millisecond, 2 * time.Second, -MaxSlew, -7 * time.Second, -time.Nanosecond}
	for i := range 2000 {
		if i%97 == 0 {
			c.Adjust(deltas[(i/97)%len(deltas)])
		}
		host.advance(time.Duration(1+i%13) * time.Millisecond)
		now := c.Now()
		if now.Before(last) {
			t.Fatalf("step %d: clock went back by %v", i, last.Sub(now))
		}
		last = now
	}
}

func TestLamport(t *testing.T) {
	var a, b Lamport
	if a.Tick() != 1 || a.Tick() != 2 {
		t.Fatal("tick does not count from 1")
	}
	if got := b.Witness(a.Now()); got != 3 {
		t.Fatalf("witness(2) on a fresh clock = %d, want 3", got)
	}
	if got := a.Witness(1); got != 3 {
		t.Fatalf("witness of an older time = %d, want own + 1 = 3", got)
	}
	b.Observe(10)
	if b.Now() != 10 || b.Tick() != 11 {
		t.Fatalf("observe(10) then tick = %d, want 11", b.Now())
	}
}
