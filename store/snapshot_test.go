package store

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"chat/wire"
)

// randomCommands returns n commands of a random sequence, the same for the same seed.
func randomCommands(seed uint64, n int) []Command {
	g := &generator{ch: rand.New(rand.NewPCG(seed, 1)), now: t0}
	out := make([]Command, n)
	for i := range out {
		out[i] = g.next()
	}
	return out
}

// TestDeterminism: two machines fed the same commands, one directly and one
// through the log encoding, return the same results and hold byte-identical
// state after every step.
func TestDeterminism(t *testing.T) {
	for seed := range uint64(8) {
		cmds := randomCommands(seed, 1500)
		a, b := New(), New()
		var published, failed int
		for i, c := range cmds {
			enc, err := EncodeCommand(&c)
			if errors.Is(err, ErrNotUTF8) {
				continue // a leader can't append it
			}
			if err != nil {
				t.Fatalf("seed %d command %d: %v", seed, i, err)
			}
			dc, err := DecodeCommand(enc)
			if err != nil {
				// EncodeCommand never writes an empty op; the generator does make some.
				if c.Op != "" {
					t.Fatalf("seed %d command %d: %v", seed, i, err)
				}
				dc = &c
			}
			ra, rb := a.Apply(uint64(i+1), &c), b.Apply(uint64(i+1), dc)
			if show(ra) != show(rb) {
				t.Fatalf("seed %d command %d %+v: results differ:\n%s\n%s", seed, i, c, show(ra), show(rb))
			}
			published += len(ra.Events)
			if ra.Err != nil {
				failed++
			}
			if i%100 == 99 && !bytes.Equal(snapshot(t, a), snapshot(t, b)) {
				t.Fatalf("seed %d: snapshots differ after command %d", seed, i)
			}
		}
		if !bytes.Equal(snapshot(t, a), snapshot(t, b)) {
			t.Fatalf("seed %d: final snapshots differ", seed)
		}
		// The generator must reach both outcomes for this test to mean anything.
		if published < 50 || failed < 50 || failed > len(cmds)-50 {
			t.Errorf("seed %d: %d events, %d of %d commands failed: the generator is off", seed, published, failed, len(cmds))
		}
	}
}

// TestSnapshotRoundTrip: a machine restored from a snapshot answers every
// query and every following command exactly as the original does.
func TestSnapshotRoundTrip(t *testing.T) {
	for seed := range uint64(6) {
		cmds := randomCommands(100+seed, 2000)
		cut := 500 + int(seed)*200
		orig := New()
		for i, c := range cmds[:cut] {
			orig.Apply(uint64(i+1), &c)
		}
		snap := snapshot(t, orig)
		restored, err := Restore(bytes.NewReader(snap))
		if err != nil {
			t.Fatalf("seed %d: restore: %v", seed, err)
		}
		if again := snapshot(t, restored); !bytes.Equal(snap, again) {
			t.Fatalf("seed %d: the restored machine's snapshot differs", seed)
		}
		sameQueries(t, orig, restored)
		for i, c := range cmds[cut:] {
			ro, rr := orig.Apply(uint64(cut+i+1), &c), restored.Apply(uint64(cut+i+1), &c)
			if show(ro) != show(rr) {
				t.Fatalf("seed %d command %d: results differ:\n%s\n%s", seed, cut+i, show(ro), show(rr))
			}
		}
		if !bytes.Equal(snapshot(t, orig), snapshot(t, restored)) {
			t.Fatalf("seed %d: snapshots differ after continuing", seed)
		}
		sameQueries(t, orig, restored)
	}
}

func sameQueries(t *testing.T, a, b *Machine) {
	t.Helper()
	if a.Index() != b.Index() || a.Lamport() != b.Lamport() {
		t.Errorf("index, lamport = %d, %d vs %d, %d", a.Index(), a.Lamport(), b.Index(), b.Lamport())
	}
	if !slices.Equal(a.Users(), b.Users()) {
		t.Errorf("users %q vs %q", a.Users(), b.Users())
	}
	for _, u := range append(a.Users(), "nobody") {
		if !slices.Equal(a.Channels(u), b.Channels(u)) || !slices.Equal(a.Memberships(u), b.Memberships(u)) || a.MailboxSeq(u) != b.MailboxSeq(u) {
			t.Errorf("user %s sees different channels", u)
		}
		ha, ra, oka := a.UserAuth(u)
		hb, rb, okb := b.UserAuth(u)
		if ha != hb || ra != rb || oka != okb {
			t.Errorf("user %s: auth differs", u)
		}
		for _, q := range append([]wire.HistoryRequest{{Direct: true}}, channelQueries(a)...) {
			x, ex := a.History(u, q)
			y, ey := b.History(u, q)
			if !slices.Equal(x.Messages, y.Messages) || x.Seq != y.Seq || (ex == nil) != (ey == nil) {
				t.Errorf("user %s: history %+v differs", u, q)
			}
		}
	}
	for s := a.oldest; s != nil; s = s.next {
		ra, fa, sa := a.Answered(s.client, s.req)
		rb, fb, sb := b.Answered(s.client, s.req)
		if show(ra) != show(rb) || fa != fb || sa != sb {
			t.Errorf("client %s: answers differ", s.client)
		}
	}
}

func channelQueries(m *Machine) []wire.HistoryRequest {
	var qs []wire.HistoryRequest
	for _, c := range m.Channels("") {
		qs = append(qs, wire.HistoryRequest{Channel: c.Name, Limit: wire.MaxHistory})
	}
	return qs
}

// bigMachine holds enough messages that its snapshot spans many chunks.
func bigMachine(t testing.TB, n int) *Machine {
	m := New()
	i := uint64(0)
	apply := func(c Command) {
		i++
		c.Time, c.Lamport = t0.Add(time.Duration(i)*time.Millisecond), i
		if r := m.Apply(i, &c); r.Err != nil {
			t.Fatalf("%+v: %v", c, r.Err)
		}
	}
	apply(register("ana"))
	apply(register("bob"))
	apply(create("ana", "big", "many messages"))
	apply(join("bob", "big"))
	for k := range n {
		apply(with(post([]string{"ana", "bob"}[k%2], "big", strings.Repeat("payload ", 1+k%20)), []string{"c1", "c2", "c3"}[k%3], uint64(k+1)))
		if k%10 == 0 {
			apply(dm("ana", "bob", "psst"))
		}
	}
	return m
}

func TestSnapshotLarge(t *testing.T) {
	m := bigMachine(t, 20_000)
	snap := snapshot(t, m)
	if len(snap) < 4*chunkSize {
		t.Fatalf("snapshot is %d bytes: too small to test chunking", len(snap))
	}
	r, err := Restore(bytes.NewReader(snap))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snap, snapshot(t, r)) {
		t.Fatal("round trip differs")
	}
	sameQueries(t, m, r)
	// A reader that hands out one byte at a time must work too.
	if _, err := Restore(io.LimitReader(oneByteReader{bytes.NewReader(snap)}, int64(len(snap)))); err != nil {
		t.Fatalf("restore one byte at a time: %v", err)
	}
	// Cut anywhere, including at chunk boundaries: refused.
	for _, n := range []int{len(snap) - 1, len(snap) - 5, len(snap) / 2, chunkSize, chunkSize + 3, chunkSize + 4, 9} {
		if _, err := Restore(bytes.NewReader(snap[:n])); err == nil {
			t.Errorf("a snapshot cut to %d of %d bytes was accepted", n, len(snap))
		}
	}
}

type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

func TestRestoreRejectsDamage(t *testing.T) {
	snap := snapshot(t, historyHarness(t, 3).m)
	if _, err := Restore(bytes.NewReader(snap)); err != nil {
		t.Fatalf("restore the intact snapshot: %v", err)
	}
	for n := range len(snap) {
		if _, err := Restore(bytes.NewReader(snap[:n])); err == nil {
			t.Errorf("a snapshot cut to %d of %d bytes was accepted", n, len(snap))
		}
	}
	for i := range snap {
		for _, x := range []byte{0x01, 0x80, 0xff} {
			bad := slices.Clone(snap)
			bad[i] ^= x
			if _, err := Restore(bytes.NewReader(bad)); err == nil {
				t.Errorf("a snapshot with byte %d xor %#x was accepted", i, x)
			}
		}
	}
	if _, err := Restore(bytes.NewReader(append(slices.Clone(snap), 0))); err == nil {
		t.Errorf("a snapshot followed by a byte was accepted")
	}
	for _, in := range []string{"", "CHATSNAP", "{}", "CHATSNAP\x02\x00\x00\x00\x00\x00", strings.Repeat("\xff", 100)} {
		if _, err := Restore(strings.NewReader(in)); err == nil {
			t.Errorf("Restore(%q) was accepted", in)
		}
	}
}

// TestRestoreRejectsInconsistent: well-formed chunks with intact checksums
// around a body that contradicts itself.
func TestRestoreRejectsInconsistent(t *testing.T) {
	type body func(e *encoder)
	user := func(name string) body {
		return func(e *encoder) { e.str(name); e.str(testHash); e.time(time.Time{}) }
	}
	users := func(us ...body) body {
		return func(e *encoder) {
			e.uvarint(uint64(len(us)))
			for _, u := range us {
				u(e)
			}
		}
	}
	nums := func(ns ...uint64) body {
		return func(e *encoder) {
			for _, n := range ns {
				e.uvarint(n)
			}
		}
	}
	strs := func(ss ...string) body {
		return func(e *encoder) {
			for _, s := range ss {
				e.str(s)
			}
		}
	}
	tm := func(e *encoder) { e.time(t0) }
	head := nums(1, 1)
	ana := users(user("ana"))
	tests := []struct {
		name  string
		parts []body
		want  string
	}{
		{"valid", []body{head, ana, nums(0), nums(0), nums(0)}, ""},
		{"users out of order", []body{head, users(user("bob"), user("ana"))}, "out of order"},
		{"users repeated", []body{head, users(user("ana"), user("ana"))}, "out of order"},
		{"bad user name", []body{head, users(user("a b"))}, "user name"},
		{"mail from a stranger", []body{head, ana, nums(1), strs("zed", "ana", "hi"), nums(1), tm}, "unknown user"},
		{"mail not for its box", []body{head, users(user("ana"), user("bob"), user("cy")), nums(1), strs("bob", "cy", "hi"), nums(1), tm}, "mailbox of"},
		{"unknown owner", []body{head, ana, nums(0), nums(1), strs("c", "", "zed")}, "unknown user"},
		{"unknown member", []body{head, ana, nums(0), nums(1), strs("c", "", "ana"), tm, nums(1), strs("bob")}, "unknown user"},
		{"members repeated", []body{head, ana, nums(0), nums(1), strs("c", "", "ana"), tm, nums(2), strs("ana", "ana")}, "out of order"},
		{"post by a stranger", []body{head, ana, nums(0), nums(1), strs("c", "", "ana"), tm, nums(0, 1), strs("zed", "hi")}, "unknown user"},
		{"bad time", []body{head, ana, nums(0), nums(1), strs("c", "", "ana"), nums(0, 2_000_000_000)}, "time"},
		{"bad error flag", []body{head, ana, nums(0), nums(0), nums(1), strs("c1"), nums(1), tm, nums(2)}, "error flag"},
		{"zero request", []body{head, ana, nums(0), nums(0), nums(1), strs("c1"), nums(0), tm, nums(0, 0)}, "dedupe"},
		{"repeated client", []body{head, ana, nums(0), nums(0), nums(2), strs("c1"), nums(1), tm, nums(0, 0), strs("c1"), nums(2), tm, nums(0, 0)}, "dedupe"},
		{"huge string", []body{head, nums(1, maxString+1)}, "string"},
		{"trailing body", []body{head, ana, nums(0), nums(0), nums(0), nums(7)}, "unread"},
		{"short body", []body{head, ana, nums(0), nums(0)}, "ends early"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			b.WriteString(snapMagic + "\x01")
			e := &encoder{w: &b}
			for _, p := range tt.parts {
				p(e)
			}
			e.flush()
			e.flush()
			_, err := Restore(&b)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("valid body refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Restore = %v, want an error about %q", err, tt.want)
			case tt.want != "" && !errors.Is(err, errCorrupt):
				t.Errorf("error %v does not wrap errCorrupt", err)
			}
		})
	}
}

type failWriter struct{ after int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.after <= 0 {
		return 0, errors.New("disk full")
	}
	f.after--
	return len(p), nil
}

func TestSnapshotWriteError(t *testing.T) {
	m := bigMachine(t, 5000)
	for after := range 6 {
		err := m.Snapshot(&failWriter{after: after})
		if err == nil || !strings.Contains(err.Error(), "disk full") || !strings.HasPrefix(err.Error(), "store: write snapshot") {
			t.Errorf("Snapshot to a writer failing after %d writes = %v", after, err)
		}
	}
}
