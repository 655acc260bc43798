// Package clock holds the logical and physical clocks of the system: a Lamport
// clock, Berkeley averaging and NTP-style offset estimation. It is pure: time
// is passed in, so tests never sleep.
package clock

import "sync"

// Lamport is a Lamport logical clock, safe for concurrent use.
// The zero value starts at 0.
type Lamport struct {
	mu sync.Mutex
	t  uint64
}

// Tick advances the clock for a local event or a send and returns the new time.
func (l *Lamport) Tick() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t++
	return l.t
}

// Witness merges a received timestamp: the clock becomes max(local, received) + 1.
// It returns the new time.
func (l *Lamport) Witness(received uint64) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t = max(l.t, received) + 1
	return l.t
}

// Observe raises the clock to at least t without counting an event (used when
// restoring replicated state).
func (l *Lamport) Observe(t uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t = max(l.t, t)
}

// Now returns the current time without advancing it.
func (l *Lamport) Now() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.t
}
