package filelog

import (
	"errors"
	"io"
	"log/slog"
	"math"
	"reflect"
	"slices"
	"testing"

	"chat/store"
)

// FuzzReader feeds arbitrary bytes as the log file. The reader must not
// panic or loop; every call makes progress; and a reader that tailed the
// file while it grew returns exactly what a fresh reader of the whole
// file returns. A valid record appended after the bytes is always
// returned, last.
func FuzzReader(f *testing.F) {
	var valid []byte
	valid = appendRecord(valid, 1, store.KindBarrier, 1, nil)
	valid = appendRecord(valid, 1, store.KindData, 0, []byte(`{"op":"a"}`))
	valid = appendRecord(valid, 2, store.KindBarrier, 2, nil)
	valid = appendRecord(valid, 1, store.KindData, 0, []byte(`{"op":"stale"}`))
	valid = appendRecord(valid, 2, store.KindData, 0, []byte(`{"op":"b"}`))
	f.Add([]byte{})
	f.Add(valid)
	f.Add(valid[:len(valid)-3])
	f.Add(append(append([]byte{}, valid[:40]...), valid...))
	f.Add(magic[:])
	f.Add(append(magic[:], 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff))
	f.Add(make([]byte, 100))

	final := appendRecord(nil, math.MaxUint64, store.KindData, 0, []byte(`{"op":"final"}`))
	discard := slog.New(slog.DiscardHandler)

	f.Fuzz(func(t *testing.T, data []byte) {
		file := &memFile{b: slices.Clone(data)}
		open := func() *Reader { return newReader(file, store.Position{}, discard) }
		read := func(r *Reader, size int) []store.Entry {
			var out []store.Entry
			for calls := 0; ; calls++ {
				if calls > size/headerSize+2 {
					t.Fatalf("more than %d entries from %d bytes", calls, size)
				}
				e, err := r.Next()
				if errors.Is(err, io.EOF) {
					if _, err := r.Next(); !errors.Is(err, io.EOF) {
						t.Fatalf("Next after io.EOF: %v", err)
					}
					return out
				}
				if err != nil {
					t.Fatal(err)
				}
				if e.Pos.Offset > int64(size) || (len(out) > 0 && e.Pos.Offset <= out[len(out)-1].Pos.Offset) {
					t.Fatalf("entry %d ends at %d (file %d bytes)", len(out), e.Pos.Offset, size)
				}
				out = append(out, e)
			}
		}

		tail := open()
		got := read(tail, len(data))
		file.b = append(file.b, final...)
		size := len(file.b)
		got = append(got, read(tail, size)...)

		fresh := read(open(), size)
		if !reflect.DeepEqual(got, fresh) {
			t.Fatalf("tailing reader:\n%q\nfresh reader:\n%q", describe(got), describe(fresh))
		}
		if len(got) == 0 || string(got[len(got)-1].Payload) != `{"op":"final"}` || got[len(got)-1].Pos.Offset != int64(size) {
			t.Fatalf("the appended record is not last: %q", describe(got))
		}
		for i, e := range got {
			if e.Index != uint64(i+1) {
				t.Fatalf("entry %d has Index %d", i, e.Index)
			}
		}
	})
}

// memFile is a log file in memory that the test grows.
type memFile struct{ b []byte }

func (m *memFile) Name() string { return "memory" }
func (m *memFile) Close() error { return nil }
func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
