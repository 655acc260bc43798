package filelog

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// lockPoll is how often WaitLeaderFree retries a busy lock.
const lockPoll = 5 * time.Millisecond

// WaitLeaderFree blocks until no process holds DIR/leader.lock, then holds
// it (flock LOCK_EX, on a descriptor of its own) until ctx ends,
// ReleaseLeader or Close. It polls the lock every 5 ms, so it returns
// ctx.Err() promptly when ctx ends first. It returns nil at once if this
// Log already holds the lock.
func (l *Log) WaitLeaderFree(ctx context.Context) error {
	path := filepath.Join(l.dir, lockName)
	if err := ctx.Err(); err != nil {
		return err
	}
	l.lockMu.Lock()
	held := l.lockf != nil
	l.lockMu.Unlock()
	if held {
		return nil
	}
	if l.isClosed() {
		return fmt.Errorf("filelog: lock %s: %w", path, os.ErrClosed)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("filelog: lock %s: %w", path, err)
	}
	t := time.NewTimer(0)
	<-t.C
	for {
		ok, err := tryFlock(f, unix.LOCK_EX|unix.LOCK_NB)
		if err != nil {
			f.Close()
			return fmt.Errorf("filelog: lock %s: %w", path, err)
		}
		if ok {
			break
		}
		if l.isClosed() {
			f.Close()
			return fmt.Errorf("filelog: lock %s: %w", path, os.ErrClosed)
		}
		if err := sleepCtx(ctx, t, lockPoll); err != nil {
			f.Close()
			return err
		}
	}

	l.lockMu.Lock()
	defer l.lockMu.Unlock()
	switch {
	case l.isClosed(): // Close ran while we waited (it sets closed before releasing)
		f.Close()
		return fmt.Errorf("filelog: lock %s: %w", path, os.ErrClosed)
	case l.lockf != nil: // a concurrent call on this Log won
		f.Close()
		return nil
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
	l.logger.Info("leader lock acquired")
	return nil
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
