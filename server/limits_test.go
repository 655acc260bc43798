package server

import (
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	l := newLimiter(2, 3) // 2/s, bursts of 3
	now := time.Unix(1000, 0)
	for i := range 3 {
		if ok, _ := l.allow("ana", now); !ok {
			t.Fatalf("burst token %d refused", i+1)
		}
	}
	ok, wait := l.allow("ana", now)
	if ok || wait != 500*time.Millisecond {
		t.Fatalf("4th at once: ok=%v wait=%v, want refused with 500ms", ok, wait)
	}
	if ok, _ := l.allow("bob", now); !ok {
		t.Fatal("bob is limited by ana's use")
	}
	if ok, _ := l.allow("ana", now.Add(500*time.Millisecond)); !ok {
		t.Fatal("a token did not come back after 1/rate")
	}
	l.prune(now.Add(time.Hour))
	if len(l.m) != 0 {
		t.Fatalf("prune kept %d refilled buckets", len(l.m))
	}
}

func TestLoginFailuresBackOff(t *testing.T) {
	f := newFailures()
	now := time.Unix(1000, 0)
	for i := 1; i < freeAttempts; i++ {
		f.fail("user:ana", now)
		if w := f.wait("user:ana", now); w != 0 {
			t.Fatalf("after %d failures: wait %v, want none", i, w)
		}
	}
	var last time.Duration
	for i := range 4 {
		f.fail("user:ana", now)
		w := f.wait("user:ana", now)
		if w <= last {
			t.Fatalf("failure %d: wait %v did not grow from %v", freeAttempts+i, w, last)
		}
		last = w
	}
	if w := f.wait("user:bob", now); w != 0 {
		t.Fatalf("bob waits %v for ana's failures", w)
	}
	for range 30 {
		f.fail("user:ana", now)
	}
	if w := f.wait("user:ana", now); w != maxLockout {
		t.Fatalf("lockout %v, want the cap %v", w, maxLockout)
	}
	f.succeed("user:ana")
	if w := f.wait("user:ana", now); w != 0 {
		t.Fatalf("after a success: wait %v", w)
	}
}
