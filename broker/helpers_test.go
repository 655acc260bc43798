package broker_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/broker"
	"chat/internal/testutil"
	"chat/internal/zmqx"
	"chat/wire"
)

// testLogger collects the logs of a test and shows them if it fails.
func testLogger(t testing.TB) (*slog.Logger, *testutil.Buffer) { return testutil.Logger(t) }

// startBroker listens on random loopback ports and serves until the test ends.
func startBroker(t testing.TB, cfg broker.Config) *broker.Broker {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger, _ = testLogger(t)
	}
	cfg.Frontend, cfg.Backend = "tcp://127.0.0.1:0", "tcp://127.0.0.1:0"
	b, err := broker.Listen(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.Serve(context.Background()) }()
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if err := <-done; err != nil && !errors.Is(err, broker.ErrClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return b
}

// waitFor polls cond until it holds, failing the test after timeout.
var waitFor = testutil.WaitFor

func waitLeader(t testing.TB, b *broker.Broker, id int, epoch uint64) {
	t.Helper()
	waitFor(t, 5*time.Second, fmt.Sprintf("leader %d of epoch %d", id, epoch), func() bool {
		gid, gepoch, ok := b.Leader()
		return ok && gid == id && gepoch == epoch
	})
}

func waitNoLeader(t testing.TB, b *broker.Broker) {
	t.Helper()
	waitFor(t, 5*time.Second, "no leader", func() bool {
		_, _, ok := b.Leader()
		return !ok
	})
}

func uniqueID(prefix string) zmq4.SocketIdentity {
	var r [6]byte
	_, _ = rand.Read(r[:])
	return zmq4.SocketIdentity(prefix + "-" + hex.EncodeToString(r[:]))
}

// fakeServer is a chat server as the broker sees it: a DEALER that sends
// heartbeats and answers requests.
type fakeServer struct {
	t    testing.TB
	id   int
	sock zmq4.Socket
	in   *zmqx.Inbox

	mu     sync.Mutex
	role   string
	epoch  uint64
	beat   bool
	served int
	// client is the identity the broker gave the client of the last request.
	client []byte

	// handle makes the reply to a request body; nil: an OK wire.Reply
	// naming the server.
	handle func(body []byte) []byte

	stop chan struct{}
	wg   sync.WaitGroup
}

const beatEvery = 25 * time.Millisecond

func newFakeServer(t testing.TB, backend string, id int, role string, epoch uint64) *fakeServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &fakeServer{
		t: t, id: id, role: role, epoch: epoch, beat: true,
		sock: zmq4.NewDealer(ctx, zmq4.WithID(uniqueID(fmt.Sprintf("server%d", id))), zmq4.WithLogger(zmqx.StdLogger(nil))),
		stop: make(chan struct{}),
	}
	if err := s.sock.Dial(backend); err != nil {
		cancel()
		t.Fatalf("server %d: dial %s: %v", id, backend, err)
	}
	s.in = zmqx.NewInbox(ctx, s.sock, 256)
	s.wg.Add(2)
	go s.heartbeats()
	go s.serve()
	t.Cleanup(func() {
		s.kill()
		cancel()
		s.in.Wait()
		s.wg.Wait()
	})
	return s
}

func (s *fakeServer) heartbeats() {
	defer s.wg.Done()
	tick := time.NewTicker(beatEvery)
	defer tick.Stop()
	for {
		s.mu.Lock()
		hb := wire.Heartbeat{Type: "heartbeat", ID: s.id, Epoch: s.epoch, Role: s.role}
		beat := s.beat
		s.mu.Unlock()
		if beat {
			_ = s.sock.Send(zmq4.NewMsg(wire.Encode(hb)))
		}
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
	}
}

func (s *fakeServer) serve() {
	defer s.wg.Done()
	for msg := range s.in.C {
		f := msg.Frames
		if len(f) != 3 || len(f[1]) != 0 {
			s.t.Errorf("server %d: got a request of %d frames", s.id, len(f))
			continue
		}
		s.mu.Lock()
		s.served++
		s.client = f[0]
		epoch := s.epoch
		s.mu.Unlock()
		var reply []byte
		if s.handle != nil {
			if reply = s.handle(f[2]); reply == nil {
				continue // no answer
			}
		} else {
			req, werr := wire.DecodeRequest(f[2])
			var rep *wire.Reply
			if werr != nil {
				rep = wire.ErrorReply(nil, werr)
			} else {
				rep = wire.OKReply(req, nil)
			}
			rep.Server, rep.Epoch = s.id, epoch
			reply = wire.Encode(rep)
		}
		_ = s.sock.Send(zmq4.NewMsgFrom(f[0], nil, reply))
	}
}

func (s *fakeServer) set(role string, epoch uint64) {
	s.mu.Lock()
	s.role, s.epoch = role, epoch
	s.mu.Unlock()
}

// silence stops the heartbeats but keeps the connection.
func (s *fakeServer) silence() {
	s.mu.Lock()
	s.beat = false
	s.mu.Unlock()
}

func (s *fakeServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served
}

// kill closes the socket at once, as a crash would.
func (s *fakeServer) kill() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	_ = s.sock.Close()
}

// testClient is a DEALER client that matches replies by "req".
type testClient struct {
	t    testing.TB
	id   []byte
	sock zmq4.Socket
	in   *zmqx.Inbox
}

func newClient(t testing.TB, frontend string) *testClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	id := uniqueID("client")
	c := &testClient{t: t, id: []byte(id), sock: zmq4.NewDealer(ctx, zmq4.WithID(id), zmq4.WithLogger(zmqx.StdLogger(nil)))}
	if err := c.sock.Dial(frontend); err != nil {
		cancel()
		t.Fatalf("client: dial %s: %v", frontend, err)
	}
	c.in = zmqx.NewInbox(ctx, c.sock, 256)
	t.Cleanup(func() {
		cancel()
		_ = c.sock.Close()
		c.in.Wait()
	})
	return c
}

// send sends raw frames.
func (c *testClient) send(frames ...[]byte) {
	c.t.Helper()
	if err := c.sock.Send(zmq4.NewMsgFrom(frames...)); err != nil {
		c.t.Fatalf("client send: %v", err)
	}
}

// request sends a REQ-shaped request of service with number req.
func (c *testClient) request(service string, req uint64) {
	c.t.Helper()
	c.send(nil, wire.Encode(wire.Request{Service: service, Req: req}))
}

// recv waits for the next reply, failing the test after timeout.
func (c *testClient) recv(timeout time.Duration) *wire.Reply {
	c.t.Helper()
	rep, ok := c.tryRecv(timeout)
	if !ok {
		c.t.Fatalf("client: no reply within %v", timeout)
	}
	return rep
}

// tryRecv waits for the next reply for up to timeout.
func (c *testClient) tryRecv(timeout time.Duration) (*wire.Reply, bool) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case msg, ok := <-c.in.C:
		if !ok {
			return nil, false
		}
		f := msg.Frames
		if len(f) != 2 || len(f[0]) != 0 {
			c.t.Errorf("client: reply of %d frames, want [empty, reply]", len(f))
			return nil, false
		}
		var rep wire.Reply
		if err := json.Unmarshal(f[1], &rep); err != nil {
			c.t.Errorf("client: reply %q: %v", f[1], err)
			return nil, false
		}
		return &rep, true
	case <-timer.C:
		return nil, false
	}
}

// call sends a request and waits for its reply.
func (c *testClient) call(service string, req uint64) *wire.Reply {
	c.t.Helper()
	c.request(service, req)
	rep := c.recv(5 * time.Second)
	if rep.Req != req {
		c.t.Fatalf("reply to req %d, want %d: %+v", rep.Req, req, rep)
	}
	return rep
}

func zmqMsg(frames ...[]byte) zmq4.Msg { return zmq4.NewMsgFrom(frames...) }
