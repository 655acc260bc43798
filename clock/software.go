package clock

import (
	"sync"
	"time"
)

// How a Software clock applies a correction that moves it backwards. Forward
// corrections are applied at once: a jump forward reorders nothing.
const (
	// SlewRate is how much slower than real time a clock runs while it
	// absorbs a backward correction: 0.5 runs it at half speed, so a
	// correction of -d takes 2d, and successive readings never decrease.
	SlewRate = 0.5
	// MaxSlew is the largest backward correction that is slewed. A clock
	// that must go back further is broken (slewing an hour back at half
	// speed would take two): it is stepped back at once, as ntpd steps
	// offsets beyond its step threshold. Its earlier readings were wrong by
	// that much anyway.
	MaxSlew = 10 * time.Second
)

// Software is a process's own wall clock: the OS clock plus a fixed skew (to
// simulate a badly set machine in demos and tests) plus the corrections that
// clock synchronization applies. The OS clock is never changed.
//
// A correction that would move the clock back by up to MaxSlew is slewed, not
// jumped: the clock runs at (1 - SlewRate) of real speed until the correction
// is absorbed, so the timestamps a process takes from it never go backwards.
type Software struct {
	mu   sync.Mutex
	skew time.Duration
	now  func() time.Time

	corr  time.Duration // correction in effect at since, not counting the slew
	slew  time.Duration // backward correction still to absorb from since (<= 0)
	since time.Time     // OS time when the slew started
}

// NewSoftware returns a clock skew away from the OS clock. now may be nil
// (time.Now); tests pass a fake.
func NewSoftware(skew time.Duration, now func() time.Time) *Software {
	if now == nil {
		now = time.Now
	}
	return &Software{skew: skew, now: now}
}

// at returns the correction in effect at OS time t and the part of the slew
// still to come, settling a finished slew. The caller holds s.mu.
func (s *Software) at(t time.Time) (corr, pending time.Duration) {
	if s.slew == 0 {
		return s.corr, 0
	}
	done := -time.Duration(SlewRate * float64(max(t.Sub(s.since), 0)))
	if done <= s.slew {
		s.corr += s.slew
		s.slew = 0
		return s.corr, 0
	}
	return s.corr + done, s.slew - done
}

// Now returns the software time.
func (s *Software) Now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.now()
	c, _ := s.at(t)
	return t.Add(s.skew + c)
}

// Read returns the software time and, at the same instant, the part of a
// backward correction the clock is still slewing toward: Now plus Pending is
// where the clock is heading, and that target runs at real speed.
func (s *Software) Read() (now time.Time, pending time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.now()
	c, p := s.at(t)
	return t.Add(s.skew + c), p
}

// Adjust moves the clock by delta from its current reading. delta is measured
// against what the clock reads, slew included, so a slew still in progress is
// replaced rather than added to. A forward delta, or a backward one of more
// than MaxSlew, is applied at once; a smaller backward one is slewed.
func (s *Software) Adjust(delta time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.now()
	c, _ := s.at(t)
	s.corr, s.slew, s.since = c, 0, t
	if delta < 0 && delta >= -MaxSlew {
		s.slew = delta
		return
	}
	s.corr += delta
}

// Correction returns the correction in effect now: the sum of the
// corrections applied so far, less what a slew has not yet absorbed. Now is
// always the OS clock plus the skew plus Correction.
func (s *Software) Correction() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, _ := s.at(s.now())
	return c
}

// Pending returns the part of a backward correction not yet absorbed (<= 0).
func (s *Software) Pending() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, p := s.at(s.now())
	return p
}
