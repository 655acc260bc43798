package filelog

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// waitFor fails the test if errc yields nothing within a generous bound
// (a hang guard, not a timing assertion).
func waitFor(t *testing.T, errc <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: still blocked after 20s", what)
		return nil
	}
}

// assertLocked checks that l cannot take the lock now: a wait with a short
// deadline ends with context.DeadlineExceeded.
func assertLocked(t *testing.T, l *Log) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	if _, err := l.WaitLeaderFree(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitLeaderFree while another holds the lock: %v; want DeadlineExceeded", err)
	}
}

func TestWaitLeaderFree(t *testing.T) {
	dir := t.TempDir()
	l1, l2, l3 := openLog(t, dir), openLog(t, dir), openLog(t, dir)
	ctx := t.Context()

	if _, err := l1.WaitLeaderFree(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l1.WaitLeaderFree(ctx); err != nil {
		t.Fatalf("WaitLeaderFree while holding: %v", err)
	}
	assertLocked(t, l2)

	// Cancel returns promptly with ctx.Err().
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- func() error { _, err := l2.WaitLeaderFree(cctx); return err }() }()
	cancel()
	if err := waitFor(t, errc, "cancelled wait"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v; want context.Canceled", err)
	}

	// ReleaseLeader hands it over.
	go func() { errc <- func() error { _, err := l2.WaitLeaderFree(ctx); return err }() }()
	l1.ReleaseLeader()
	l1.ReleaseLeader() // idempotent
	if err := waitFor(t, errc, "wait after release"); err != nil {
		t.Fatal(err)
	}
	assertLocked(t, l1)

	// Close hands it over.
	go func() { errc <- func() error { _, err := l3.WaitLeaderFree(ctx); return err }() }()
	l2.Close()
	if err := waitFor(t, errc, "wait after close"); err != nil {
		t.Fatal(err)
	}

	// The end of the holder's ctx hands it over.
	l3.ReleaseLeader()
	hctx, hcancel := context.WithCancel(ctx)
	if _, err := l3.WaitLeaderFree(hctx); err != nil {
		t.Fatal(err)
	}
	assertLocked(t, l1)
	go func() { errc <- func() error { _, err := l1.WaitLeaderFree(ctx); return err }() }()
	hcancel()
	if err := waitFor(t, errc, "wait after the holder's ctx ended"); err != nil {
		t.Fatal(err)
	}

	// A stale ctx of an earlier hold does not release a later one.
	l1.ReleaseLeader()
	octx, ocancel := context.WithCancel(ctx)
	if _, err := l3.WaitLeaderFree(octx); err != nil {
		t.Fatal(err)
	}
	l3.ReleaseLeader()
	if _, err := l3.WaitLeaderFree(ctx); err != nil {
		t.Fatal(err)
	}
	ocancel()
	assertLocked(t, l1)

	// A Log closed while waiting stops waiting.
	go func() { errc <- func() error { _, err := l1.WaitLeaderFree(ctx); return err }() }()
	l1.Close()
	if err := waitFor(t, errc, "wait of a closed Log"); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("wait of a closed Log: %v; want os.ErrClosed", err)
	}
}

const helperEnv = "FILELOG_TEST_LOCK_HOLDER_DIR"

// TestLockHolderProcess is not a test: it is the child process of
// TestLockReleasedWhenHolderKilled. It takes the lock, says so, and holds it
// until stdin closes or it is killed.
func TestLockHolderProcess(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("helper process for TestLockReleasedWhenHolderKilled")
	}
	l, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.WaitLeaderFree(context.Background()); err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("\nlocked\n")
	io.Copy(io.Discard, os.Stdin)
}

// TestLockReleasedWhenHolderKilled: a real process holds the lock; it stays
// held while the process is stopped, and the waiter gets it once the
// process is SIGKILLed.
func TestLockReleasedWhenHolderKilled(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockHolderProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "locked" {
				ready <- nil
				io.Copy(io.Discard, stdout)
				return
			}
		}
		ready <- errors.New("helper exited before taking the lock")
	}()
	if err := waitFor(t, ready, "helper taking the lock"); err != nil {
		t.Fatal(err)
	}

	l := openLog(t, dir)
	assertLocked(t, l)
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	assertLocked(t, l) // a stopped holder keeps it

	errc := make(chan error, 1)
	go func() { _, err := l.WaitLeaderFree(t.Context()); errc <- err }()
	killed := time.Now()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(t, errc, "wait after SIGKILL of the holder"); err != nil {
		t.Fatal(err)
	}
	t.Logf("lock acquired %v after SIGKILL of the holder", time.Since(killed))
}

// The lock file names the last leader: the next holder learns who just left.
func TestLockNamesTheLastLeader(t *testing.T) {
	dir := t.TempDir()
	a, b := openLog(t, dir), openLog(t, dir)
	if prev, err := a.WaitLeaderFree(t.Context()); err != nil || prev != 0 {
		t.Fatalf("first holder: last leader %d, %v; want 0", prev, err)
	}
	claim(t, a, 1, 3)
	a.ReleaseLeader()
	if prev, err := b.WaitLeaderFree(t.Context()); err != nil || prev != 3 {
		t.Fatalf("second holder: last leader %d, %v; want 3", prev, err)
	}
}
