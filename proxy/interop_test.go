package proxy_test

import (
	"context"
	"encoding/json"
	"os/exec"
	"testing"
	"time"
)

const python = "/usr/bin/python3"

// TestLibzmqPubSub publishes from a libzmq PUB into the proxy and receives on
// a libzmq SUB, which gets only its own prefix.
func TestLibzmqPubSub(t *testing.T) {
	if err := exec.Command(python, "-c", "import zmq").Run(); err != nil {
		t.Skipf("skipping libzmq interop: %s -c 'import zmq' failed (%v); apt-get install python3-zmq", python, err)
	}
	p, _ := startProxy(t, "", "")
	front, back := p.Addr()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, "testdata/pubsub.py", front, back).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("pubsub.py: %v\n%s%s", err, out, stderr)
	}
	var res struct {
		Count  int      `json:"count"`
		Topics []string `json:"topics"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("pubsub.py printed %q: %v", out, err)
	}
	if res.Count < 20 || len(res.Topics) != 1 || res.Topics[0] != "channel/ana/" {
		t.Fatalf("the libzmq subscriber of channel/ana/ got %d publications on %q, want 20+ on [channel/ana/]", res.Count, res.Topics)
	}
	if p.Relayed() == 0 {
		t.Error("Relayed() = 0")
	}
}
