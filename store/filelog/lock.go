package filelog

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// lockPoll is how often WaitLeaderFree retries a busy lock.
const lockPoll = 5 * time.Millisecond

// WaitLeaderFree blocks until no process holds DIR/leader.lock, then holds
// it (flock LOCK_EX, on a descriptor of its own) until ctx ends,
// ReleaseLeader or Close. It polls the lock every 5 ms, so it returns
// ctx.Err() promptly when ctx ends first. It returns at once if this Log
// already holds the lock.
//
// The file names the server that last claimed an epoch (see Claim):
// WaitLeaderFree returns its id (0 if unknown). When the lock comes free
// that is, as a rule, the leader that has just died or stepped down.
func (l *Log) WaitLeaderFree(ctx context.Context) (leader int, err error) {
	path := filepath.Join(l.dir, lockName)
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	l.lockMu.Lock()
	held := l.lockf != nil
	l.lockMu.Unlock()
	if held {
		return 0, nil
	}
	if l.isClosed() {
		return 0, fmt.Errorf("filelog: lock %s: %w", path, os.ErrClosed)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return 0, fmt.Errorf("filelog: lock %s: %w", path, err)
	}
	t := time.NewTimer(0)
	<-t.C
	for {
		ok, err := tryFlock(f, unix.LOCK_EX|unix.LOCK_NB)
		if err != nil {
			f.Close()
			return 0, fmt.Errorf("filelog: lock %s: %w", path, err)
		}
		if ok {
			break
		}
		if l.isClosed() {
			f.Close()
			return 0, fmt.Errorf("filelog: lock %s: %w", path, os.ErrClosed)
		}
		if err := sleepCtx(ctx, t, lockPoll); err != nil {
			f.Close()
			return 0, err
		}
	}

	l.lockMu.Lock()
	defer l.lockMu.Unlock()
	switch {
	case l.isClosed(): // Close ran while we waited (it sets closed before releasing)
		f.Close()
		return 0, fmt.Errorf("filelog: lock %s: %w", path, os.ErrClosed)
	case l.lockf != nil: // a concurrent call on this Log won
		f.Close()
		return 0, nil
	}
	l.lockf = f
	l.lockGen++
	gen := l.lockGen
	l.lockStop = context.AfterFunc(ctx, func() {
		l.lockMu.Lock()
		defer l.lockMu.Unlock()
		if l.lockGen == gen {
			l.releaseLocked("context done")
		}
	})
	leader = readLeader(f)
	l.logger.Info("leader lock acquired", "last_leader", leader)
	return leader, nil
}

// readLeader returns the leader id written in the lock file, 0 if none.
// The content is a hint, not the lock: it is never trusted for safety.
func readLeader(f *os.File) int {
	buf := make([]byte, 32)
	n, _ := f.ReadAt(buf, 0)
	id, _ := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	return id
}

// noteLeader writes the id of the server that just claimed an epoch into the
// lock file, for the next holder of the lock to read.
func (l *Log) noteLeader(id int) {
	path := filepath.Join(l.dir, lockName)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		l.logger.Warn("note the leader in the lock file", "err", err)
		return
	}
	defer f.Close()
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(id)+"\n"), 0)
}

// ReleaseLeader lets go of DIR/leader.lock if this Log holds it.
func (l *Log) ReleaseLeader() {
	l.lockMu.Lock()
	defer l.lockMu.Unlock()
	l.releaseLocked("released")
}

// releaseLocked drops the lock; l.lockMu is held.
func (l *Log) releaseLocked(why string) {
	if l.lockf == nil {
		return
	}
	if l.lockStop != nil {
		l.lockStop()
		l.lockStop = nil
	}
	if _, err := tryFlock(l.lockf, unix.LOCK_UN); err != nil {
		l.logger.Warn("unlock leader lock", "err", err) // closing below releases it anyway
	}
	l.lockf.Close()
	l.lockf = nil
	l.lockGen++
	l.logger.Info("leader lock released", "why", why)
}

// tryFlock applies flock(2) how to f. ok is false when a LOCK_NB request
// would block.
func tryFlock(f *os.File, how int) (ok bool, err error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return false, err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			ferr = unix.Flock(int(fd), how)
			if ferr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return false, err
	}
	if errors.Is(ferr, unix.EWOULDBLOCK) {
		return false, nil
	}
	if ferr != nil {
		return false, fmt.Errorf("flock: %w", ferr)
	}
	return true, nil
}
