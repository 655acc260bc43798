package server_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chat/internal/cluster"
	"chat/internal/testutil"
	"chat/server"
	"chat/wire"
)

// Followers snapshot the state as the log grows; a server that restarts
// loads the newest snapshot and replays only the log after it, and ends up
// with exactly the state of the others.
func TestRestartFromSnapshot(t *testing.T) {
	logs := &testutil.Buffer{}
	c := cluster.Start(t, cluster.Options{Servers: 2, Log: logs, Tune: func(cfg *server.Config) {
		cfg.SnapshotEvery = 20
		cfg.PostRate = 1e6
	}})
	c.WaitLeader(10 * time.Second)
	ana := newRaw(t, c.Frontend)
	ana.signIn("ana", "secret")
	mustOK(t, ana.do(wire.Create, wire.CreateRequest{Channel: "general"}), nil)
	for i := range 100 {
		mustOK(t, ana.do(wire.Post, wire.PostRequest{Channel: "general", Text: fmt.Sprint("m", i)}), nil)
	}
	snaps, _ := filepath.Glob(filepath.Join(c.Dir, "snapshots", "*"))
	if len(snaps) == 0 {
		t.Fatalf("no snapshot after 100 posts with SnapshotEvery=20; data dir: %v", ls(c.Dir))
	}
	var st wire.StatusReply
	mustOK(t, ana.do(wire.Status, nil), &st)
	follower := 0
	for _, s := range st.Servers {
		if s.Role == wire.RoleFollower {
			follower = s.ID
		}
	}
	if follower == 0 {
		t.Fatalf("no follower: %+v", st)
	}
	c.Kill(follower)
	c.StartServer(follower)
	deadline := time.Now().Add(10 * time.Second)
	for {
		mustOK(t, ana.do(wire.Status, nil), &st)
		caughtUp := false
		for _, s := range st.Servers {
			if s.ID == follower && s.Role == wire.RoleFollower && s.Index == st.Index {
				caughtUp = true
			}
		}
		if caughtUp {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted follower did not catch up: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	restored := ""
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "state restored") && strings.Contains(line, fmt.Sprintf("id=%d", follower)) {
			restored = line
		}
	}
	if restored == "" || strings.Contains(restored, "snapshot_index=0 ") {
		t.Fatalf("the restart did not start from a snapshot: %q", restored)
	}
	// The restarted follower, made leader, serves the same history.
	c.Kill(3 - follower)
	var h wire.HistoryReply
	mustOK(t, ana.do(wire.History, wire.HistoryRequest{Channel: "general", Limit: 500}), &h)
	if len(h.Messages) != 100 || h.Seq != 100 || h.Messages[99].Text != "m99" {
		t.Fatalf("history from the restored server: %d messages, seq %d", len(h.Messages), h.Seq)
	}
	for i, m := range h.Messages {
		if m.Seq != uint64(i+1) || m.Text != fmt.Sprint("m", i) {
			t.Fatalf("message %d: %+v", i, m)
		}
	}
}

func ls(dir string) []string {
	var out []string
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		out = append(out, p)
		return nil
	})
	return out
}
