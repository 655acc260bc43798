package server

import (
	"fmt"
	"math"
	"time"
)

// Rate limits live in the leader's memory: a new leader starts them afresh,
// which at worst grants one more burst. They protect the service from one
// client starving the others, not an account from anything lasting.

// limiter is a token bucket per key.
type limiter struct {
	rate  float64 // tokens per second
	burst float64
	m     map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(rate float64, burst int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), m: map[string]*bucket{}}
}

// allow takes a token for key; when there is none it says how long to wait.
func (l *limiter) allow(key string, now time.Time) (bool, time.Duration) {
	if l.rate <= 0 {
		return true, 0
	}
	b := l.m[key]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.m[key] = b
	}
	b.tokens = math.Min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
}

// prune forgets buckets that have refilled: they hold nothing a new one wouldn't.
func (l *limiter) prune(now time.Time) {
	for k, b := range l.m {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.m, k)
		}
	}
}

// Login throttling: after freeAttempts failures in a row for a user (or from
// a client), each further attempt must wait twice as long as the last, up to
// maxLockout; a success, or failWindow without failures, starts afresh.
const (
	freeAttempts = 5
	maxLockout   = 5 * time.Minute
	failWindow   = 15 * time.Minute
)

type failures struct {
	m map[string]*failure
}

type failure struct {
	count int
	last  time.Time
	until time.Time
}

func newFailures() *failures { return &failures{m: map[string]*failure{}} }

// wait returns how long key must still wait before its next attempt.
func (f *failures) wait(key string, now time.Time) time.Duration {
	if x := f.m[key]; x != nil && now.Before(x.until) {
		return x.until.Sub(now)
	}
	return 0
}

// fail records a failed attempt.
func (f *failures) fail(key string, now time.Time) {
	x := f.m[key]
	if x == nil || now.Sub(x.last) > failWindow {
		x = &failure{}
		f.m[key] = x
	}
	x.count++
	x.last = now
	if x.count >= freeAttempts {
		lock := time.Second << min(x.count-freeAttempts, 9)
		x.until = now.Add(min(lock, maxLockout))
	}
}

// succeed forgets key's failures.
func (f *failures) succeed(key string) { delete(f.m, key) }

func (f *failures) prune(now time.Time) {
	for k, x := range f.m {
		if now.Sub(x.last) > failWindow && now.After(x.until) {
			delete(f.m, k)
		}
	}
}

// waitText says how long to wait, in words for people.
func waitText(d time.Duration) string {
	if d < time.Second {
		return "a moment"
	}
	return fmt.Sprintf("%ds", int(math.Ceil(d.Seconds())))
}
