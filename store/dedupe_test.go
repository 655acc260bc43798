package store

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"chat/wire"
)

func TestDedupe(t *testing.T) {
	h := newHarness(t, register("ana"), register("bob"), create("ana", "general", ""))

	first := h.must(with(post("ana", "general", "once"), "c1", 1))
	if len(first.Events) != 1 {
		t.Fatalf("first post published %d events, want 1", len(first.Events))
	}
	// The retry comes later, with its own clock and time: the stored answer wins.
	retry := h.apply(with(Command{Op: wire.Post, User: "ana", Name: "general", Text: "once", Lamport: 100, Time: t0.Add(time.Hour)}, "c1", 1))
	if retry.Err != nil || !bytes.Equal(retry.Data, first.Data) {
		t.Errorf("retry = %s, want the first answer %s", show(retry), first.Data)
	}
	if retry.Events != nil {
		t.Errorf("retry published %d events", len(retry.Events))
	}
	if info, _ := h.m.Channel("general", "ana"); info.Seq != 1 {
		t.Errorf("channel seq after a retried post = %d, want 1", info.Seq)
	}
	if h.m.Lamport() != 100 {
		t.Errorf("Lamport after retry = %d, want 100", h.m.Lamport())
	}

	second := h.must(with(post("ana", "general", "twice"), "c1", 2))
	if got := decodeData[wire.MessageReply](t, second).Message.Seq; got != 2 {
		t.Errorf("next request's seq = %d, want 2", got)
	}
	stale := h.apply(with(post("ana", "general", "once"), "c1", 1))
	if stale.Err == nil || stale.Err.Code != wire.CodeStale {
		t.Errorf("older request = %s, want %s", show(stale), wire.CodeStale)
	}
	if info, _ := h.m.Channel("general", "ana"); info.Seq != 2 {
		t.Errorf("channel seq after a stale post = %d, want 2", info.Seq)
	}
	// Another client's request numbers are its own.
	if r := h.apply(with(post("bob", "general", "x"), "c2", 1)); r.Err == nil || r.Err.Code != wire.CodeNotMember {
		t.Errorf("bob's post = %s, want %s", show(r), wire.CodeNotMember)
	}
	if _, found, _ := h.m.Answered("c2", 1); !found {
		t.Errorf("client c2's request 1 is not remembered")
	}
	if _, found, _ := h.m.Answered("c1", 2); !found {
		t.Errorf("client c1's request 2 is not remembered")
	}
}

func TestDedupeRemembersFailures(t *testing.T) {
	h := newHarness(t, register("ana"))
	failed := h.apply(with(post("ana", "later", "hi"), "c1", 7))
	if failed.Err == nil || failed.Err.Code != wire.CodeNotFound {
		t.Fatalf("post to a missing channel = %s", show(failed))
	}
	h.must(create("ana", "later", ""))
	again := h.apply(with(post("ana", "later", "hi"), "c1", 7))
	if show(again) != show(failed) {
		t.Errorf("retry of a failed request = %s, want the first answer %s", show(again), show(failed))
	}
	if info, _ := h.m.Channel("later", "ana"); info.Seq != 0 {
		t.Errorf("the retried failed post was applied")
	}
}

func TestDedupeSkipsUnkeyed(t *testing.T) {
	h := newHarness(t, register("ana"), create("ana", "general", ""))
	for _, c := range []Command{post("ana", "general", "a"), post("ana", "general", "a"),
		with(post("ana", "general", "b"), "c1", 0), with(post("ana", "general", "b"), "c1", 0),
		with(post("ana", "general", "c"), "", 5), with(post("ana", "general", "c"), "", 5)} {
		h.must(c)
	}
	if info, _ := h.m.Channel("general", "ana"); info.Seq != 6 {
		t.Errorf("seq = %d, want 6: commands without a client id or request number are never deduplicated", info.Seq)
	}
	if len(h.m.sessions) != 0 {
		t.Errorf("dedupe table holds %d clients, want 0", len(h.m.sessions))
	}
}

func TestDuplicateChangesNothing(t *testing.T) {
	h := newHarness(t, register("ana"), create("ana", "general", ""), with(post("ana", "general", "x"), "c1", 3), with(register("bob"), "c2", 1))
	before := snapshot(t, h.m)
	for _, c := range []Command{with(post("ana", "general", "x"), "c1", 3), with(post("ana", "general", "x"), "c1", 2)} {
		c.Time = t0.Add(100 * time.Hour) // would expire every client if it counted
		h.m.Apply(h.m.Index(), &c)
		if !bytes.Equal(before, snapshot(t, h.m)) {
			t.Errorf("a duplicate or stale request (req %d) changed the state", c.Req)
		}
	}
}

func TestAnswered(t *testing.T) {
	h := newHarness(t, register("ana"), create("ana", "general", ""))
	r := h.must(with(post("ana", "general", "x"), "c1", 5))
	tests := []struct {
		client       string
		req          uint64
		found, stale bool
	}{
		{"c1", 5, true, false},
		{"c1", 4, false, true},
		{"c1", 1, false, true},
		{"c1", 6, false, false},
		{"c2", 5, false, false},
		{"", 5, false, false},
		{"c1", 0, false, false},
	}
	for _, tt := range tests {
		got, found, stale := h.m.Answered(tt.client, tt.req)
		if found != tt.found || stale != tt.stale {
			t.Errorf("Answered(%q, %d) found %v stale %v, want %v %v", tt.client, tt.req, found, stale, tt.found, tt.stale)
		}
		if found && (!bytes.Equal(got.Data, r.Data) || got.Err != nil || got.Events != nil) {
			t.Errorf("Answered(%q, %d) = %s, want %s without events", tt.client, tt.req, show(got), r.Data)
		}
	}
	got, _, _ := h.m.Answered("c1", 5)
	got.Data[0] = 'X'
	if again, _, _ := h.m.Answered("c1", 5); !bytes.Equal(again.Data, r.Data) {
		t.Errorf("changing an answer changed the stored one")
	}
}

func TestSessionExpiry(t *testing.T) {
	h := newHarness(t, register("ana"))
	at := func(d time.Duration) Command {
		c := register("x")
		c.Time = t0.Add(d)
		return c
	}
	h.apply(with(at(0), "old", 1))
	h.apply(with(at(time.Hour), "mid", 1))
	h.apply(with(at(SessionTTL), "new", 1)) // old is exactly SessionTTL old: kept
	if _, found, _ := h.m.Answered("old", 1); !found {
		t.Fatalf("a client exactly %v old was forgotten", SessionTTL)
	}
	h.apply(at(SessionTTL + time.Minute)) // no client id, still expires others
	if _, found, _ := h.m.Answered("old", 1); found {
		t.Errorf("a client older than %v is remembered", SessionTTL)
	}
	for _, c := range []string{"mid", "new"} {
		if _, found, _ := h.m.Answered(c, 1); !found {
			t.Errorf("client %s was forgotten", c)
		}
	}
	// A forgotten client's retry is applied again: the table's bound, documented.
	if r := h.apply(with(at(SessionTTL+2*time.Minute), "old", 1)); r.Err == nil || r.Err.Code != wire.CodeExists {
		t.Errorf("forgotten client's retry = %s", show(r))
	}
}

func TestSessionCap(t *testing.T) {
	h := newHarness(t, register("ana"))
	h.m.maxSessions = 3
	for i := range 3 {
		h.apply(with(logout("ana"), fmt.Sprint("c", i), 1))
	}
	h.apply(with(logout("ana"), "c0", 2)) // c0 used again: c1 is now the least recently used
	h.apply(with(logout("ana"), "c3", 1))
	for _, tt := range []struct {
		client string
		req    uint64
		want   bool
	}{{"c0", 2, true}, {"c1", 1, false}, {"c2", 1, true}, {"c3", 1, true}} {
		if _, found, _ := h.m.Answered(tt.client, tt.req); found != tt.want {
			t.Errorf("client %s remembered = %v, want %v", tt.client, found, tt.want)
		}
	}
	if len(h.m.sessions) != 3 {
		t.Errorf("dedupe table holds %d clients, want 3", len(h.m.sessions))
	}
	n := 0
	for s := h.m.oldest; s != nil; s = s.next {
		n++
	}
	if n != 3 || h.m.oldest.client != "c2" || h.m.newest.client != "c3" {
		t.Errorf("LRU list: %d entries, oldest %s, newest %s", n, h.m.oldest.client, h.m.newest.client)
	}
}
