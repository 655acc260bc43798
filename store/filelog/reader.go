package filelog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"chat/store"
)

// readChunk is the least a Reader asks of the file in one read.
const readChunk = 64 << 10

// Reader returns the entries of a Log in order, by the package's reading
// rule. Next returns io.EOF when no complete entry is available yet; call
// it again later, the log grows. A Reader is not safe for concurrent use.
type Reader struct {
	f      source
	logger *slog.Logger
	owner  *Log // nil for a Reader made by a test or the fuzzer

	off   int64  // where the next record starts
	index uint64 // entries returned so far, counting those before the start position
	maxEp uint64 // highest barrier epoch returned so far

	// While resynchronising at scanAt (== off), every candidate record
	// starting before scanFrom is known to be bad, so a later retry at the
	// tail does not rescan them.
	scanAt, scanFrom int64

	buf    []byte // file bytes [bufOff, bufOff+len(buf))
	bufOff int64

	closeOnce sync.Once
	closeErr  error
}

// source is what a Reader reads: the log file (*os.File), or memory in
// the fuzz test.
type source interface {
	io.ReaderAt
	io.Closer
	Name() string
}

func newReader(f source, pos store.Position, logger *slog.Logger) *Reader {
	return &Reader{
		f:      f,
		logger: logger,
		off:    pos.Offset,
		index:  pos.Index,
		maxEp:  pos.MaxEp,
		scanAt: -1,
	}
}

// Pos returns the position after the last entry the Reader returned, or
// after the records it has skipped since; a Reader opened there continues
// identically.
func (r *Reader) Pos() store.Position {
	return store.Position{Index: r.index, Offset: r.off, MaxEp: r.maxEp}
}

// Next returns the next entry, or io.EOF when there is none yet.
func (r *Reader) Next() (store.Entry, error) {
	for {
		rec, total, v, err := r.judge(r.off)
		if err != nil {
			return store.Entry{}, r.wrap(err)
		}
		switch v {
		case recEnd:
			return store.Entry{}, io.EOF
		case recValid:
			r.off += int64(total)
			if e, ok := r.accept(rec); ok {
				return e, nil
			}
			continue
		}
		// Bad or incomplete: skip to the next valid record, if one exists yet.
		q, found, err := r.resync()
		if err != nil {
			return store.Entry{}, r.wrap(err)
		}
		if !found {
			return store.Entry{}, io.EOF
		}
		if v == recIncomplete {
			// The record here may have been in the middle of being written
			// when it was judged, and finished since, together with the one
			// found after it (a writer writes in order). Look again, from
			// the file: only a record still incomplete now that a later one
			// is complete is torn.
			r.buf, r.bufOff = r.buf[:0], r.off
			if _, _, again, err := r.judge(r.off); err != nil {
				return store.Entry{}, r.wrap(err)
			} else if again == recValid {
				continue
			}
		}
		r.logger.Warn("skipped a torn or corrupt region of the log", "from", r.off, "to", q, "bytes", q-r.off)
		r.off = q
	}
}

// accept applies the reading rule to a valid record that ends at r.off.
func (r *Reader) accept(rec record) (store.Entry, bool) {
	switch rec.kind {
	case store.KindBarrier:
		if rec.epoch <= r.maxEp {
			return store.Entry{}, false
		}
		r.maxEp = rec.epoch
	case store.KindData:
		if rec.epoch < r.maxEp {
			return store.Entry{}, false // a deposed leader's, after a newer barrier
		}
	}
	r.index++
	e := store.Entry{
		Pos:   store.Position{Index: r.index, Offset: r.off, MaxEp: r.maxEp},
		Index: r.index,
		Epoch: rec.epoch,
		Kind:  rec.kind,
	}
	if rec.kind == store.KindBarrier {
		e.Leader = int(rec.leader)
	} else {
		e.Payload = bytes.Clone(rec.payload)
	}
	return e, true
}

// judge tells what the bytes at p hold. rec.payload aliases the buffer:
// use it before the next peek.
func (r *Reader) judge(p int64) (rec record, total int, v verdict, err error) {
	b, err := r.peek(p, headerSize)
	if err != nil {
		return record{}, 0, 0, err
	}
	total, v = checkHeader(b)
	if v != recValid {
		return record{}, 0, v, nil
	}
	if b, err = r.peek(p, total); err != nil {
		return record{}, 0, 0, err
	}
	if len(b) < total {
		return record{}, 0, recIncomplete, nil
	}
	rec, ok := decodeRecord(b)
	if !ok {
		return record{}, 0, recBad, nil
	}
	return rec, total, recValid, nil
}

// resync looks after r.off for the first offset where a complete, valid
// record starts. found is false when there is none (yet).
func (r *Reader) resync() (q int64, found bool, err error) {
	from := r.off + 1
	if r.scanAt == r.off && r.scanFrom > from {
		from = r.scanFrom
	}
	proven := true // every candidate in (r.off, from) is known bad
	for {
		q, ok, end, err := r.findMagic(from)
		if err != nil {
			return 0, false, err
		}
		if !ok {
			if proven {
				// No magic starts before end-3; a partial one may straddle the end.
				r.scanAt, r.scanFrom = r.off, max(from, end-int64(len(magic))+1)
			}
			return 0, false, nil
		}
		_, _, v, err := r.judge(q)
		if err != nil {
			return 0, false, err
		}
		switch v {
		case recValid:
			return q, true, nil
		case recBad:
			if proven {
				r.scanAt, r.scanFrom = r.off, q+1
			}
		default:
			proven = false // incomplete: it may still become valid
		}
		from = q + 1
	}
}

// findMagic returns the first offset >= from where the magic starts. When
// there is none, end is the end of the file as seen.
func (r *Reader) findMagic(from int64) (q int64, found bool, end int64, err error) {
	for {
		b, err := r.peek(from, readChunk)
		if err != nil {
			return 0, false, 0, err
		}
		if i := bytes.Index(b, magic[:]); i >= 0 {
			return from + int64(i), true, 0, nil
		}
		if len(b) < readChunk {
			return 0, false, from + int64(len(b)), nil
		}
		from += int64(len(b) - len(magic) + 1)
	}
}

// peek returns the file's bytes [p, p+n), fewer if the file ends sooner.
// The slice aliases r.buf and is valid until the next peek.
func (r *Reader) peek(p int64, n int) ([]byte, error) {
	start := p - r.bufOff
	if start < 0 || start > int64(len(r.buf)) {
		r.buf, r.bufOff, start = r.buf[:0], p, 0
	}
	if int64(len(r.buf))-start >= int64(n) {
		return r.buf[start : start+int64(n)], nil
	}
	// Keep only what is at or after p, then read more behind it.
	if start > 0 {
		m := copy(r.buf, r.buf[start:])
		r.buf, r.bufOff = r.buf[:m], p
	}
	for len(r.buf) < n {
		if len(r.buf) == cap(r.buf) {
			// Grow with the data actually read, not with what a header
			// claims: a corrupt length must not cost a 16 MiB buffer.
			nb := make([]byte, len(r.buf), max(readChunk, min(n, 2*cap(r.buf))))
			copy(nb, r.buf)
			r.buf = nb
		}
		m, err := r.f.ReadAt(r.buf[len(r.buf):cap(r.buf)], r.bufOff+int64(len(r.buf)))
		r.buf = r.buf[:len(r.buf)+m]
		if errors.Is(err, io.EOF) || (err == nil && m == 0) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if cap(r.buf) > 4*readChunk && len(r.buf) <= readChunk {
		// Shrink after a huge record, so an idle tail does not pin it.
		r.buf = append(make([]byte, 0, readChunk), r.buf...)
	}
	return r.buf[:min(n, len(r.buf))], nil
}

func (r *Reader) wrap(err error) error {
	return fmt.Errorf("filelog: read %s at offset %d: %w", r.f.Name(), r.off, err)
}

// Close closes the reader. It is idempotent.
func (r *Reader) Close() error {
	if r.owner != nil {
		r.owner.forgetReader(r)
	}
	return r.closeFile()
}

func (r *Reader) closeFile() error {
	r.closeOnce.Do(func() { r.closeErr = r.f.Close() })
	return r.closeErr
}
