package filelog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"chat/internal/testutil"
	"chat/store"
)

// A follower tails the log while the leader appends as fast as it can: it
// must read every record, in order, and never take a record that was being
// written for a torn one. (The reader used to judge a record at the tail
// incomplete, then, while looking for the next valid record, see the writer
// finish it and the next one too, and skip it: a follower silently missing
// a committed entry.)
func TestTailWhileWriting(t *testing.T) {
	dir := t.TempDir()
	leader := openLog(t, dir)
	claim(t, leader, 1, 1)
	var warnings testutil.Buffer
	followerLog, err := Open(dir, slog.New(slog.NewTextHandler(&warnings, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer followerLog.Close()
	r := openReader(t, followerLog, store.Position{})

	const total = 5000
	done := make(chan error, 1)
	go func() {
		for i := 0; i < total; {
			n := 1 + i%7 // batches of 1-7 records of varying sizes
			var batch [][]byte
			for j := 0; j < n && i < total; j++ {
				batch = append(batch, []byte(fmt.Sprintf(`{"n":%d,"pad":%q}`, i, strings.Repeat("x", i%300))))
				i++
			}
			if err := leader.Append(1, batch); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	next := 0
	writerDone := false
	for next < total {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			if writerDone {
				t.Fatalf("read %d of %d records, then the end", next, total)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
				writerDone = true
			default:
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == store.KindBarrier {
			continue
		}
		want := fmt.Sprintf(`{"n":%d,`, next)
		if !bytes.HasPrefix(e.Payload, []byte(want)) {
			t.Fatalf("record %d: got %.30q", next, e.Payload)
		}
		next++
	}
	if strings.Contains(warnings.String(), "skipped") {
		t.Fatalf("the follower skipped records that were only being written:\n%s", warnings.String())
	}
}
