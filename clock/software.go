package clock

import (
	"sync"
	"time"
)

// Software is a process's own wall clock: the OS clock plus a fixed skew (to
// simulate a badly set machine in demos and tests) plus the corrections that
// clock synchronization applies. The OS clock is never changed.
type Software struct {
	mu         sync.Mutex
	skew       time.Duration
	correction time.Duration
	now        func() time.Time
}

// NewSoftware returns a clock skew away from the OS clock. now may be nil
// (time.Now); tests pass a fake.
func NewSoftware(skew time.Duration, now func() time.Time) *Software {
	if now == nil {
		now = time.Now
	}
	return &Software{skew: skew, now: now}
}

// Now returns the software time.
func (s *Software) Now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now().Add(s.skew + s.correction)
}

// Adjust adds delta to the correction.
func (s *Software) Adjust(delta time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.correction += delta
}

// Correction returns the sum of the corrections applied so far.
func (s *Software) Correction() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.correction
}
