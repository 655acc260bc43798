package clock

import (
	"slices"
	"time"
)

// Berkeley clock synchronization, pure: the caller polls the clocks and sends
// the corrections; this file only does the arithmetic.
//
// The time daemon reads every clock, its own included, against one reference:
// its own clock's target (its reading plus any slew still to come, which runs
// at real speed). Each reading is compensated for half its round trip. The
// daemon takes the median of the readings, averages those within Threshold of
// it (a fault-tolerant average: one broken clock cannot drag the others), and
// tells every clock how far to move, as a delta from its own reading rather
// than as an absolute time (which would be stale by the time it arrived).
//
// Outliers are still corrected, all the way to the average: a clock an hour
// off is the one that most needs it, and being left out of the average only
// means it gets no say in where the others go. (Software steps such a clock
// rather than slewing it for hours.)

// Reading is one clock as a time daemon read it: the daemon sent a poll at
// Sent and got the answer, Clock, at Received; Sent and Received are on the
// daemon's reference clock. Clock is taken to be from the middle of the round
// trip, so the reading's error is at most half the round trip.
type Reading struct {
	ID       int
	Clock    time.Time     // the polled clock when it answered
	Sent     time.Time     // the daemon's reference when it sent the poll
	Received time.Time     // the daemon's reference when the answer arrived
	Pending  time.Duration // a correction the polled clock is still slewing toward (0: none)
}

// Self returns the daemon's reading of its own clock: now is what the clock
// reads and pending what it is still slewing toward (Software.Read). The
// reference is now + pending, so the reading has no round trip.
func Self(id int, now time.Time, pending time.Duration) Reading {
	ref := now.Add(pending)
	return Reading{ID: id, Clock: now, Sent: ref, Received: ref, Pending: pending}
}

// RTT returns the round trip of the poll.
func (r Reading) RTT() time.Duration { return r.Received.Sub(r.Sent) }

// Error returns the bound on the error of Offset: half the round trip.
func (r Reading) Error() time.Duration { return r.RTT() / 2 }

// Offset returns the polled clock minus the reference at the middle of the
// round trip: the NTP estimate, Clock - (Sent + RTT/2).
func (r Reading) Offset() time.Duration { return r.Clock.Sub(r.Sent.Add(r.RTT() / 2)) }

// Target returns where the polled clock is heading, against the reference:
// Offset plus Pending.
func (r Reading) Target() time.Duration { return r.Offset() + r.Pending }

// Best returns the sample with the shortest round trip (the earliest on a
// tie): NTP's rule, since its error bound is the smallest. It reports false
// when there are no samples.
func Best(samples []Reading) (Reading, bool) {
	if len(samples) == 0 {
		return Reading{}, false
	}
	best := samples[0]
	for _, r := range samples[1:] {
		if r.RTT() < best.RTT() {
			best = r
		}
	}
	return best, true
}

// Default bounds of Berkeley.
const (
	DefaultThreshold = 10 * time.Second
)

// Berkeley configures the fault-tolerant average. The zero value uses
// DefaultThreshold and no round-trip limit.
type Berkeley struct {
	// Threshold: readings farther than this from the median are outliers.
	Threshold time.Duration
	// MaxRTT: readings with a longer round trip are too imprecise to use
	// this round: neither averaged nor corrected. 0: no limit.
	MaxRTT time.Duration
	// MinChange: a clock whose target is within this of the average is
	// Settled: better left alone, since a smaller correction is within the
	// measurement error and would only restart a slew in progress. 0: every
	// clock is corrected.
	MinChange time.Duration
}

// Correction is what the daemon tells one clock.
type Correction struct {
	ID      int
	Offset  time.Duration // the clock's reading minus the reference (half the round trip compensated)
	Target  time.Duration // Offset plus the slew the clock was still heading for
	Delta   time.Duration // to add to the clock's reading: Average - Offset (0 when Late)
	Outlier bool          // farther than Threshold from the median: not averaged, still corrected
	Late    bool          // round trip above MaxRTT: not averaged, not corrected
	Settled bool          // Target within MinChange of Average: nothing to send
}

// Send reports whether the clock should be told Delta.
func (c Correction) Send() bool { return !c.Late && !c.Settled }

// Result is one round of Berkeley averaging. Times are against the
// reference.
type Result struct {
	Median   time.Duration // of the targets of the usable readings
	Average  time.Duration // the agreed time minus the reference
	Averaged int           // readings in the average
	// Corrections has one entry per reading, in the order given.
	Corrections []Correction
}

// Average computes one round. self is the daemon's id: when no reading lies
// within Threshold of the median (possible only with an even number of
// clocks, e.g. two that are an hour apart), nothing can outvote anything and
// the daemon's own clock stays the reference (Average is its target).
func (b Berkeley) Average(self int, readings []Reading) Result {
	if b.Threshold <= 0 {
		b.Threshold = DefaultThreshold
	}
	res := Result{Corrections: make([]Correction, len(readings))}
	var targets []time.Duration
	for i, r := range readings {
		c := Correction{ID: r.ID, Offset: r.Offset(), Target: r.Target()}
		c.Late = b.MaxRTT > 0 && r.RTT() > b.MaxRTT
		if !c.Late {
			targets = append(targets, c.Target)
		}
		res.Corrections[i] = c
	}
	if len(targets) == 0 {
		return res
	}
	slices.Sort(targets)
	n := len(targets)
	res.Median = targets[n/2]
	if n%2 == 0 {
		lo := targets[n/2-1]
		res.Median = lo + (res.Median-lo)/2
	}
	var sum, own time.Duration
	for i := range res.Corrections {
		c := &res.Corrections[i]
		if c.ID == self && !c.Late {
			own = c.Target
		}
		if c.Late {
			continue
		}
		if d := c.Target - res.Median; d > b.Threshold || d < -b.Threshold {
			c.Outlier = true
			continue
		}
		sum += c.Target
		res.Averaged++
	}
	res.Average = own
	if res.Averaged > 0 {
		res.Average = sum / time.Duration(res.Averaged)
	}
	for i := range res.Corrections {
		if c := &res.Corrections[i]; !c.Late {
			c.Delta = res.Average - c.Offset
			d := res.Average - c.Target
			c.Settled = d <= b.MinChange && d >= -b.MinChange && b.MinChange > 0
		}
	}
	return res
}
