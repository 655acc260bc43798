package broker_test

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"chat/broker"
	"chat/wire"
)

const python = "/usr/bin/python3"

// needPyZMQ skips the test unless Debian's python3-zmq (libzmq) is installed.
func needPyZMQ(t *testing.T) {
	t.Helper()
	if err := exec.Command(python, "-c", "import zmq").Run(); err != nil {
		t.Skipf("skipping libzmq interop: %s -c 'import zmq' failed (%v); apt-get install python3-zmq", python, err)
	}
}

// TestLibzmqREQClient sends requests from a libzmq REQ socket through the
// broker to a Go leader and back.
func TestLibzmqREQClient(t *testing.T) {
	needPyZMQ(t)
	b := startBroker(t, broker.Config{HeartbeatTimeout: hb})
	front, back := b.Addr()
	newFakeServer(t, back, 1, wire.RoleLeader, 4)
	newFakeServer(t, back, 2, wire.RoleFollower, 4)
	waitLeader(t, b, 1, 4)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, "testdata/req_client.py", front, "5").CombinedOutput()
	if err != nil {
		t.Fatalf("req_client.py: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 5 {
		t.Fatalf("got %d replies, want 5:\n%s", len(lines), out)
	}
	for i, line := range lines {
		var rep wire.Reply
		if err := json.Unmarshal([]byte(line), &rep); err != nil {
			t.Fatalf("reply %q: %v", line, err)
		}
		if !rep.OK || rep.Req != uint64(i+1) || rep.Server != 1 || rep.Epoch != 4 {
			t.Errorf("reply %d: %+v: want ok from server 1 of epoch 4", i+1, rep)
		}
	}
}
