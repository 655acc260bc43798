package store

import (
	"context"
	"errors"
	"io"
)

// Log is the ordered, durable, fenced sequence of commands every server
// applies. One backend today (filelog: a directory every server mounts);
// a consensus engine can replace it behind this interface. Nothing outside a
// backend may assume how it stores entries or decides epochs.
type Log interface {
	// Epoch returns the newest claimed epoch (0 before the first claim).
	Epoch() (uint64, error)
	// Claim makes this node the only writer of epoch, which must be
	// Epoch()+1: it fails with ErrClaimed if another node claimed it first.
	// On success it has durably written a barrier entry (Kind Barrier,
	// Leader = leader) that orders everything appended in earlier epochs
	// before everything appended in this one.
	Claim(epoch uint64, leader int) error
	// Append durably writes payloads as data entries of epoch, in order, in
	// one batch. It returns nil only if, after the write was durable, epoch
	// was still the newest: then the entries are committed and every reader
	// will return them. ErrFenced means a newer epoch exists: the entries are
	// not acknowledged (readers may or may not return them), and the caller
	// must stop acting as leader and rebuild its state from the log.
	Append(epoch uint64, payloads [][]byte) error
	// Reader returns a reader of committed entries positioned after pos (the
	// zero Position is the start).
	Reader(pos Position) (LogReader, error)
	// SaveSnapshot stores a snapshot of the state after the entry at pos.
	SaveSnapshot(pos Position, write func(io.Writer) error) error
	// LatestSnapshot opens the newest snapshot; ok is false when there is none.
	LatestSnapshot() (pos Position, r io.ReadCloser, ok bool, err error)
	// WaitLeaderFree blocks until no process holds the leader's lock, then
	// holds it for this process until ctx ends or ReleaseLeader is called.
	// It is how a follower learns at once that a leader process died. It
	// returns the id of the server that last claimed an epoch (0 if
	// unknown): as a rule, the leader that has just died or stepped down.
	WaitLeaderFree(ctx context.Context) (leader int, err error)
	// ReleaseLeader lets go of the leader's lock if this process holds it.
	ReleaseLeader()
	// Close releases files and locks.
	Close() error
}

// LogReader returns entries in log order.
type LogReader interface {
	// Next returns the next committed entry, or io.EOF when there is none
	// yet (call again later: the log grows).
	Next() (Entry, error)
	Close() error
}

// Entry kinds.
const (
	KindData    = 1
	KindBarrier = 2
)

// Entry is one log entry as a reader returns it.
type Entry struct {
	Pos     Position // where the entry ends; a reader opened at Pos continues after it
	Index   uint64   // 1-based ordinal among the entries readers return (barriers included)
	Epoch   uint64
	Kind    int
	Leader  int    // for barriers: the id of the server that claimed Epoch
	Payload []byte // for data: an encoded Command
}

// Position is an opaque place in the log, comparable, and JSON-encodable so
// snapshots can record it.
type Position struct {
	Index  uint64 `json:"index"`  // entries before this position
	Offset int64  `json:"offset"` // backend-specific
	MaxEp  uint64 `json:"max_epoch"`
}

// Errors a Log returns; test with errors.Is.
var (
	ErrFenced  = errors.New("store: a newer epoch exists: this node may no longer write")
	ErrClaimed = errors.New("store: epoch already claimed by another node")
)
