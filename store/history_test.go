package store

import (
	"fmt"
	"testing"

	"chat/wire"
)

// historyHarness holds ana and bob, channel "c" with n posts ("m1".."mn") and
// n direct messages from bob to ana.
func historyHarness(t *testing.T, n int) *harness {
	h := newHarness(t, register("ana"), register("bob"), create("ana", "c", ""))
	for i := 1; i <= n; i++ {
		h.must(post("ana", "c", fmt.Sprint("m", i)))
		h.must(dm("bob", "ana", fmt.Sprint("d", i)))
	}
	return h
}

func TestHistoryBounds(t *testing.T) {
	h := historyHarness(t, 10)
	tests := []struct {
		name     string
		q        wire.HistoryRequest
		from, to uint64 // the expected seqs, inclusive; from > to for none
	}{
		{"all", wire.HistoryRequest{}, 1, 10},
		{"limit keeps newest", wire.HistoryRequest{Limit: 3}, 8, 10},
		{"after", wire.HistoryRequest{After: 7}, 8, 10},
		{"before", wire.HistoryRequest{Before: 4}, 1, 3},
		{"between", wire.HistoryRequest{After: 2, Before: 6}, 3, 5},
		{"between with limit", wire.HistoryRequest{After: 2, Before: 6, Limit: 2}, 4, 5},
		{"limit over range", wire.HistoryRequest{After: 2, Before: 6, Limit: 20}, 3, 5},
		{"after last", wire.HistoryRequest{After: 10}, 1, 0},
		{"after beyond", wire.HistoryRequest{After: 1 << 62}, 1, 0},
		{"before first", wire.HistoryRequest{Before: 1}, 1, 0},
		{"before beyond", wire.HistoryRequest{Before: 1 << 62}, 1, 10},
		{"before just past", wire.HistoryRequest{Before: 11}, 1, 10},
		{"empty range", wire.HistoryRequest{After: 5, Before: 6}, 1, 0},
		{"inverted range", wire.HistoryRequest{After: 8, Before: 3}, 1, 0},
		{"limit one", wire.HistoryRequest{Limit: 1}, 10, 10},
		{"max uint", wire.HistoryRequest{After: ^uint64(0), Before: ^uint64(0)}, 1, 0},
	}
	for _, tt := range tests {
		for _, direct := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/direct=%v", tt.name, direct), func(t *testing.T) {
				q := tt.q
				prefix := "m"
				q.Channel, q.Direct = "c", direct
				if direct {
					q.Channel, prefix = "", "d"
				}
				got, e := h.m.History("ana", q)
				if e != nil {
					t.Fatal(e)
				}
				if got.Seq != 10 {
					t.Errorf("seq = %d, want 10", got.Seq)
				}
				if got.Messages == nil {
					t.Errorf("messages are nil, want a list (JSON [])")
				}
				want := int(max(0, int64(tt.to)-int64(tt.from)+1))
				if len(got.Messages) != want {
					t.Fatalf("%d messages, want %d (%d..%d)", len(got.Messages), want, tt.from, tt.to)
				}
				for i, m := range got.Messages {
					seq := tt.from + uint64(i)
					if m.Seq != seq || m.Text != fmt.Sprint(prefix, seq) {
						t.Errorf("message %d = seq %d %q, want seq %d", i, m.Seq, m.Text, seq)
					}
					if direct && (m.Channel != "" || m.From != "bob" || m.To != "ana") || !direct && (m.Channel != "c" || m.From != "ana" || m.To != "") {
						t.Errorf("message %d = %+v", i, m)
					}
				}
			})
		}
	}
}

func TestHistoryLimits(t *testing.T) {
	h := historyHarness(t, 1500) // several stream blocks
	tests := []struct {
		q        wire.HistoryRequest
		from, to uint64
	}{
		{wire.HistoryRequest{}, 1500 - wire.DefaultHistory + 1, 1500},
		{wire.HistoryRequest{Limit: 10_000}, 1500 - wire.MaxHistory + 1, 1500},
		{wire.HistoryRequest{Limit: wire.MaxHistory}, 1500 - wire.MaxHistory + 1, 1500},
		{wire.HistoryRequest{Before: 1030, Limit: 10}, 1020, 1029}, // across the first block's end
		{wire.HistoryRequest{After: 1023, Limit: 600}, 1024, 1500},
		{wire.HistoryRequest{After: 900, Limit: 600}, 1001, 1500},
		{wire.HistoryRequest{After: 1023, Before: 1026}, 1024, 1025},
		{wire.HistoryRequest{After: 1200, Before: 1100}, 1, 0}, // inverted, far from the start
		{wire.HistoryRequest{After: 1499, Before: 1499}, 1, 0},
	}
	for _, tt := range tests {
		for _, q := range []wire.HistoryRequest{{Channel: "c"}, {Direct: true}} {
			q.After, q.Before, q.Limit = tt.q.After, tt.q.Before, tt.q.Limit
			got, e := h.m.History("ana", q)
			if e != nil {
				t.Fatal(e)
			}
			if n := len(got.Messages); n != int(tt.to-tt.from+1) {
				t.Fatalf("History(%+v) returned %d messages, want %d..%d", q, n, tt.from, tt.to)
			}
			for i, m := range got.Messages {
				if m.Seq != tt.from+uint64(i) {
					t.Fatalf("History(%+v) message %d has seq %d", q, i, m.Seq)
				}
			}
		}
	}
}

func TestHistoryErrors(t *testing.T) {
	h := newHarness(t, register("ana"), register("bob"), create("ana", "c", ""), post("ana", "c", "secret"), dm("ana", "bob", "for bob"))
	tests := []struct {
		name   string
		asking string
		q      wire.HistoryRequest
		code   string
	}{
		{"unknown user", "zed", wire.HistoryRequest{Channel: "c"}, wire.CodeUnauthorized},
		{"no one", "", wire.HistoryRequest{Direct: true}, wire.CodeUnauthorized},
		{"not a member", "bob", wire.HistoryRequest{Channel: "c"}, wire.CodeNotMember},
		{"unknown channel", "ana", wire.HistoryRequest{Channel: "d"}, wire.CodeNotFound},
		{"other case channel", "ana", wire.HistoryRequest{Channel: "C"}, wire.CodeNotFound},
		{"bad channel name", "ana", wire.HistoryRequest{Channel: "c/"}, wire.CodeBadRequest},
		{"no channel", "ana", wire.HistoryRequest{}, wire.CodeBadRequest},
		{"negative limit", "ana", wire.HistoryRequest{Channel: "c", Limit: -1}, wire.CodeBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, e := h.m.History(tt.asking, tt.q)
			if e == nil || e.Code != tt.code {
				t.Fatalf("History = %+v, %v; want %s", got, e, tt.code)
			}
			if got.Messages != nil {
				t.Errorf("a refused history returned messages")
			}
		})
	}
	// A user reads only their own mailbox: Direct ignores any channel or user in the request.
	got, e := h.m.History("ana", wire.HistoryRequest{Direct: true, Channel: "c"})
	if e != nil || len(got.Messages) != 1 || got.Messages[0].To != "bob" {
		t.Errorf("ana's mailbox = %+v, %v", got, e)
	}
	got, e = h.m.History("bob", wire.HistoryRequest{Direct: true})
	if e != nil || len(got.Messages) != 1 || got.Messages[0].Text != "for bob" {
		t.Errorf("bob's mailbox = %+v, %v", got, e)
	}
}
