package filelog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"chat/store"
)

var _ store.Log = (*Log)(nil)

// File and directory names inside the log's directory.
const (
	logName      = "log"
	epochsName   = "epochs"
	lockName     = "leader.lock"
	snapshotName = "snapshots"
)

// Log is a store.Log kept in one directory shared by every server. Each
// Log has its own file descriptors, so several Logs on one directory (one
// per simulated server in a test) behave like separate processes.
type Log struct {
	dir    string
	logger *slog.Logger

	known atomic.Uint64 // a lower bound of the newest claimed epoch

	mu      sync.Mutex // guards the fields below, and serialises Claim and Append
	closed  bool
	logf    *os.File // DIR/log, O_WRONLY|O_APPEND
	claimed uint64   // the epoch this Log claimed, 0 if none
	fenced  bool     // a newer epoch than claimed exists
	failed  error    // a write or fdatasync of the claimed epoch failed
	buf     []byte   // encoding buffer of Append

	lockMu   sync.Mutex
	lockf    *os.File    // DIR/leader.lock while this Log holds the flock
	lockGen  uint64      // counts acquisitions, so a stale ctx cannot release a newer hold
	lockStop func() bool // stops the context.AfterFunc of the current hold

	readersMu sync.Mutex
	readers   map[*Reader]struct{}

	// Test hooks, nil outside tests: testHookBeforeBarrier runs in Claim
	// after the claim file is durable and before the barrier is written;
	// testHookAfterSync runs in Append after the fdatasync and before the
	// fence check.
	testHookBeforeBarrier func()
	testHookAfterSync     func()
}

// Open opens the log in dir, creating the directory layout if it is
// missing. A nil logger discards.
func Open(dir string, logger *slog.Logger) (*Log, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{dir, filepath.Join(dir, epochsName), filepath.Join(dir, snapshotName)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("filelog: open: create %s: %w", d, err)
		}
	}
	path := filepath.Join(dir, logName)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("filelog: open %s: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		f.Close()
		return nil, fmt.Errorf("filelog: open: %w", err)
	}
	l := &Log{
		dir:     dir,
		logger:  logger.With("log", dir),
		logf:    f,
		readers: make(map[*Reader]struct{}),
	}
	newest, err := l.scanEpochs()
	if err != nil {
		f.Close()
		return nil, err
	}
	l.known.Store(newest)
	return l, nil
}

// Dir returns the directory of the log.
func (l *Log) Dir() string { return l.dir }

func (l *Log) epochPath(e uint64) string {
	return filepath.Join(l.dir, epochsName, fmt.Sprintf("%020d", e))
}

// scanEpochs returns the highest epoch file name in DIR/epochs.
func (l *Log) scanEpochs() (uint64, error) {
	d := filepath.Join(l.dir, epochsName)
	ents, err := os.ReadDir(d)
	if err != nil {
		return 0, fmt.Errorf("filelog: list %s: %w", d, err)
	}
	var newest uint64
	for _, e := range ents {
		if n, err := strconv.ParseUint(e.Name(), 10, 64); err == nil && n > newest {
			newest = n
		}
	}
	return newest, nil
}

// Epoch returns the newest claimed epoch (0 before the first claim). It
// probes epochs/<n+1>, <n+2>, ... upward from the newest epoch it knows,
// usually one stat.
func (l *Log) Epoch() (uint64, error) {
	e := l.known.Load()
	for e < math.MaxUint64 {
		p := l.epochPath(e + 1)
		_, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("filelog: epoch: stat %s: %w", p, err)
		}
		e++
	}
	for {
		old := l.known.Load()
		if old >= e || l.known.CompareAndSwap(old, e) {
			return e, nil
		}
	}
}

// epochFile is the content of a claim file, for people and tools.
type epochFile struct {
	Epoch  uint64    `json:"epoch"`
	Leader int       `json:"leader"`
	Time   time.Time `json:"time"`
}

// Claim makes this Log the only writer of epoch, which must be Epoch()+1:
// an epoch that another node already claimed fails with store.ErrClaimed.
// It creates epochs/<epoch> with O_EXCL, fsyncs it and the directory, then
// appends and fdatasyncs a barrier record. On success Append(epoch, ...)
// is allowed on this Log. If epoch+1 was claimed before the barrier was
// durable, Claim returns store.ErrFenced: this node leads nothing.
func (l *Log) Claim(epoch uint64, leader int) error {
	if leader < 0 || leader > math.MaxUint32 {
		return fmt.Errorf("filelog: claim epoch %d: leader id %d out of range", epoch, leader)
	}
	if epoch == 0 || epoch == math.MaxUint64 {
		return fmt.Errorf("filelog: claim epoch %d: out of range", epoch)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return fmt.Errorf("filelog: claim epoch %d in %s: %w", epoch, l.dir, os.ErrClosed)
	}
	cur, err := l.Epoch()
	if err != nil {
		return err
	}
	if epoch <= cur {
		return fmt.Errorf("filelog: claim epoch %d: newest epoch is %d: %w", epoch, cur, store.ErrClaimed)
	}
	if epoch != cur+1 {
		return fmt.Errorf("filelog: claim epoch %d: newest epoch is %d, so the next is %d", epoch, cur, cur+1)
	}

	path := l.epochPath(epoch)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("filelog: claim %s: %w", path, store.ErrClaimed)
	}
	if err != nil {
		return fmt.Errorf("filelog: claim %s: %w", path, err)
	}
	// From here on the epoch is ours, whatever fails: nobody else can claim it.
	l.claimed, l.fenced, l.failed = 0, false, nil
	body, _ := json.Marshal(epochFile{Epoch: epoch, Leader: leader, Time: time.Now().UTC()})
	_, err = f.Write(append(body, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("filelog: claim %s: write: %w", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("filelog: claim epoch %d: %w", epoch, err)
	}
	l.Epoch() // advance the known epoch; an error here changes nothing

	if l.testHookBeforeBarrier != nil {
		l.testHookBeforeBarrier()
	}
	l.buf = appendRecord(l.buf[:0], epoch, store.KindBarrier, uint32(leader), nil)
	if err := l.writeSync(l.buf); err != nil {
		return fmt.Errorf("filelog: claim epoch %d: barrier: %w", epoch, err)
	}
	l.claimed = epoch
	// A newer claim may already exist (this process was paused between its
	// claim file and its barrier): then the barrier may even come after the
	// newer one, and readers skip it. Say so now rather than at the first
	// Append.
	if err := l.checkFence(epoch); err != nil {
		return fmt.Errorf("filelog: claim epoch %d: %w", epoch, err)
	}
	l.noteLeader(leader)
	l.logger.Info("epoch claimed", "epoch", epoch, "leader", leader)
	return nil
}

// Append durably writes payloads as data records of epoch, in order, as
// one write(2) followed by fdatasync. Only the Log that claimed epoch may
// append to it. It returns nil only if, after the write was durable,
// epochs/<epoch+1> did not exist; otherwise store.ErrFenced, and this Log
// refuses every later Append of epoch. Any other error means the batch may
// or may not be in the log: it is not acknowledged, and this Log refuses
// every later Append of epoch too (the caller steps down, or claims a new
// epoch). A payload may not contain the record magic (JSON never does) nor
// exceed MaxPayload.
func (l *Log) Append(epoch uint64, payloads [][]byte) error {
	for i, p := range payloads {
		if len(p) > MaxPayload {
			return fmt.Errorf("filelog: append: payload %d is %d bytes, more than %d", i, len(p), MaxPayload)
		}
		if bytes.Contains(p, magic[:]) {
			return fmt.Errorf("filelog: append: payload %d contains the record magic % x", i, magic)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	path := filepath.Join(l.dir, logName)
	if l.closed {
		return fmt.Errorf("filelog: append %s: %w", path, os.ErrClosed)
	}
	if epoch == 0 || epoch != l.claimed {
		return fmt.Errorf("filelog: append %s: epoch %d was not claimed by this log (it holds %d)", path, epoch, l.claimed)
	}
	if l.fenced {
		return fmt.Errorf("filelog: append %s: epoch %d: %w", path, epoch, store.ErrFenced)
	}
	if l.failed != nil {
		return fmt.Errorf("filelog: append %s: epoch %d: an earlier write failed, claim a new epoch: %w", path, epoch, l.failed)
	}
	// Cheap early check: do not even write once a newer epoch exists.
	if err := l.checkFence(epoch); err != nil {
		return fmt.Errorf("filelog: append %s: %w", path, err)
	}
	if len(payloads) == 0 {
		return nil
	}
	l.buf = l.buf[:0]
	for _, p := range payloads {
		l.buf = appendRecord(l.buf, epoch, store.KindData, 0, p)
	}
	if err := l.writeSync(l.buf); err != nil {
		// Some of the batch may be in the file, and after a failed
		// fdatasync nobody knows what is on disk: no more appends here.
		l.failed = err
		return fmt.Errorf("filelog: append %s: %w", path, err)
	}
	if cap(l.buf) > 1<<20 {
		l.buf = nil // do not pin one huge batch's buffer
	}
	if l.testHookAfterSync != nil {
		l.testHookAfterSync()
	}
	// The check that matters: after the records are durable.
	if err := l.checkFence(epoch); err != nil {
		return fmt.Errorf("filelog: append %s: %w", path, err)
	}
	return nil
}

// checkFence returns store.ErrFenced if epochs/<epoch+1> exists. l.mu is held.
func (l *Log) checkFence(epoch uint64) error {
	p := l.epochPath(epoch + 1)
	_, err := os.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err == nil:
		l.fenced = true
		l.logger.Warn("fenced: a newer epoch exists", "epoch", epoch)
		return fmt.Errorf("epoch %d: %w", epoch, store.ErrFenced)
	default:
		return fmt.Errorf("fence check: stat %s: %w", p, err)
	}
}

// writeSync writes b with exactly one write(2) on the O_APPEND descriptor,
// then fdatasyncs. A short write is an error: the partial record it leaves
// is skipped by readers once a later record follows it. l.mu is held.
func (l *Log) writeSync(b []byte) error {
	rc, err := l.logf.SyscallConn()
	if err != nil {
		return err
	}
	var n int
	var werr, serr error
	err = rc.Write(func(fd uintptr) bool {
		for {
			n, werr = unix.Write(int(fd), b)
			if werr == unix.EINTR && n <= 0 {
				continue
			}
			break
		}
		if werr == nil && n == len(b) {
			for {
				serr = unix.Fdatasync(int(fd))
				if serr != unix.EINTR {
					break
				}
			}
		}
		return true
	})
	switch {
	case err != nil:
		return err
	case werr != nil:
		return fmt.Errorf("write: %w", werr)
	case n != len(b):
		return fmt.Errorf("short write: %d of %d bytes", n, len(b))
	case serr != nil:
		return fmt.Errorf("fdatasync: %w", serr)
	}
	return nil
}

// Reader returns a reader of the log positioned after pos (the zero
// Position is the start). It has its own descriptor; close it when done
// (Close of the Log closes it too).
func (l *Log) Reader(pos store.Position) (store.LogReader, error) {
	return l.OpenReader(pos)
}

// OpenReader is Reader with the concrete type.
func (l *Log) OpenReader(pos store.Position) (*Reader, error) {
	path := filepath.Join(l.dir, logName)
	if pos.Offset < 0 {
		return nil, fmt.Errorf("filelog: read %s: negative offset %d", path, pos.Offset)
	}
	l.readersMu.Lock()
	defer l.readersMu.Unlock()
	if l.readers == nil {
		return nil, fmt.Errorf("filelog: read %s: %w", path, os.ErrClosed)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("filelog: read %s: %w", path, err)
	}
	r := newReader(f, pos, l.logger)
	r.owner = l
	l.readers[r] = struct{}{}
	return r, nil
}

func (l *Log) forgetReader(r *Reader) {
	l.readersMu.Lock()
	delete(l.readers, r)
	l.readersMu.Unlock()
}

// Close releases the leader's lock if held, closes the log and every open
// reader. It is idempotent.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	err := l.logf.Close()
	l.mu.Unlock()
	// After closed is set: a WaitLeaderFree that acquires from now on sees it
	// and lets go (see lock.go).
	l.ReleaseLeader()

	l.readersMu.Lock()
	readers := l.readers
	l.readers = nil
	l.readersMu.Unlock()
	for r := range readers {
		r.closeFile()
	}
	if err != nil {
		return fmt.Errorf("filelog: close %s: %w", filepath.Join(l.dir, logName), err)
	}
	return nil
}

func (l *Log) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// syncDir fsyncs a directory, making the creation, rename or removal of
// its entries durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

// sleepCtx waits d or until ctx is done.
func sleepCtx(ctx context.Context, t *time.Timer, d time.Duration) error {
	t.Reset(d)
	select {
	case <-ctx.Done():
		t.Stop()
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
