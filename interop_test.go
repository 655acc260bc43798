package main

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// python is the interpreter of Debian's python3-zmq.
const python = "/usr/bin/python3"

// TestPythonInterop runs testdata/interop.py, a client written from
// PROTOCOL.md alone on libzmq (pyzmq), against the real broker, pubsub and
// three servers: register, login, create, join, post, the publication,
// retries, history, a sealed direct message, and bad frames with their error
// codes. Then a Go client reads what the Python client stored.
func TestPythonInterop(t *testing.T) {
	if _, err := os.Stat(python); err != nil {
		t.Skipf("%s not found: install python3-zmq (apt-get install python3-zmq) to run the interop test", python)
	}
	if out, err := exec.Command(python, "-c", "import zmq").CombinedOutput(); err != nil {
		t.Skipf("python3-zmq missing (%v: %s): apt-get install python3-zmq to run the interop test", err, strings.TrimSpace(string(out)))
	}
	s := newSystem(t, systemOptions{})
	suffix := randomID(3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "testdata/interop.py", "--broker", s.Frontend, "--pubsub", s.Subscribe, "--suffix", suffix)
	out, err := cmd.CombinedOutput()
	t.Logf("interop.py:\n%s", out)
	if err != nil || !strings.Contains(string(out), "\nPASS\n") {
		t.Fatalf("interop.py failed: %v", err)
	}

	// What Python stored is what Go reads.
	c := s.client("client-go")
	c.ok("/login Py" + suffix + " py-secret-1")
	got := texts(t, c.ok("/history PyChan"+suffix+" 500"))
	if len(got) < 4 || got[0] != "hello from python 1" || !slices.Contains(got, "sent twice") || got[len(got)-1] != "still serving" {
		t.Errorf("history read by the Go client: %q", got)
	}
	n := 0
	for _, x := range got {
		if x == "sent twice" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("the retried post is stored %d times", n)
	}
	c.quit()
}
