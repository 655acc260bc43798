package filelog

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"chat/store"
)

// benchPayload is a command of a typical size (~150 bytes).
var benchPayload = []byte(`{"op":"post","client":"c-5f1e2d","req":1234,"user":"ana","lamport":99123,` +
	`"time":"2025-01-02T03:04:05.123456789Z","name":"general","text":"hello, world"}`)

func benchAppend(b *testing.B, batch int) {
	l, err := Open(b.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	if err := l.Claim(1, 1); err != nil {
		b.Fatal(err)
	}
	payloads := make([][]byte, batch)
	for i := range payloads {
		payloads[i] = benchPayload
	}
	b.SetBytes(int64(batch * len(benchPayload)))
	calls := 0
	for b.Loop() {
		if err := l.Append(1, payloads); err != nil {
			b.Fatal(err)
		}
		calls++
	}
	records := float64(calls * batch)
	b.ReportMetric(records/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(b.Elapsed().Seconds()*1e6/records, "µs/record")
}

// BenchmarkAppend1 is one record per call: one write and one fdatasync each.
func BenchmarkAppend1(b *testing.B) { benchAppend(b, 1) }

// BenchmarkAppendBatch32 is group commit: 32 records per write and fdatasync.
func BenchmarkAppendBatch32(b *testing.B) { benchAppend(b, 32) }

// BenchmarkRead reads a log of 100k records, reopening at the end.
func BenchmarkRead(b *testing.B) {
	dir := b.TempDir()
	l, err := Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	if err := l.Claim(1, 1); err != nil {
		b.Fatal(err)
	}
	payloads := make([][]byte, 1000)
	for i := range payloads {
		payloads[i] = benchPayload
	}
	for range 100 {
		if err := l.Append(1, payloads); err != nil {
			b.Fatal(err)
		}
	}
	r, err := l.Reader(store.Position{})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(headerSize + len(benchPayload)))
	records := 0
	for b.Loop() {
		_, err := r.Next()
		if errors.Is(err, io.EOF) {
			r.Close()
			if r, err = l.Reader(store.Position{}); err != nil {
				b.Fatal(err)
			}
			_, err = r.Next()
		}
		if err != nil {
			b.Fatal(fmt.Errorf("read: %w", err))
		}
		records++
	}
	r.Close()
	b.ReportMetric(float64(records)/b.Elapsed().Seconds(), "records/s")
}
