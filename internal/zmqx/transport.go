package zmqx

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/transport"
)

// The hardened TCP transport. zmq4 lets a program register a transport of
// its own (it refuses to replace "tcp"), so every role listens and dials
// through one of these schemes instead; Endpoint and ClientEndpoint map the
// user-facing "tcp://host:port" to them. Measured with zmq4 v0.17.0 over
// plain "tcp", each fixed here:
//
//   - The listener runs the ZMTP handshake inside its accept loop, with no
//     deadline: one TCP peer that connects and sends nothing froze every new
//     connection to that port for as long as it stayed. Here the listener
//     handshakes ahead of zmq4, one goroutine per connection: it sends zmq4's
//     greeting itself, and hands a connection to zmq4 only once the peer has
//     sent its whole greeting and its first command, so zmq4's accept loop
//     never waits on a peer (an unauthenticated one, with PLAIN: our PLAIN
//     server answers a HELLO at once). A connection whose handshake is not
//     done within Limits.Handshake is closed.
//   - A ROUTER holds one lock while it writes to any peer: one peer that
//     stops reading blocked the replies of every other peer (after ~100 x
//     64 KiB). Here a write never blocks: it queues the bytes for the
//     connection's own sender goroutine, which cuts the peer off when it
//     accepts nothing for Limits.Stall or when more than Limits.MaxQueued
//     bytes wait.
//   - A frame announcing 2^62 bytes, or a malformed handshake, crashed the
//     whole process (see guard.go). Here every byte a peer sends goes
//     through the ZMTP guard first.

// Limits are what one connection may do.
type Limits struct {
	// Handshake bounds the ZMTP handshake (greeting and security).
	Handshake time.Duration
	// Stall is how long a peer may accept no bytes while some wait for it.
	Stall time.Duration
	// MaxFrame and MaxMessage bound what the peer sends: one frame, and the
	// frames of one message (each frame counted with 64 bytes of overhead).
	MaxFrame, MaxMessage uint64
	// MaxQueued bounds the bytes waiting to be sent to the peer.
	MaxQueued int
	// Anonymous drops the identity a peer claims, so that a ROUTER gives
	// each connection a random one: no client can take another's identity
	// and receive its replies (zmq4 sends to every peer with that identity).
	Anonymous bool
}

// Schemes of the hardened transport.
const (
	// SchemeCluster is for the connections between the system's own roles,
	// and for every connection a role dials.
	SchemeCluster = "tcp+cluster"
	// SchemeClients is for the ports clients connect to: anyone may.
	SchemeClients = "tcp+clients"
)

// ClusterLimits are the limits of SchemeCluster. A reply may carry a whole
// history page (500 messages of up to 4000 bytes, escaped as JSON).
func ClusterLimits() Limits {
	return Limits{
		Handshake:  5 * time.Second,
		Stall:      5 * time.Second,
		MaxFrame:   64 << 20,
		MaxMessage: 64 << 20,
		MaxQueued:  256 << 20,
	}
}

// ClientLimits are the limits of SchemeClients: a request is at most 64 KiB.
func ClientLimits() Limits {
	return Limits{
		Handshake:  2 * time.Second,
		Stall:      5 * time.Second,
		MaxFrame:   1 << 20,
		MaxMessage: 1 << 20,
		MaxQueued:  32 << 20,
		Anonymous:  true,
	}
}

// maxPreparing bounds the connections of one listener still handshaking.
const maxPreparing = 1024

// Stats counts what the hardened transports did, since the process started.
type Stats struct {
	Accepted          uint64 // connections handed to zmq4 by a listener
	HandshakeTimeouts uint64 // connections closed for a handshake not done in time
	ProtocolErrors    uint64 // connections closed for breaking ZMTP or a limit
	Stalled           uint64 // connections closed for not reading (stall or queue limit)
	Pongs             uint64 // PINGs answered
	Rejected          uint64 // connections refused: too many handshaking at once
}

type counters struct {
	accepted, handshakeTimeouts, protocolErrors, stalled, pongs, rejected atomic.Uint64
}

// hardened is a registered transport.
type hardened struct {
	lim   Limits
	stats *counters
}

var (
	registerOnce sync.Once
	stats        counters // of both schemes: one process, one registry
)

func register() {
	registerOnce.Do(func() {
		for scheme, lim := range map[string]Limits{SchemeCluster: ClusterLimits(), SchemeClients: ClientLimits()} {
			if err := zmq4.RegisterTransport(scheme, hardened{lim: lim, stats: &stats}); err != nil {
				panic("zmqx: register transport " + scheme + ": " + err.Error())
			}
		}
	})
}

// TransportStats returns the counters of the hardened transports.
func TransportStats() Stats {
	return Stats{
		Accepted:          stats.accepted.Load(),
		HandshakeTimeouts: stats.handshakeTimeouts.Load(),
		ProtocolErrors:    stats.protocolErrors.Load(),
		Stalled:           stats.stalled.Load(),
		Pongs:             stats.pongs.Load(),
		Rejected:          stats.rejected.Load(),
	}
}

// Endpoint maps "tcp://host:port" to the hardened transport with
// ClusterLimits, for every socket that dials and every port only the
// system's roles connect to. Other endpoints come back unchanged.
func Endpoint(endpoint string) string { return mapScheme(endpoint, SchemeCluster) }

// ClientEndpoint maps "tcp://host:port" to the hardened transport with
// ClientLimits, for the ports clients connect to.
func ClientEndpoint(endpoint string) string { return mapScheme(endpoint, SchemeClients) }

func mapScheme(endpoint, scheme string) string {
	rest, ok := strings.CutPrefix(endpoint, "tcp://")
	if !ok {
		return endpoint
	}
	register()
	return scheme + "://" + rest
}

var tcp = transport.New("tcp")

func (h hardened) Addr(ep string) (string, error) { return tcp.Addr(ep) }

func (h hardened) Dial(ctx context.Context, d transport.Dialer, addr string) (net.Conn, error) {
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return newConn(raw, h.lim, h.stats), nil
}

func (h hardened) Listen(ctx context.Context, addr string) (net.Listener, error) {
	raw, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &listener{Listener: raw, lim: h.lim, stats: h.stats,
		ready: make(chan *conn), done: make(chan struct{}), ran: make(chan struct{}), preparing: map[*conn]bool{}}
	go l.run()
	return l, nil
}

// listener hands zmq4 only connections whose peer has sent its greeting and
// its first handshake command.
type listener struct {
	net.Listener
	lim   Limits
	stats *counters

	ready chan *conn
	done  chan struct{} // closed by Close
	ran   chan struct{} // closed when run returns
	once  sync.Once
	group Group // the prepare goroutines

	mu        sync.Mutex
	preparing map[*conn]bool
}

func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		l.stats.accepted.Add(1)
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *listener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.Listener.Close()
		<-l.ran
		l.mu.Lock()
		for c := range l.preparing {
			c.fail(net.ErrClosed)
		}
		l.mu.Unlock()
		l.group.Wait()
	})
	return err
}

func (l *listener) run() {
	defer close(l.ran)
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(5 * time.Millisecond) // EMFILE and the like: don't spin
			continue
		}
		c := newConn(raw, l.lim, l.stats)
		l.mu.Lock()
		if len(l.preparing) >= maxPreparing {
			l.mu.Unlock()
			l.stats.rejected.Add(1)
			c.fail(errors.New("too many connections handshaking"))
			continue
		}
		l.preparing[c] = true
		l.mu.Unlock()
		l.group.Go(func() { l.prepare(c) })
	}
}

// prepare runs the first half of the handshake for zmq4: it sends zmq4's
// greeting (the 11 bytes every zmq4 socket starts with, then the rest with
// the peer's mechanism: libzmq sends its full greeting only after it has
// read the other side's version), then waits for the peer's greeting and
// first command. The guard's output waits in the connection for zmq4 to read.
func (l *listener) prepare(c *conn) {
	defer func() {
		l.mu.Lock()
		delete(l.preparing, c)
		l.mu.Unlock()
	}()
	greeting := zmq4Greeting("")
	c.sendAhead(greeting[:11])
	for c.g.st == stGreeting && c.fill() {
	}
	if c.g.st != stGreeting {
		greeting = zmq4Greeting(c.g.mech)
		c.sendAhead(greeting[11:])
		for c.g.commands == 0 && c.fill() {
		}
	}
	if c.g.commands == 0 {
		c.Close()
		return
	}
	select {
	case l.ready <- c:
	case <-l.done:
		c.Close()
	}
}

// zmq4Greeting is the greeting zmq4 v0.17.0 sends (greeting.marshal): as-server
// is always 0.
func zmq4Greeting(mech string) []byte {
	g := make([]byte, greetingLen)
	g[0], g[9], g[10], g[11] = 0xFF, 0x7F, 3, 0
	copy(g[12:32], mech)
	return g
}

// conn is one guarded connection.
type conn struct {
	net.Conn
	lim   Limits
	stats *counters

	// Read side: one reader at a time (the listener's prepare, then zmq4's
	// handshake, then the socket's reader, each handing over to the next).
	g         *zmtpGuard
	rbuf      []byte
	rout      []byte // checked bytes not yet read
	roff      int
	rerr      error
	delivered uint64 // bytes returned by Read
	adopted   bool   // zmq4 finished its handshake and reads messages

	timer *time.Timer

	// Write side.
	wmu      sync.Mutex
	wcond    sync.Cond
	wbuf     []byte // queued by Write, taken by the sender
	spare    []byte
	inflight int    // bytes the sender is writing
	ahead    []byte // bytes sent for zmq4 before it wrote them (the listener's greeting)
	out      outTracker
	pongs    []byte // PONG frames waiting for the end of the message being written
	closing  bool
	failed   error // why the connection was cut off; the socket is closed
	sender   sync.WaitGroup
}

const (
	// readBuffer is what one connection reads ahead; a frame's body goes
	// straight into zmq4's buffer (see Read).
	readBuffer = 8 << 10
	writeChunk = 64 << 10
	// maxSpare is the largest write buffer a connection keeps for reuse.
	maxSpare = 64 << 10
)

var (
	errHandshakeTimeout = errors.New("zmtp handshake not done in time")
	errStalled          = errors.New("peer stopped reading")
	errQueueFull        = errors.New("peer too slow: send queue full")
	errGreeting         = errors.New("local greeting differs from the one sent ahead (security mechanisms differ)")
)

func newConn(raw net.Conn, lim Limits, st *counters) *conn {
	c := &conn{Conn: raw, lim: lim, stats: st, g: newGuard(lim), rbuf: make([]byte, readBuffer)}
	c.wcond.L = &c.wmu
	c.timer = time.AfterFunc(lim.Handshake, c.handshakeExpired)
	c.sender.Go(c.send)
	return c
}

// handshakeExpired cuts off a connection whose handshake is not done in time
// (zmq4 also leaves the connections whose handshake failed open: this closes
// them).
func (c *conn) handshakeExpired() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.failed == nil && !c.closing {
		c.stats.handshakeTimeouts.Add(1)
		c.failLocked(errHandshakeTimeout)
	}
}

func (c *conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// fill reads from the network once and runs what came through the guard.
// It returns false once reading has failed (the error is in c.rerr).
func (c *conn) fill() bool {
	if c.rerr != nil {
		return false
	}
	n, err := c.Conn.Read(c.rbuf)
	if n > 0 {
		out, gerr := c.g.feed(c.rout, c.rbuf[:n])
		if gerr != nil {
			c.stats.protocolErrors.Add(1)
			c.fail(gerr)
			c.rout, c.roff = c.rout[:0], 0
			c.rerr = c.opError("read", gerr)
			return false
		}
		c.rout = out
		if c.g.pingsSeen > 0 {
			c.queuePongs(c.g.pongs, c.g.pingsSeen)
			c.g.pongs, c.g.pingsSeen = c.g.pongs[:0], 0
		}
	}
	if err != nil {
		c.rerr = c.readError(err)
		return n > 0 && c.roff < len(c.rout)
	}
	return true
}

// readError is what Read reports for err: why the connection was cut off,
// if it was.
func (c *conn) readError(err error) error {
	c.wmu.Lock()
	why := c.failed
	c.wmu.Unlock()
	if why != nil {
		return c.opError("read", why)
	}
	return err
}

func (c *conn) Read(p []byte) (int, error) {
	if !c.adopted && c.g.ready && c.delivered >= c.g.readyEnd {
		// zmq4 has read the peer's last handshake command and comes back
		// for messages: the handshake is done.
		c.adopted = true
		c.timer.Stop()
	}
	if c.roff == len(c.rout) && c.rerr == nil && len(p) >= readBuffer && c.g.st == stBody {
		// The middle of a large frame: read it into p, without a copy.
		n, err := c.Conn.Read(p[:min(uint64(len(p)), c.g.left)])
		c.g.passBody(n)
		c.delivered += uint64(n)
		if err != nil {
			c.rerr = c.readError(err)
		}
		if n > 0 {
			return n, nil
		}
	}
	for c.roff == len(c.rout) {
		if c.rerr != nil {
			return 0, c.rerr
		}
		c.fill()
	}
	n := copy(p, c.rout[c.roff:])
	c.roff += n
	c.delivered += uint64(n)
	if c.roff == len(c.rout) {
		c.rout, c.roff = c.rout[:0], 0
	}
	return n, nil
}

// sendAhead queues bytes on zmq4's behalf; its own writes of them are dropped.
func (c *conn) sendAhead(b []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.failed != nil || c.closing {
		return
	}
	c.ahead = append(c.ahead, b...)
	c.wbuf = append(c.wbuf, b...)
	c.wcond.Signal()
}

func (c *conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	switch {
	case c.failed != nil:
		return 0, c.opError("write", c.failed)
	case c.closing:
		return 0, c.opError("write", net.ErrClosed)
	}
	n := len(p)
	if len(c.ahead) > 0 {
		k := min(len(p), len(c.ahead))
		if !bytes.Equal(p[:k], c.ahead[:k]) {
			c.failLocked(errGreeting)
			return 0, c.opError("write", errGreeting)
		}
		c.ahead = c.ahead[k:]
		c.out.feed(p[:k])
		p = p[k:]
	}
	if len(c.wbuf)+c.inflight+len(p) > c.lim.MaxQueued {
		c.stats.stalled.Add(1)
		c.failLocked(errQueueFull)
		return 0, c.opError("write", errQueueFull)
	}
	c.wbuf = append(c.wbuf, p...)
	c.out.feed(p)
	if len(c.pongs) > 0 && c.out.boundary {
		c.wbuf = append(c.wbuf, c.pongs...)
		c.pongs = c.pongs[:0]
	}
	c.wcond.Signal()
	return n, nil
}

// queuePongs sends PONG frames as soon as no message is half written.
func (c *conn) queuePongs(frames []byte, n int) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.failed != nil || c.closing {
		return
	}
	c.stats.pongs.Add(uint64(n))
	if c.out.boundary {
		c.wbuf = append(c.wbuf, frames...)
		c.wcond.Signal()
		return
	}
	c.pongs = append(c.pongs, frames...)
}

// send is the connection's one writer to the network.
func (c *conn) send() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for {
		for len(c.wbuf) == 0 && !c.closing && c.failed == nil {
			c.wcond.Wait()
		}
		if c.failed != nil {
			return
		}
		if len(c.wbuf) == 0 { // closing, and everything was sent
			c.Conn.Close()
			return
		}
		out := c.wbuf
		c.wbuf, c.spare = c.spare[:0], nil
		c.inflight = len(out)
		c.wmu.Unlock()
		err := c.writeAll(out)
		c.wmu.Lock()
		c.inflight = 0
		if cap(out) <= maxSpare {
			c.spare = out[:0]
		}
		if err != nil {
			c.failLocked(err)
			return
		}
	}
}

// writeAll writes b, cutting the peer off when one chunk makes no progress
// within Stall.
func (c *conn) writeAll(b []byte) error {
	for len(b) > 0 {
		k := min(len(b), writeChunk)
		if err := c.Conn.SetWriteDeadline(time.Now().Add(c.lim.Stall)); err != nil {
			return err
		}
		n, err := c.Conn.Write(b[:k])
		b = b[n:]
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.stats.stalled.Add(1)
				return errStalled
			}
			return err
		}
	}
	return nil
}

// fail cuts the connection off at once.
func (c *conn) fail(err error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.failLocked(err)
}

func (c *conn) failLocked(err error) {
	if c.failed != nil {
		return
	}
	c.failed = err
	c.Conn.Close()
	c.wcond.Broadcast()
}

// Close sends what is queued (bounded by Stall) and closes the connection.
// A reader blocked in Read returns at once.
func (c *conn) Close() error {
	c.timer.Stop()
	c.wmu.Lock()
	if c.closing || c.failed != nil {
		c.wmu.Unlock()
		return nil
	}
	c.closing = true
	pending := len(c.wbuf) > 0 || c.inflight > 0
	c.wcond.Broadcast()
	c.wmu.Unlock()
	if pending {
		// The sender closes the socket when done; wake the reader now.
		return c.Conn.SetReadDeadline(time.Now())
	}
	return c.Conn.Close()
}

var _ transport.Transport = hardened{}
