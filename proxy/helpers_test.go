package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/internal/testutil"
	"chat/internal/zmqx"
	"chat/proxy"
)

// testLogger collects the logs of a test and shows them if it fails.
func testLogger(t testing.TB) *slog.Logger {
	log, _ := testutil.Logger(t)
	return log
}

// startProxy listens on frontend and backend (random loopback ports if
// empty) and serves until the test ends or the returned stop is called.
func startProxy(t testing.TB, frontend, backend string) (p *proxy.Proxy, stop func()) {
	t.Helper()
	if frontend == "" {
		frontend, backend = "tcp://127.0.0.1:0", "tcp://127.0.0.1:0"
	}
	p, err := proxy.Listen(context.Background(), proxy.Config{Frontend: frontend, Backend: backend, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(context.Background()) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			if err := p.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
			if err := <-done; err != nil && !errors.Is(err, proxy.ErrClosed) {
				t.Errorf("serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return p, stop
}

// waitFor polls cond until it holds, failing the test after timeout.
var waitFor = testutil.WaitFor

// endpoint is a socket with its reader, closed when the test ends.
type endpoint struct {
	t      testing.TB
	sock   zmq4.Socket
	in     *zmqx.Inbox // nil for a PUB
	cancel context.CancelFunc
	once   sync.Once
}

func (e *endpoint) close() {
	e.once.Do(func() {
		e.cancel()
		_ = e.sock.Close()
		if e.in != nil {
			e.in.Wait()
		}
	})
}

// newPub connects a zmq4 PUB to the proxy's frontend; reconnect makes it
// redial forever when the proxy goes away.
func newPub(t testing.TB, frontend string, reconnect bool) *endpoint {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	opts := []zmq4.Option{zmq4.WithLogger(zmqx.StdLogger(nil))}
	if reconnect {
		opts = zmqx.Dialer(nil)
	}
	e := &endpoint{t: t, sock: zmq4.NewPub(ctx, opts...), cancel: cancel}
	if err := e.sock.Dial(frontend); err != nil {
		cancel()
		t.Fatalf("pub: dial %s: %v", frontend, err)
	}
	t.Cleanup(e.close)
	return e
}

// newSub connects a zmq4 SUB to the proxy's backend with topics.
func newSub(t testing.TB, backend string, reconnect bool, topics ...string) *endpoint {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	opts := []zmq4.Option{zmq4.WithLogger(zmqx.StdLogger(nil))}
	if reconnect {
		opts = zmqx.Dialer(nil)
	}
	e := &endpoint{t: t, sock: zmq4.NewSub(ctx, opts...), cancel: cancel}
	for _, topic := range topics {
		if err := e.sock.SetOption(zmq4.OptionSubscribe, topic); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.sock.Dial(backend); err != nil {
		cancel()
		t.Fatalf("sub: dial %s: %v", backend, err)
	}
	e.in = zmqx.NewInbox(ctx, e.sock, 1024)
	t.Cleanup(e.close)
	return e
}

func (e *endpoint) publish(topic, payload string) {
	if err := e.sock.Send(zmq4.NewMsgFrom([]byte(topic), []byte(payload))); err != nil {
		e.t.Errorf("publish: %v", err)
	}
}

// next returns the next publication as topic and payload.
func (e *endpoint) next(timeout time.Duration) (topic, payload string, ok bool) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case msg, open := <-e.in.C:
		if !open {
			return "", "", false
		}
		if len(msg.Frames) != 2 {
			e.t.Errorf("publication of %d frames, want [topic, payload]", len(msg.Frames))
			return "", "", false
		}
		return string(msg.Frames[0]), string(msg.Frames[1]), true
	case <-timer.C:
		return "", "", false
	}
}

// sync publishes probes on topic until sub receives one (the subscription
// has reached every hop), then drains sub for probes already in flight.
func syncSub(t testing.TB, pub, sub *endpoint, topic string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no probe on %q reached the subscriber", topic)
		}
		pub.publish(topic, fmt.Sprintf("probe %d", i))
		if _, payload, ok := sub.next(20 * time.Millisecond); ok && strings.HasPrefix(payload, "probe") {
			break
		}
	}
	for {
		if _, _, ok := sub.next(50 * time.Millisecond); !ok {
			return
		}
	}
}
