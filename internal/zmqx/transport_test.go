package zmqx

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/internal/testutil"
)

var testSchemes atomic.Int64

// testScheme registers the hardened transport with lim under a new scheme
// and returns the function that maps "tcp://" endpoints to it.
func testScheme(t testing.TB, lim Limits) func(string) string {
	t.Helper()
	name := fmt.Sprintf("tcp+test%d", testSchemes.Add(1))
	if err := zmq4.RegisterTransport(name, hardened{lim: lim, stats: &stats}); err != nil {
		t.Fatal(err)
	}
	return func(ep string) string { return strings.Replace(ep, "tcp://", name+"://", 1) }
}

func plainTCP(ep string) string { return ep }

// echo runs a ROUTER listening on mapEP("tcp://127.0.0.1:0") that sends every
// message back, from one goroutine (as the broker's writer does). It
// returns the ROUTER's host:port.
func echo(t testing.TB, mapEP func(string) string, opts ...zmq4.Option) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := zmq4.NewRouter(ctx, append([]zmq4.Option{zmq4.WithLogger(StdLogger(nil))}, opts...)...)
	if err := r.Listen(mapEP("tcp://127.0.0.1:0")); err != nil {
		t.Fatal(err)
	}
	in := NewInbox(ctx, r, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range in.C {
			_ = r.Send(m)
		}
	}()
	t.Cleanup(func() {
		cancel()
		r.Close()
		<-done
	})
	return r.Addr().String()
}

// testDealer dials addr (host:port) through mapEP.
type testDealer struct {
	sock zmq4.Socket
	in   *Inbox
}

func dialDealer(t testing.TB, mapEP func(string) string, addr string, opts ...zmq4.Option) (*testDealer, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sock := zmq4.NewDealer(ctx, append([]zmq4.Option{zmq4.WithLogger(StdLogger(nil)), zmq4.WithTimeout(10 * time.Second)}, opts...)...)
	t.Cleanup(func() {
		cancel()
		sock.Close()
	})
	if err := sock.Dial(mapEP("tcp://" + addr)); err != nil {
		return nil, err
	}
	return &testDealer{sock: sock, in: NewInbox(ctx, sock, 16)}, nil
}

func mustDealer(t testing.TB, mapEP func(string) string, addr string, opts ...zmq4.Option) *testDealer {
	t.Helper()
	d, err := dialDealer(t, mapEP, addr, opts...)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	return d
}

// call sends frames and waits for them to come back.
func (d *testDealer) call(frames [][]byte, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	if err := d.sock.Send(zmq4.NewMsgFrom(frames...)); err != nil {
		return 0, err
	}
	select {
	case m, ok := <-d.in.C:
		if !ok {
			return 0, errors.New("socket closed")
		}
		if len(m.Frames) != len(frames) || !bytes.Equal(m.Frames[len(m.Frames)-1], frames[len(frames)-1]) {
			return 0, fmt.Errorf("got %d frames back, sent %d", len(m.Frames), len(frames))
		}
		return time.Since(start), nil
	case <-time.After(timeout):
		return 0, fmt.Errorf("no reply within %v", timeout)
	}
}

var waitFor = testutil.WaitFor

// rawPeer connects to addr and does a NULL handshake as socketType by hand.
func rawPeer(t testing.TB, addr, socketType string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(cat(zGreeting("NULL"), zReady(zProp("Socket-Type", socketType)))); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, greetingLen)); err != nil {
		t.Fatalf("read greeting: %v", err)
	}
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.Fatalf("read READY: %v", err)
	}
	if _, err := io.ReadFull(c, make([]byte, hdr[1])); err != nil {
		t.Fatalf("read READY: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	return c
}

// closedByPeer reports whether the other side closed c within timeout.
func closedByPeer(c net.Conn, timeout time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			var ne net.Error
			return !(errors.As(err, &ne) && ne.Timeout())
		}
	}
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name      string
		listen    func(string) string
		anonymous bool
	}{{"cluster", Endpoint, false}, {"clients", ClientEndpoint, true}} {
		t.Run(tc.name, func(t *testing.T) {
			// An echo that tells which identity it saw.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			r := zmq4.NewRouter(ctx, zmq4.WithLogger(StdLogger(nil)))
			defer r.Close()
			if err := r.Listen(tc.listen("tcp://127.0.0.1:0")); err != nil {
				t.Fatal(err)
			}
			in := NewInbox(ctx, r, 16)
			go func() {
				for m := range in.C {
					_ = r.Send(zmq4.NewMsgFrom(m.Frames[0], m.Frames[0], m.Frames[len(m.Frames)-1]))
				}
			}()
			d := mustDealer(t, Endpoint, r.Addr().String(), zmq4.WithID(zmq4.SocketIdentity("claimed")))
			for _, size := range []int{0, 1, 255, 256, 100 << 10} {
				payload := bytes.Repeat([]byte{'x'}, size)
				if err := d.sock.Send(zmq4.NewMsgFrom(payload)); err != nil {
					t.Fatal(err)
				}
				m := <-d.in.C
				if len(m.Frames) != 2 || !bytes.Equal(m.Frames[1], payload) {
					t.Fatalf("size %d: got %d frames back", size, len(m.Frames))
				}
				if anonymous := string(m.Frames[0]) != "claimed"; anonymous != tc.anonymous {
					t.Fatalf("the ROUTER saw identity %q; anonymous %v, want %v", m.Frames[0], anonymous, tc.anonymous)
				}
			}
		})
	}
}

func TestPubSub(t *testing.T) {
	// The guard lets a SUB's subscriptions through, and nothing else it sends.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pub := zmq4.NewPub(ctx, zmq4.WithLogger(StdLogger(nil)))
	defer pub.Close()
	if err := BindClients(pub, "tcp://127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	sub := zmq4.NewSub(ctx, zmq4.WithLogger(StdLogger(nil)))
	defer sub.Close()
	if err := sub.SetOption(zmq4.OptionSubscribe, "chan/"); err != nil {
		t.Fatal(err)
	}
	if err := sub.Dial(Endpoint("tcp://" + pub.Addr().String())); err != nil {
		t.Fatal(err)
	}
	in := NewInbox(ctx, sub, 16)
	got := func() (zmq4.Msg, bool) {
		select {
		case m := <-in.C:
			return m, true
		case <-time.After(50 * time.Millisecond):
			return zmq4.Msg{}, false
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_ = pub.Send(zmq4.NewMsgFrom([]byte("other/1"), []byte("no")))
		_ = pub.Send(zmq4.NewMsgFrom([]byte("chan/1"), []byte("yes")))
		if m, ok := got(); ok {
			if string(m.Frames[0]) != "chan/1" {
				t.Fatalf("got topic %q", m.Frames[0])
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no publication within 5s")
		}
	}
}

// The attacks that crash a process using zmq4 over plain TCP.
var crashes = []struct {
	name  string
	bytes []byte // after the greeting
	panic string
}{
	{"frame announcing 2^62 bytes", cat(zReady(zProp("Socket-Type", "DEALER")), zLongHeader(0, 1<<62)), "makeslice: len out of range"},
	{"metadata cut short", zReady([]byte{2, 'a', 'b'}), "slice bounds out of range"},
	{"no socket type", zReady(), "unknown socket-type"},
}

// TestZMQ4CrashChild is run by TestPlainTCPCrashes in a child process.
func TestZMQ4CrashChild(t *testing.T) {
	attack := os.Getenv("ZMQX_CRASH_ATTACK")
	if attack == "" {
		t.Skip("run by TestPlainTCPCrashes")
	}
	addr := echo(t, plainTCP)
	for _, a := range crashes {
		if a.name == attack {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			c.Write(cat(zGreeting("NULL"), a.bytes))
			time.Sleep(2 * time.Second)
			fmt.Println("survived")
		}
	}
}

func TestPlainTCPCrashes(t *testing.T) {
	// The measured fact the guard exists for: one peer's bytes kill the
	// whole process of a zmq4 v0.17.0 listener over plain "tcp".
	for _, a := range crashes {
		t.Run(a.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestZMQ4CrashChild$", "-test.v")
			cmd.Env = append(os.Environ(), "ZMQX_CRASH_ATTACK="+a.name)
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), a.panic) {
				t.Fatalf("zmq4 over plain tcp no longer panics with %q on %s (exit: %v): the guard may be obsolete\n%s", a.panic, a.name, err, out)
			}
		})
	}
}

func TestGuardedListenerSurvives(t *testing.T) {
	for _, a := range crashes {
		t.Run(a.name, func(t *testing.T) {
			addr := echo(t, ClientEndpoint)
			before := TransportStats().ProtocolErrors
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(cat(zGreeting("NULL"), a.bytes))
			if !closedByPeer(c, 5*time.Second) {
				t.Fatal("the connection is still open")
			}
			if TransportStats().ProtocolErrors == before {
				t.Error("no protocol error counted")
			}
			d := mustDealer(t, Endpoint, addr)
			if _, err := d.call([][]byte{[]byte("still up")}, 5*time.Second); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestPlainTCPListenerFreezes(t *testing.T) {
	// The measured fact: zmq4 handshakes inside its accept loop, so one
	// silent TCP peer keeps everyone else out.
	addr := echo(t, plainTCP)
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	dialed := make(chan error, 1)
	go func() {
		d, err := dialDealer(t, plainTCP, addr)
		if err == nil {
			_, err = d.call([][]byte{[]byte("hi")}, 5*time.Second)
		}
		dialed <- err
	}()
	select {
	case err := <-dialed:
		t.Fatalf("a client got through while a silent peer was handshaking (%v): zmq4 no longer freezes", err)
	case <-time.After(500 * time.Millisecond):
	}
	silent.Close()
	if err := <-dialed; err != nil {
		t.Fatalf("after the silent peer left: %v", err)
	}
}

func TestSilentPeersDoNotFreezeTheListener(t *testing.T) {
	// A handshake limit of a minute: it is not the limit that lets the
	// client in, it is the handshake done ahead of zmq4.
	mapEP := testScheme(t, Limits{Handshake: time.Minute, Stall: time.Minute, MaxFrame: 1 << 20, MaxMessage: 1 << 20, MaxQueued: 1 << 20})
	addr := echo(t, mapEP)
	var silent []net.Conn
	for i := range 5 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if i == 4 {
			c.Write(zGreeting("NULL")[:20]) // half a greeting
		}
		silent = append(silent, c)
	}
	d := mustDealer(t, Endpoint, addr)
	took, err := d.call([][]byte{[]byte("hi")}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a client connected and got its reply in %v while 5 peers sat silent", took)
	for i, c := range silent {
		if closedByPeer(c, 10*time.Millisecond) {
			t.Errorf("silent peer %d was cut off: it should still be waiting", i)
		}
	}
}

func TestHandshakeDeadline(t *testing.T) {
	mapEP := testScheme(t, Limits{Handshake: 200 * time.Millisecond, Stall: time.Second, MaxFrame: 1 << 20, MaxMessage: 1 << 20, MaxQueued: 1 << 20})
	addr := echo(t, mapEP)
	before := TransportStats().HandshakeTimeouts
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	start := time.Now()
	if !closedByPeer(silent, 5*time.Second) {
		t.Fatal("a silent peer was not cut off")
	}
	t.Logf("silent peer cut off after %v", time.Since(start).Round(time.Millisecond))
	if TransportStats().HandshakeTimeouts == before {
		t.Error("no handshake timeout counted")
	}
	// A handshake that is done stays up past the deadline.
	d := mustDealer(t, Endpoint, addr)
	time.Sleep(400 * time.Millisecond) // past the handshake deadline: what is checked is that nothing fires
	if _, err := d.call([][]byte{[]byte("hi")}, 5*time.Second); err != nil {
		t.Fatalf("after the handshake deadline: %v", err)
	}
}

// flood sends n messages of size bytes from a DEALER that never reads its
// replies (zmq4 stops reading the connection once 10 messages wait).
func flood(t testing.TB, mapEP func(string) string, addr string, n, size int) {
	bad := mustDealer(t, mapEP, addr, zmq4.WithTimeout(time.Minute))
	bad.in = nil // never read
	payload := bytes.Repeat([]byte{'b'}, size)
	go func() {
		for range n {
			if bad.sock.Send(zmq4.NewMsgFrom(payload)) != nil {
				return
			}
		}
	}()
}

func TestPlainTCPRouterStalls(t *testing.T) {
	// The measured fact: a ROUTER over plain tcp stops answering everyone
	// once one peer stops reading.
	addr := echo(t, plainTCP)
	good := mustDealer(t, plainTCP, addr)
	flood(t, plainTCP, addr, 1000, 64<<10)
	for i := range 200 {
		if _, err := good.call([][]byte{[]byte("good")}, time.Second); err != nil {
			t.Logf("the good client stalled after %d replies: %v", i, err)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the good client was never stalled: zmq4's ROUTER no longer blocks on one peer")
}

func TestStalledPeerIsCutOff(t *testing.T) {
	mapEP := testScheme(t, Limits{Handshake: time.Second, Stall: 300 * time.Millisecond, MaxFrame: 1 << 20, MaxMessage: 1 << 20, MaxQueued: 8 << 20})
	addr := echo(t, mapEP)
	good := mustDealer(t, Endpoint, addr)
	before := TransportStats().Stalled
	flood(t, Endpoint, addr, 1000, 64<<10)
	var worst time.Duration
	for i := 0; i < 300 || TransportStats().Stalled == before; i++ {
		took, err := good.call([][]byte{[]byte("good")}, 5*time.Second)
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		worst = max(worst, took)
		if i > 2000 {
			t.Fatal("the peer that does not read was never cut off")
		}
	}
	t.Logf("good client: worst round trip %v while a peer stopped reading; that peer was cut off", worst)
}

func TestLingerOnClose(t *testing.T) {
	// Writes only queue: what was sent before Close must still go out.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	frames := make(chan int, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			frames <- -1
			return
		}
		defer c.Close()
		c.Write(cat(zGreeting("NULL"), zReady(zProp("Socket-Type", "ROUTER"))))
		g := newGuard(ClusterLimits())
		data, _ := io.ReadAll(c)
		out, err := g.feed(nil, data)
		if err != nil {
			frames <- -2
			return
		}
		frames <- bytes.Count(out, append([]byte{flagLong}, binary.BigEndian.AppendUint64(nil, 10<<10)...))
	}()
	d := mustDealer(t, Endpoint, l.Addr().String())
	for range 100 {
		if err := d.sock.Send(zmq4.NewMsgFrom(bytes.Repeat([]byte{'x'}, 10<<10))); err != nil {
			t.Fatal(err)
		}
	}
	d.sock.Close()
	select {
	case n := <-frames:
		if n != 100 {
			t.Fatalf("the peer got %d of 100 frames", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the connection was not closed")
	}
}
