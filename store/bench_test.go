package store

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"chat/wire"
)

const million = 1_000_000

// millionMachine is built once per test binary: a channel "big" holding a
// million posts (texts of 8 to 160 bytes), and 100k direct messages.
var millionMachine = sync.OnceValues(func() (*Machine, error) {
	var m *Machine
	var err error
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("%v", r)
			}
		}()
		m = bigMachine(panicTB{}, million)
	}()
	return m, err
})

// panicTB lets bigMachine run outside one test's lifetime.
type panicTB struct{ testing.TB }

func (panicTB) Helper()                           {}
func (panicTB) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }

func needMillion(tb testing.TB) *Machine {
	tb.Helper()
	m, err := millionMachine()
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// TestMillionMessages: the machine holds a million messages in one channel,
// answers history from anywhere in it, and snapshots and restores them.
func TestMillionMessages(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("applies a million commands; run without -short and -race")
	}
	m := needMillion(t)
	info, _ := m.Channel("big", "ana")
	if info.Seq != million {
		t.Fatalf("seq = %d, want %d", info.Seq, million)
	}
	for _, q := range []wire.HistoryRequest{
		{Channel: "big"}, {Channel: "big", Before: 2}, {Channel: "big", After: 500_000, Limit: wire.MaxHistory},
		{Channel: "big", After: 999_990}, {Channel: "big", Before: 777_777, Limit: 3},
	} {
		hr, e := m.History("bob", q)
		if e != nil || hr.Seq != million || len(hr.Messages) == 0 {
			t.Fatalf("History(%+v) = %d messages, seq %d, %v", q, len(hr.Messages), hr.Seq, e)
		}
		for i, msg := range hr.Messages {
			k := msg.Seq - 1 // the post's number in bigMachine
			if i > 0 && msg.Seq != hr.Messages[i-1].Seq+1 || msg.Text != strings.Repeat("payload ", int(1+k%20)) {
				t.Fatalf("History(%+v) message %d = seq %d %q", q, i, msg.Seq, msg.Text)
			}
		}
	}
	var snap bytes.Buffer
	if err := m.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	r, err := Restore(&snap)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := m.History("ana", wire.HistoryRequest{Channel: "big", After: 123_456, Limit: 100})
	b, _ := r.History("ana", wire.HistoryRequest{Channel: "big", After: 123_456, Limit: 100})
	if len(a.Messages) != 100 || fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("restored history differs")
	}
}

// TestMemoryPerMessage: a stored message costs its text and a small fixed part.
func TestMemoryPerMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("measures the heap over 200k messages")
	}
	const n, text = 200_000, 64
	h := newHarness(t, register("ana"), create("ana", "c", ""))
	c := post("ana", "c", strings.Repeat("x", text))
	before := heap()
	for i := range n {
		c.Time, c.Lamport = t0.Add(time.Duration(i)), uint64(i+1)
		h.m.Apply(uint64(i+3), &c)
	}
	per := float64(heap()-before) / n
	t.Logf("%.0f bytes per message of %d bytes of text", per, text)
	if per > 200 {
		t.Errorf("a message of %d bytes of text costs %.0f bytes", text, per)
	}
	runtime.KeepAlive(h)
}

func heap() uint64 {
	runtime.GC()
	var s runtime.MemStats
	runtime.ReadMemStats(&s)
	return s.HeapAlloc
}

// benchApply applies c over and over after the two setup entries, as new
// requests (a fresh Req, Lamport and Time each), and reports msgs/s.
func benchApply(b *testing.B, m *Machine, c Command) {
	i := uint64(2)
	start := time.Now()
	for b.Loop() {
		i++
		c.Req, c.Lamport, c.Time = i, i, t0.Add(time.Duration(i))
		if r := m.Apply(i, &c); r.Err != nil {
			b.Fatal(r.Err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

func BenchmarkApplyPost(b *testing.B) {
	m := New()
	m.Apply(1, &Command{Op: wire.Register, User: "ana", Hash: testHash, Time: t0})
	m.Apply(2, &Command{Op: wire.Create, User: "ana", Name: "c", Time: t0})
	c := Command{Op: wire.Post, User: "ana", Name: "c", Client: "bench", Text: "a message of about sixty bytes, as chat messages often are"}
	benchApply(b, m, c)
}

func BenchmarkApplyDM(b *testing.B) {
	m := New()
	m.Apply(1, &Command{Op: wire.Register, User: "ana", Hash: testHash, Time: t0})
	m.Apply(2, &Command{Op: wire.Register, User: "bob", Hash: testHash, Time: t0})
	c := Command{Op: wire.DM, User: "ana", To: "bob", Client: "bench", Text: "a direct message"}
	benchApply(b, m, c)
}

func BenchmarkDecodeApply(b *testing.B) {
	m := New()
	m.Apply(1, &Command{Op: wire.Register, User: "ana", Hash: testHash, Time: t0})
	m.Apply(2, &Command{Op: wire.Create, User: "ana", Name: "c", Time: t0})
	enc, err := EncodeCommand(&Command{Op: wire.Post, User: "ana", Name: "c", Client: "bench", Req: 1, Lamport: 9, Time: t0,
		Text: "a message of about sixty bytes, as chat messages often are"})
	if err != nil {
		b.Fatal(err)
	}
	i := uint64(2)
	start := time.Now()
	for b.Loop() {
		i++
		c, err := DecodeCommand(enc)
		if err != nil {
			b.Fatal(err)
		}
		c.Req = i // as a follower sees a stream of distinct requests
		m.Apply(i, c)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

func BenchmarkHistory1M(b *testing.B) {
	m := needMillion(b)
	for _, tc := range []struct {
		name string
		q    wire.HistoryRequest
	}{
		{"newest50", wire.HistoryRequest{Channel: "big"}},
		{"middle500", wire.HistoryRequest{Channel: "big", After: 500_000, Limit: wire.MaxHistory}},
		{"oldest50", wire.HistoryRequest{Channel: "big", Before: 51}},
		{"mailbox50", wire.HistoryRequest{Direct: true}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			n := 0
			for b.Loop() {
				hr, e := m.History("bob", tc.q)
				if e != nil {
					b.Fatal(e)
				}
				n += len(hr.Messages)
			}
			b.ReportMetric(float64(n)/float64(b.N), "msgs/op")
		})
	}
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func BenchmarkSnapshot1M(b *testing.B) {
	m := needMillion(b)
	var size int64
	start := time.Now()
	for b.Loop() {
		var w countWriter
		if err := m.Snapshot(&w); err != nil {
			b.Fatal(err)
		}
		size = w.n
	}
	b.SetBytes(size)
	b.ReportMetric(float64(size)/million, "B/msg")
	b.ReportMetric(float64(b.N)*million/time.Since(start).Seconds(), "msgs/s")
}

func BenchmarkRestore1M(b *testing.B) {
	m := needMillion(b)
	var snap bytes.Buffer
	if err := m.Snapshot(&snap); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(snap.Len()))
	start := time.Now()
	for b.Loop() {
		if _, err := Restore(bytes.NewReader(snap.Bytes())); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)*million/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkMemory1M reports the heap a million-message machine holds.
func BenchmarkMemory1M(b *testing.B) {
	var snap bytes.Buffer
	if err := needMillion(b).Snapshot(&snap); err != nil {
		b.Fatal(err)
	}
	var used float64
	for b.Loop() {
		before := heap()
		m, err := Restore(bytes.NewReader(snap.Bytes()))
		if err != nil {
			b.Fatal(err)
		}
		used = float64(heap() - before)
		runtime.KeepAlive(m)
	}
	b.ReportMetric(used/million, "heapB/msg")
}
