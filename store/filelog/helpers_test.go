package filelog

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"chat/store"
)

// testLogger sends the package's log lines to t.Log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// openLog opens a Log on dir, closed when the test ends.
func openLog(t testing.TB, dir string) *Log {
	t.Helper()
	l, err := Open(dir, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// openReader opens a reader of l at pos, closed when the test ends.
func openReader(t testing.TB, l *Log, pos store.Position) *Reader {
	t.Helper()
	r, err := l.OpenReader(pos)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// drain returns the entries r returns until io.EOF, and checks that a
// second call at the end still returns io.EOF.
func drain(t testing.TB, r store.LogReader) []store.Entry {
	t.Helper()
	var out []store.Entry
	for {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Next after %d entries: %v", len(out), err)
		}
		out = append(out, e)
	}
	if e, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("Next after io.EOF = %+v, %v; want io.EOF again", e, err)
	}
	return out
}

func claim(t testing.TB, l *Log, epoch uint64, leader int) {
	t.Helper()
	if err := l.Claim(epoch, leader); err != nil {
		t.Fatalf("Claim(%d, %d): %v", epoch, leader, err)
	}
}

func appendOK(t testing.TB, l *Log, epoch uint64, payloads ...string) {
	t.Helper()
	if err := l.Append(epoch, bs(payloads...)); err != nil {
		t.Fatalf("Append(%d, %q): %v", epoch, payloads, err)
	}
}

func bs(ss ...string) [][]byte {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}

// rawAppend appends bytes to DIR/log behind the Log's back: garbage, or a
// record written as a paused old leader would.
func rawAppend(t testing.TB, dir string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, logName), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func logSize(t testing.TB, dir string) int64 {
	t.Helper()
	info, err := os.Stat(filepath.Join(dir, logName))
	if err != nil {
		t.Fatal(err)
	}
	return info.Size()
}

// want describes an expected entry: "B<epoch>/<leader>" for a barrier,
// "<epoch>:<payload>" for data.
func describe(es []store.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		if e.Kind == store.KindBarrier {
			out[i] = fmt.Sprintf("B%d/%d", e.Epoch, e.Leader)
		} else {
			out[i] = fmt.Sprintf("%d:%s", e.Epoch, e.Payload)
		}
	}
	return out
}

// checkEntries compares entries with their descriptions, and checks the
// numbering and positions every reader must produce.
func checkEntries(t testing.TB, got []store.Entry, firstIndex uint64, want ...string) {
	t.Helper()
	if d := describe(got); !reflect.DeepEqual(d, want) && !(len(d) == 0 && len(want) == 0) {
		t.Fatalf("entries = %q\n           want %q", d, want)
	}
	var prev int64
	for i, e := range got {
		if e.Index != firstIndex+uint64(i) || e.Pos.Index != e.Index {
			t.Fatalf("entry %d: Index %d, Pos.Index %d; want %d", i, e.Index, e.Pos.Index, firstIndex+uint64(i))
		}
		if e.Pos.Offset <= prev {
			t.Fatalf("entry %d: Pos.Offset %d not after %d", i, e.Pos.Offset, prev)
		}
		prev = e.Pos.Offset
	}
}
