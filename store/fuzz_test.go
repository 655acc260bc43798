package store

import (
	"bytes"
	"testing"

	"chat/wire"
)

// FuzzApply feeds command sequences built from the input to a machine: Apply
// must never panic, and the state must hold its invariants and survive a
// snapshot round trip.
func FuzzApply(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add(bytes.Repeat([]byte{1, 7, 3, 4, 2, 1, 0, 0, 5, 3}, 30))
	f.Add(bytes.Repeat([]byte("a register, a create, a join, a post and a dm"), 10))
	f.Fuzz(func(t *testing.T, in []byte) {
		g := &generator{ch: &byteChooser{in}, now: t0}
		m := New()
		for i := 0; i < 300 && len(g.ch.(*byteChooser).b) > 0; i++ {
			c := g.next()
			r := m.Apply(uint64(i+1), &c)
			if (r.Err == nil) == (r.Data == nil) {
				t.Fatalf("command %+v: result with neither or both of error and data: %s", c, show(r))
			}
			if r.Err != nil && (r.Err.Code == "" || r.Err.Message == "" || r.Events != nil) {
				t.Fatalf("command %+v: bad failure %s", c, show(r))
			}
		}
		checkInvariants(t, m)
		snap := snapshot(t, m)
		r, err := Restore(bytes.NewReader(snap))
		if err != nil {
			t.Fatalf("restore: %v", err)
		}
		if !bytes.Equal(snap, snapshot(t, r)) {
			t.Fatal("snapshot round trip differs")
		}
	})
}

// checkInvariants checks what must hold in any reachable state.
func checkInvariants(t *testing.T, m *Machine) {
	t.Helper()
	for _, u := range m.Users() {
		for _, name := range m.Memberships(u) {
			info, ok := m.Channel(name, u)
			if !ok || !info.Joined {
				t.Fatalf("%s is a member of %s, which says %+v, %v", u, name, info, ok)
			}
		}
		hr, e := m.History(u, wire.HistoryRequest{Direct: true, Limit: wire.MaxHistory})
		if e != nil || hr.Seq != m.MailboxSeq(u) {
			t.Fatalf("%s's mailbox: %+v, %v", u, hr, e)
		}
		for i, msg := range hr.Messages {
			if msg.Seq != hr.Seq-uint64(len(hr.Messages)-i-1) || (msg.From != u && msg.To != u) {
				t.Fatalf("%s's mailbox message %d: %+v", u, i, msg)
			}
		}
	}
	members := 0
	for _, c := range m.Channels("") {
		members += c.Members
		if !m.HasUser(c.Owner) || c.Topic != wire.ChannelTopic(c.Name) {
			t.Fatalf("channel %+v", c)
		}
	}
	n := 0
	for _, u := range m.Users() {
		n += len(m.Memberships(u))
	}
	if n != members {
		t.Fatalf("channels count %d members, users %d memberships", members, n)
	}
	count := 0
	for s := m.oldest; s != nil; s = s.next {
		if m.sessions[s.client] != s {
			t.Fatalf("session list and table disagree on %q", s.client)
		}
		count++
	}
	if count != len(m.sessions) {
		t.Fatalf("session list holds %d, table %d", count, len(m.sessions))
	}
}

// FuzzRestore: Restore rejects or accepts, never panics; what it accepts
// snapshots back to the same bytes.
func FuzzRestore(f *testing.F) {
	var small bytes.Buffer
	if err := New().Snapshot(&small); err != nil {
		f.Fatal(err)
	}
	f.Add(small.Bytes())
	m := New()
	for i, c := range randomCommands(7, 300) {
		m.Apply(uint64(i+1), &c)
	}
	var big bytes.Buffer
	if err := m.Snapshot(&big); err != nil {
		f.Fatal(err)
	}
	f.Add(big.Bytes())
	f.Add([]byte("CHATSNAP\x01"))
	f.Add([]byte("CHATSNAP\x01\xff\xff\xff\xff\x0f"))
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := Restore(bytes.NewReader(in))
		if err != nil {
			return
		}
		checkInvariants(t, m)
		out := snapshot(t, m)
		if !bytes.Equal(in, out) {
			t.Fatalf("accepted snapshot re-encodes differently")
		}
	})
}
