package broker_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"chat/broker"
	"chat/wire"
)

// hb is the heartbeat timeout of most tests: long beside beatEvery, so a
// loaded machine does not drop a server by accident.
const hb = 500 * time.Millisecond

func TestListenErrors(t *testing.T) {
	b := startBroker(t, broker.Config{})
	front, back := b.Addr()
	if !strings.HasPrefix(front, "tcp://127.0.0.1:") || strings.HasSuffix(front, ":0") || front == back {
		t.Fatalf("Addr() = %q, %q: want real loopback endpoints", front, back)
	}
	_, err := broker.Listen(context.Background(), broker.Config{Frontend: front, Backend: "tcp://127.0.0.1:0"})
	want := "broker: listen " + front + ": address already in use"
	if err == nil || err.Error() != want {
		t.Fatalf("Listen on a used port: %v, want %q", err, want)
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("error %v is not EADDRINUSE", err)
	}
	if _, err := broker.Listen(context.Background(), broker.Config{Frontend: "tcp://127.0.0.1:0"}); err == nil {
		t.Error("Listen with no backend: no error")
	}
	if _, err := broker.Listen(context.Background(), broker.Config{Frontend: "bogus", Backend: "tcp://127.0.0.1:0"}); err == nil {
		t.Error("Listen on a bogus endpoint: no error")
	}
}

func TestServeAndClose(t *testing.T) {
	logger, _ := testLogger(t)
	b, err := broker.Listen(context.Background(), broker.Config{Frontend: "tcp://127.0.0.1:0", Backend: "tcp://127.0.0.1:0", Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Serve(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve after cancel: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := b.Serve(context.Background()); err == nil {
		t.Error("second Serve: no error")
	}

	b2, err := broker.Listen(context.Background(), broker.Config{Frontend: "tcp://127.0.0.1:0", Backend: "tcp://127.0.0.1:0", Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	_ = b2.Close()
	if err := b2.Serve(context.Background()); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Serve after Close: %v, want ErrClosed", err)
	}
}

func TestRequestsReachOnlyTheLeader(t *testing.T) {
	b := startBroker(t, broker.Config{HeartbeatTimeout: hb})
	front, back := b.Addr()
	leader := newFakeServer(t, back, 1, wire.RoleLeader, 3)
	follower := newFakeServer(t, back, 2, wire.RoleFollower, 3)
	waitLeader(t, b, 1, 3)
	waitFor(t, 5*time.Second, "two servers", func() bool { return len(b.Servers()) == 2 })

	c := newClient(t, front)
	for i := uint64(1); i <= 20; i++ {
		rep := c.call(wire.Ping, i)
		if !rep.OK || rep.Server != 1 || rep.Service != wire.Ping {
			t.Fatalf("reply %+v: want ok from server 1", rep)
		}
	}
	if n := follower.count(); n != 0 {
		t.Errorf("the follower got %d requests", n)
	}
	if n := leader.count(); n != 20 {
		t.Errorf("the leader got %d requests, want 20", n)
	}
}

func TestHighestEpochWinsAndStaleLeadersAreFenced(t *testing.T) {
	b := startBroker(t, broker.Config{HeartbeatTimeout: hb, Wait: 100 * time.Millisecond})
	front, back := b.Addr()
	c := newClient(t, front)

	s1 := newFakeServer(t, back, 1, wire.RoleLeader, 1)
	waitLeader(t, b, 1, 1)
	if rep := c.call(wire.Ping, 1); rep.Server != 1 {
		t.Fatalf("reply from %d, want 1", rep.Server)
	}

	// A newer epoch takes over while server 1 still claims epoch 1.
	s2 := newFakeServer(t, back, 2, wire.RoleLeader, 2)
	waitLeader(t, b, 2, 2)
	// A late joiner claiming an old epoch doesn't steal traffic either.
	s3 := newFakeServer(t, back, 3, wire.RoleLeader, 1)
	waitFor(t, 5*time.Second, "three servers", func() bool { return len(b.Servers()) == 3 })
	before1 := s1.count()
	for i := uint64(2); i <= 21; i++ {
		if rep := c.call(wire.Ping, i); rep.Server != 2 || rep.Epoch != 2 {
			t.Fatalf("reply %+v: want server 2 of epoch 2", rep)
		}
	}
	if n := s1.count() - before1; n != 0 {
		t.Errorf("stale leader 1 got %d requests", n)
	}
	if n := s3.count(); n != 0 {
		t.Errorf("stale leader 3 got %d requests", n)
	}

	// Leader 2 dies: the epoch-1 claimants stay fenced, requests fail.
	s2.kill()
	waitNoLeader(t, b)
	rep := c.call(wire.Ping, 22)
	if rep.OK || rep.Error == nil || rep.Error.Code != wire.CodeUnavailable {
		t.Fatalf("reply %+v: want unavailable", rep)
	}

	// A newer epoch is accepted at once.
	s1.set(wire.RoleLeader, 3)
	waitLeader(t, b, 1, 3)
	if rep := c.call(wire.Ping, 23); rep.Server != 1 || rep.Epoch != 3 {
		t.Fatalf("reply %+v: want server 1 of epoch 3", rep)
	}
}

func TestFenceLiftsWhenEpochsRestart(t *testing.T) {
	// Servers wiped and restarted from epoch 1 must not lock the broker out
	// forever: after 10 heartbeat timeouts with no acceptable leader, it
	// takes the best stale one.
	const timeout = 100 * time.Millisecond
	b := startBroker(t, broker.Config{HeartbeatTimeout: timeout})
	_, back := b.Addr()
	s5 := newFakeServer(t, back, 1, wire.RoleLeader, 5)
	waitLeader(t, b, 1, 5)
	s5.kill()
	start := time.Now()
	newFakeServer(t, back, 2, wire.RoleLeader, 1)
	waitLeader(t, b, 2, 1)
	if elapsed := time.Since(start); elapsed < 10*timeout {
		t.Errorf("stale leader accepted after %v, want at least %v", elapsed, 10*timeout)
	}
}

func TestWaitingRequestsFlushToTheNextLeader(t *testing.T) {
	b := startBroker(t, broker.Config{HeartbeatTimeout: hb, Wait: 10 * time.Second})
	front, back := b.Addr()
	c := newClient(t, front)
	s1 := newFakeServer(t, back, 1, wire.RoleLeader, 1)
	waitLeader(t, b, 1, 1)
	if rep := c.call(wire.Ping, 1); rep.Server != 1 {
		t.Fatalf("reply from %d, want 1", rep.Server)
	}

	s1.silence() // a paused leader: connected, silent
	waitNoLeader(t, b)
	served := s1.count()
	for i := uint64(2); i <= 4; i++ {
		c.request(wire.Post, i)
	}
	waitFor(t, 5*time.Second, "3 waiting requests", func() bool { return b.Waiting() == 3 })
	if _, ok := c.tryRecv(10 * time.Millisecond); ok {
		t.Fatal("got a reply with no leader")
	}

	newFakeServer(t, back, 2, wire.RoleLeader, 2)
	for i := uint64(2); i <= 4; i++ {
		rep := c.recv(5 * time.Second)
		if !rep.OK || rep.Server != 2 || rep.Req != i {
			t.Fatalf("reply %+v: want ok from server 2 to req %d, in order", rep, i)
		}
	}
	if b.Waiting() != 0 {
		t.Errorf("%d requests still waiting", b.Waiting())
	}
	if n := s1.count() - served; n != 0 {
		t.Errorf("the silent leader got %d requests", n)
	}
}

func TestNoLeaderRepliesUnavailable(t *testing.T) {
	const wait = 200 * time.Millisecond
	b := startBroker(t, broker.Config{HeartbeatTimeout: hb, Wait: wait, MaxPending: 2})
	front, back := b.Addr()
	follower := newFakeServer(t, back, 1, wire.RoleFollower, 1)
	waitFor(t, 5*time.Second, "a follower", func() bool { return len(b.Servers()) == 1 })
	c := newClient(t, front)

	start := time.Now()
	c.request(wire.Post, 42)
	c.request(wire.Post, 43)
	waitFor(t, 5*time.Second, "2 waiting requests", func() bool { return b.Waiting() == 2 })
	c.request(wire.DM, 44) // the queue is full: refused at once
	for _, want := range []struct {
		req     uint64
		service string
	}{{44, wire.DM}, {42, wire.Post}, {43, wire.Post}} {
		rep := c.recv(5 * time.Second)
		if rep.OK || rep.Error == nil || rep.Error.Code != wire.CodeUnavailable || !wire.Retryable(rep.Error.Code) {
			t.Fatalf("reply %+v: want unavailable", rep)
		}
		if rep.Req != want.req || rep.Service != want.service {
			t.Fatalf("reply to %s %d, want %s %d", rep.Service, rep.Req, want.service, want.req)
		}
		if rep.Error.Message != "no chat server is leading right now; retry in a moment" {
			t.Errorf("message %q", rep.Error.Message)
		}
		if want.req == 42 && time.Since(start) < wait {
			t.Errorf("unavailable after %v, before Wait (%v)", time.Since(start), wait)
		}
	}
	if follower.count() != 0 {
		t.Errorf("the follower got %d requests", follower.count())
	}
}

func TestFollowerRepliesAreForwarded(t *testing.T) {
	// Any server's reply reaches the client: a follower that was asked
	// (before a failover) answers not_leader, and the client must see it.
	b := startBroker(t, broker.Config{HeartbeatTimeout: hb})
	front, back := b.Addr()
	leader := newFakeServer(t, back, 1, wire.RoleLeader, 1)
	waitLeader(t, b, 1, 1)
	f := newFakeServer(t, back, 2, wire.RoleFollower, 1)
	waitFor(t, 5*time.Second, "two servers", func() bool { return len(b.Servers()) == 2 })
	c := newClient(t, front)
	c.call(wire.Ping, 1) // the client is connected
	// The broker names clients itself (it ignores the identities they
	// claim): the leader learnt this one's name from the request.
	leader.mu.Lock()
	client := leader.client
	leader.mu.Unlock()
	// Send a reply from the follower's socket directly.
	_ = f.sock.Send(zmqMsg(client, nil,
		wire.Encode(wire.ErrorReply(&wire.Request{Service: wire.Post, Req: 9}, wire.Errorf(wire.CodeNotLeader, "not the leader")))))
	rep := c.recv(5 * time.Second)
	if rep.Req != 9 || rep.Error == nil || rep.Error.Code != wire.CodeNotLeader {
		t.Fatalf("reply %+v: want not_leader to req 9", rep)
	}
}

func TestServerCrashDoesNotStopTheBroker(t *testing.T) {
	b := startBroker(t, broker.Config{HeartbeatTimeout: hb, Wait: 2 * time.Second})
	front, back := b.Addr()
	s1 := newFakeServer(t, back, 1, wire.RoleLeader, 1)
	s2 := newFakeServer(t, back, 2, wire.RoleFollower, 1)
	waitLeader(t, b, 1, 1)

	// A TCP peer that sends garbage and hangs up mid-handshake.
	conn, err := net.Dial("tcp", strings.TrimPrefix(back, "tcp://"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = conn.Write([]byte("\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7fgarbage"))
	_ = conn.Close()

	// Clients keep sending while the leader crashes.
	var from [3]atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		c := newClient(t, front)
		wg.Go(func() {
			for req := uint64(1); ; req++ {
				select {
				case <-stop:
					return
				default:
				}
				c.request(wire.Ping, req)
				// A request sent to the dying leader gets no reply.
				if rep, ok := c.tryRecv(300 * time.Millisecond); ok && rep.OK && rep.Server >= 1 && rep.Server <= 2 {
					from[rep.Server].Add(1)
				}
			}
		})
	}
	t.Cleanup(func() { close(stop); wg.Wait() })

	waitFor(t, 5*time.Second, "traffic to server 1", func() bool { return from[1].Load() >= 20 })
	s1.kill()
	s2.set(wire.RoleLeader, 2)
	waitLeader(t, b, 2, 2)
	waitFor(t, 5*time.Second, "traffic to server 2", func() bool { return from[2].Load() >= 20 })
	waitFor(t, 5*time.Second, "server 1 dropped", func() bool { return len(b.Servers()) == 1 })
}

func TestMalformedMessages(t *testing.T) {
	b := startBroker(t, broker.Config{HeartbeatTimeout: hb})
	front, back := b.Addr()
	s := newFakeServer(t, back, 1, wire.RoleLeader, 1)
	waitLeader(t, b, 1, 1)
	c := newClient(t, front)

	// Servers sending nonsense are ignored.
	bad := newFakeServer(t, back, 7, wire.RoleFollower, 1)
	bad.silence()
	for _, frames := range [][][]byte{
		{[]byte("not json")},
		{[]byte(`{"type":"status","id":7,"epoch":99,"role":"leader"}`)},
		{[]byte(`{"type":"heartbeat","id":"seven"}`)},
		{[]byte("a"), []byte("b")},
		{[]byte("no-such-client"), nil, []byte("{}")},
		{nil, nil, []byte("{}")},
	} {
		if err := bad.sock.Send(zmqMsg(frames...)); err != nil {
			t.Fatal(err)
		}
	}

	cases := []struct {
		name   string
		frames [][]byte
		req    uint64
	}{
		{"no delimiter", [][]byte{[]byte(`{"service":"post","req":5}`)}, 5},
		{"non-empty delimiter", [][]byte{[]byte("x"), []byte(`{"service":"post","req":6}`)}, 6},
		{"too many frames", [][]byte{nil, []byte("a"), []byte(`{"service":"post","req":7}`)}, 7},
		{"delimiter only", [][]byte{nil}, 0},
		{"empty request", [][]byte{nil, nil}, 0},
	}
	for _, tc := range cases {
		c.send(tc.frames...)
		rep := c.recv(5 * time.Second)
		if rep.OK || rep.Error == nil || rep.Error.Code != wire.CodeBadRequest || rep.Req != tc.req {
			t.Errorf("%s: reply %+v: want bad_request to req %d", tc.name, rep, tc.req)
		}
	}
	if n := s.count(); n != 0 {
		t.Errorf("the leader got %d malformed requests", n)
	}

	// A request that is not JSON has the right frames: the server judges it.
	c.send(nil, []byte("not json"))
	rep := c.recv(5 * time.Second)
	if rep.Error == nil || rep.Error.Code != wire.CodeBadRequest || rep.Server != 1 {
		t.Errorf("reply %+v: want bad_request from server 1", rep)
	}

	// And well-formed requests keep working.
	if rep := c.call(wire.Ping, 100); !rep.OK || rep.Server != 1 {
		t.Fatalf("reply %+v: want ok from server 1", rep)
	}
	if _, epoch, _ := b.Leader(); epoch != 1 {
		t.Errorf("leader epoch %d after a bogus control message, want 1", epoch)
	}
}

// A request the leader took but never answered (it died, or was paused) goes
// to the next leader as soon as that one is elected, if it is idempotent
// (client id and request number): the client does not wait out its timeout.
// One without them is not re-sent: a retry of it could apply it twice.
func TestUnansweredRequestsGoToTheNewLeader(t *testing.T) {
	b := startBroker(t, broker.Config{HeartbeatTimeout: hb, Wait: 10 * time.Second})
	front, back := b.Addr()
	c := newClient(t, front)
	s1 := newFakeServer(t, back, 1, wire.RoleLeader, 1)
	s1.handle = func([]byte) []byte { return nil } // takes requests, never answers
	waitLeader(t, b, 1, 1)

	c.send(nil, wire.Encode(wire.Request{Service: wire.Post, Client: "c1", Req: 7}))
	bare := newClient(t, front)
	bare.send(nil, wire.Encode(wire.Request{Service: wire.Post, Req: 1}))
	waitFor(t, 5*time.Second, "the leader has both requests", func() bool { return s1.count() == 2 })

	s2 := newFakeServer(t, back, 2, wire.RoleLeader, 2)
	waitLeader(t, b, 2, 2)
	rep := c.recv(5 * time.Second)
	if !rep.OK || rep.Server != 2 || rep.Req != 7 {
		t.Fatalf("reply %+v: want ok from server 2 to req 7", rep)
	}
	if rep, ok := bare.tryRecv(300 * time.Millisecond); ok {
		t.Fatalf("a request without client id was re-sent: %+v", rep)
	}
	if n := s2.count(); n != 1 {
		t.Fatalf("new leader got %d requests, want 1", n)
	}
}
