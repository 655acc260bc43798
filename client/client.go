// Package client is the chat client library: requests with Lazy Pirate
// retries, subscriptions, and gap-free, exactly-once, in-order delivery of
// channel and direct messages. It draws nothing: the terminal UI
// (client/console), the bot and any later UI sit on top of it.
//
// Goroutines of a Client (all started by Dial, all waited for by Close):
//
//   - the SUB reader (zmqx.Inbox) and the dispatcher, which orders
//     publications per stream and never makes a request;
//   - the fetcher, which fills gaps and resyncs streams from history with
//     ordinary requests (so it waits its turn like any caller of Do);
//   - the emitter, which hands ordered events to Events();
//   - the pinger, which keeps a logged-in user marked online.
//
// Locks: c.mu guards the session and the streams and is never held while
// blocking on a socket or a channel; reqSem serializes requests (one in flight)
// and owns the DEALER; subMu serializes changes of the SUB's subscriptions.
package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/clock"
	"chat/internal/zmqx"
	"chat/wire"
)

// Defaults of Config.
const (
	DefaultBroker      = "tcp://localhost:5555"
	DefaultPubSub      = "tcp://localhost:5558"
	DefaultTimeout     = 2 * time.Second
	DefaultRetries     = 8
	DefaultResyncEvery = 5 * time.Second
	DefaultPingEvery   = 10 * time.Second
)

// Backoff between two tries of one request: doubling from backoffMin up to backoffMax.
const (
	backoffMin = 50 * time.Millisecond
	backoffMax = time.Second
)

// Bounds that keep a client that stops reading Events from growing without
// limit. What they hold back is fetched from history later, so nothing is lost.
const (
	maxQueued = 10000 // events delivered but not yet read from Events()
	maxHeld   = 1000  // publications of one stream waiting for a gap to be filled
)

// Config configures a Client. The zero value is usable: WithDefaults fills it.
type Config struct {
	Broker  string        // the broker's frontend (default tcp://localhost:5555)
	PubSub  string        // the pubsub's subscriber side (default tcp://localhost:5558)
	Timeout time.Duration // how long one try of a request waits for its reply (default 2s)
	Retries int           // tries per request, the first included (default 8)
	// Skew offsets this client's software clock from the OS clock (Clock()),
	// to demonstrate and test clock synchronization. The OS clock is never changed.
	Skew        time.Duration
	ResyncEvery time.Duration // how often subscribed streams are checked against history (default 5s)
	PingEvery   time.Duration // how often a logged-in client that is otherwise idle pings (default 10s)
	Logger      *slog.Logger  // default: discard
}

// WithDefaults returns cfg with every unset field set to its default.
func (cfg Config) WithDefaults() Config {
	if cfg.Broker == "" {
		cfg.Broker = DefaultBroker
	}
	if cfg.PubSub == "" {
		cfg.PubSub = DefaultPubSub
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Retries == 0 {
		cfg.Retries = DefaultRetries
	}
	if cfg.ResyncEvery == 0 {
		cfg.ResyncEvery = DefaultResyncEvery
	}
	if cfg.PingEvery == 0 {
		cfg.PingEvery = DefaultPingEvery
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg
}

// Validate reports the first field of cfg that can't work.
func (cfg Config) Validate() error {
	for _, ep := range []struct{ name, v string }{{"broker", cfg.Broker}, {"pubsub", cfg.PubSub}} {
		scheme, addr, ok := strings.Cut(ep.v, "://")
		if !ok || scheme == "" || addr == "" {
			return fmt.Errorf("client: %s endpoint %q: want the form tcp://HOST:PORT", ep.name, ep.v)
		}
	}
	switch {
	case cfg.Timeout < 0:
		return fmt.Errorf("client: timeout %s is negative", cfg.Timeout)
	case cfg.Retries < 1:
		return fmt.Errorf("client: retries %d: a request needs at least 1 try", cfg.Retries)
	case cfg.ResyncEvery < 0:
		return fmt.Errorf("client: resync interval %s is negative", cfg.ResyncEvery)
	case cfg.PingEvery < 0:
		return fmt.Errorf("client: ping interval %s is negative", cfg.PingEvery)
	}
	return nil
}

// ErrClosed is returned by requests made on (or interrupted by) a closed Client.
var ErrClosed = errors.New("client: closed")

// Why one try failed; UnreachableError.Last wraps one of these or the
// retryable *wire.Error of the last reply.
var (
	errNotConnected = errors.New("could not connect to the broker")
	errNoReply      = errors.New("no reply")
)

// UnreachableError is returned when a request got no usable reply in all its
// tries: no connection, no reply, or only retryable errors (no leader).
type UnreachableError struct {
	Service  string        // the request's service
	Endpoint string        // the broker
	Tries    int           // tries made
	Elapsed  time.Duration // from the first send to giving up
	Last     error         // what the last try ran into
}

func (e *UnreachableError) Error() string {
	took := e.Elapsed.Round(100 * time.Millisecond)
	var we *wire.Error
	switch {
	case errors.As(e.Last, &we):
		return fmt.Sprintf("%s: the chat servers at %s answered %q after %d tries (%s): try again in a moment",
			e.Service, e.Endpoint, we.Message, e.Tries, took)
	case errors.Is(e.Last, errNotConnected):
		return fmt.Sprintf("%s: could not connect to the chat broker at %s after %d tries (%s): is \"chat up\" running?",
			e.Service, e.Endpoint, e.Tries, took)
	default:
		return fmt.Sprintf("%s: no reply from the chat servers at %s after %d tries (%s): is \"chat up\" running?",
			e.Service, e.Endpoint, e.Tries, took)
	}
}

// Unwrap returns the last try's failure (a *wire.Error when the servers
// answered with a retryable code).
func (e *UnreachableError) Unwrap() error { return e.Last }

// Client talks to the chat system. Its methods are safe for concurrent use;
// requests are serialized (one in flight).
type Client struct {
	cfg    Config
	log    *slog.Logger
	id     string
	ctx    context.Context // ends at Close
	cancel context.CancelFunc

	lamport clock.Lamport
	offset  atomic.Int64 // time.Duration estimated by Time
	lastReq atomic.Int64 // unix nanoseconds of the last request sent

	// The request path, owned by whoever holds reqSem. Close also reads
	// dealer, under dealerMu, to unblock a request stuck in a write.
	reqSem   chan struct{}
	reqN     uint64
	dealerMu sync.Mutex
	dealer   *dealer
	dealers  int

	mu    sync.Mutex
	user  string
	token string
	// The user's mailbox: where its direct messages are published, sealed
	// with this key (see wire.Publication).
	mailboxTopic string
	mailboxKey   []byte
	epoch        uint64
	streams      map[string]*stream // by topic
	pending      []Event
	queued       int // events appended and not yet read from Events()

	subMu sync.Mutex
	sub   zmq4.Socket
	subIn *zmqx.Inbox

	kick   chan struct{} // wakes the fetcher
	notify chan struct{} // wakes the emitter
	events chan Event

	group     zmqx.Group     // long-lived goroutines
	dials     sync.WaitGroup // goroutines blocked in zmq4's Dial
	closeOnce sync.Once
}

// Dial creates a Client for the system at cfg's endpoints. It does not wait
// for the servers: the SUB connects (and reconnects) in the background, and the
// first request reports when the broker can't be reached. ctx only bounds Dial
// itself; the Client lives until Close.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("client: dial: %w", err)
	}
	id, err := randomHex(8)
	if err != nil {
		return nil, fmt.Errorf("client: make a client id: %w", err)
	}
	root, cancel := context.WithCancel(context.Background())
	c := &Client{
		cfg:     cfg,
		log:     cfg.Logger.With("client", id),
		id:      id,
		ctx:     root,
		cancel:  cancel,
		reqSem:  make(chan struct{}, 1),
		streams: make(map[string]*stream),
		kick:    make(chan struct{}, 1),
		notify:  make(chan struct{}, 1),
		events:  make(chan Event, 64),
	}
	c.sub = zmq4.NewSub(root, append(zmqx.Dialer(c.log), zmq4.WithID(zmq4.SocketIdentity(id+"-sub")))...)
	c.subIn = zmqx.NewInbox(root, c.sub, 256)
	c.dials.Go(func() {
		if err := c.sub.Dial(zmqx.Endpoint(cfg.PubSub)); err != nil && root.Err() == nil {
			c.log.Error("subscriber gave up connecting", "pubsub", cfg.PubSub, "err", err)
		}
	})
	c.group.Go(c.dispatch)
	c.group.Go(c.fetchLoop)
	c.group.Go(c.emit)
	c.group.Go(c.pingLoop)
	c.log.Debug("client started", "broker", cfg.Broker, "pubsub", cfg.PubSub)
	return c, nil
}

// Close stops the Client: requests in flight return ErrClosed, Events is
// closed, every socket is closed and every goroutine waited for. It is
// idempotent and always returns nil.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.cancel()
		c.subMu.Lock()
		_ = c.sub.Close()
		c.subMu.Unlock()
		c.subIn.Wait()
		// A request in flight returns on the context's end, unless it is
		// stuck writing to a peer that does not read: closing its socket
		// ends that too.
		c.dealerMu.Lock()
		d := c.dealer
		c.dealerMu.Unlock()
		if d != nil {
			d.close()
		}
		c.group.Wait()
		c.reqSem <- struct{}{} // taken for good: every later request sees ErrClosed
		c.closeDealer()
		// A Dial stuck in a ZMTP handshake with a frozen peer can't be
		// interrupted (zmq4 sets no deadline); don't let it hold Close.
		if !waitTimeout(&c.dials, c.cfg.Timeout) {
			c.log.Warn("left a connection attempt behind: its peer accepted but never greeted")
		}
		c.log.Debug("client closed")
	})
	return nil
}

// ID returns the client id sent with every request.
func (c *Client) ID() string { return c.id }

// User returns the logged-in user, or "".
func (c *Client) User() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.user
}

// Epoch returns the highest leader epoch seen in a reply or publication.
func (c *Client) Epoch() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.epoch
}

// Lamport returns the client's Lamport clock.
func (c *Client) Lamport() uint64 { return c.lamport.Now() }

// Config returns the configuration in use, defaults applied.
func (c *Client) Config() Config { return c.cfg }

// Do sends one request and waits for its reply, decoding the reply's data
// into out (when out is not nil). It uses the Lazy Pirate pattern: a try that
// gets no reply within Config.Timeout closes the DEALER, opens a new one and
// resends the same request (same client id and request number, so the servers
// answer a retry with the original answer instead of applying it twice), with
// exponential backoff, up to Config.Retries tries; replies with a retryable
// code (no leader) are retried the same way. A refused request returns its
// *wire.Error; running out of tries returns an *UnreachableError.
func (c *Client) Do(ctx context.Context, service string, data any, out any) error {
	return c.do(ctx, service, data, out, c.cfg.Retries, nil)
}

// roundTrip is when the try that got the reply sent its request and received
// the reply (monotonic readings): the round trip without the wait for a turn.
type roundTrip struct{ sent, received time.Time }

// do is Do with a number of tries; rt, if not nil, receives the timing of the
// answered try.
func (c *Client) do(ctx context.Context, service string, data any, out any, tries int, rt *roundTrip) error {
	var raw json.RawMessage
	if data != nil {
		b, err := json.Marshal(data)
		if err != nil {
			return fmt.Errorf("%s: encode request: %w", service, err)
		}
		raw = b
	}
	select {
	case c.reqSem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", service, ctx.Err())
	case <-c.ctx.Done():
		return fmt.Errorf("%s: %w", service, ErrClosed)
	}
	defer func() { <-c.reqSem }()
	if c.ctx.Err() != nil {
		return fmt.Errorf("%s: %w", service, ErrClosed)
	}

	c.reqN++
	c.mu.Lock()
	token := c.token
	c.mu.Unlock()
	req := wire.Request{Service: service, Data: raw, Token: token, Client: c.id, Req: c.reqN, Lamport: c.lamport.Tick()}
	frame := wire.Encode(req)
	log := c.log.With("service", service, "req", req.Req)

	start := time.Now()
	backoff := backoffMin
	var last error
	for try := 1; try <= tries; try++ {
		if try > 1 {
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("%s: %w (the last try: %w)", service, ctx.Err(), last)
			case <-c.ctx.Done():
				t.Stop()
				return fmt.Errorf("%s: %w", service, ErrClosed)
			}
			backoff = min(2*backoff, backoffMax)
		}
		rep, err := c.try(ctx, frame, req.Req, rt)
		switch {
		case errors.Is(err, errNotConnected) && last != nil:
			// Keep the more telling failure of an earlier try: the broker
			// was reachable then (no reply), or there was no leader.
			log.Debug("request failed, retrying", "try", try, "err", err)
			continue
		case errors.Is(err, errNotConnected) || errors.Is(err, errNoReply):
			last = err
			log.Debug("request failed, retrying", "try", try, "err", err)
			continue
		case err != nil:
			return fmt.Errorf("%s: %w", service, err)
		}
		c.observe(rep.Lamport, rep.Epoch)
		if !rep.OK {
			e := rep.Error
			if e == nil {
				e = wire.Errorf(wire.CodeInternal, "the servers refused the request without saying why")
			}
			if wire.Retryable(e.Code) {
				last = e
				log.Debug("servers not ready, retrying", "try", try, "code", e.Code, "err", e.Message)
				continue
			}
			return e
		}
		if out != nil && len(rep.Data) > 0 {
			if err := json.Unmarshal(rep.Data, out); err != nil {
				return fmt.Errorf("%s: decode reply: %w", service, err)
			}
		}
		if try > 1 {
			log.Info("request succeeded after retries", "tries", try, "took", time.Since(start).Round(time.Millisecond))
		}
		return nil
	}
	err := &UnreachableError{Service: service, Endpoint: c.cfg.Broker, Tries: tries, Elapsed: time.Since(start), Last: last}
	log.Warn("request gave up", "tries", tries, "err", err)
	return err
}

// try sends frame once on the current DEALER (creating and connecting one if
// needed) and waits for the reply numbered req. On timeout it closes the
// DEALER, so the next try starts from a fresh connection and identity.
func (c *Client) try(ctx context.Context, frame []byte, req uint64, rt *roundTrip) (*wire.Reply, error) {
	timer := time.NewTimer(c.cfg.Timeout)
	defer timer.Stop()
	if c.dealer == nil {
		d := c.newDealer()
		c.dealerMu.Lock()
		c.dealer = d
		c.dealerMu.Unlock()
	}
	d := c.dealer
	select {
	case <-d.dialed:
		if d.err != nil {
			c.closeDealer()
			if c.ctx.Err() != nil {
				return nil, ErrClosed
			}
			return nil, fmt.Errorf("connect to the broker at %s: %w", c.cfg.Broker, d.err)
		}
	case <-timer.C:
		c.closeDealer()
		return nil, errNotConnected
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.ctx.Done():
		return nil, ErrClosed
	}
	sent := time.Now()
	c.lastReq.Store(sent.UnixNano())
	if err := d.sock.Send(zmq4.NewMsgFrom([]byte{}, frame)); err != nil {
		c.log.Debug("send failed", "err", err)
		c.closeDealer()
		return nil, errNoReply
	}
	for {
		select {
		case msg, ok := <-d.in.C:
			if !ok {
				c.closeDealer()
				return nil, errNoReply
			}
			rep, err := decodeReply(msg)
			if err != nil {
				c.log.Warn("dropped a malformed reply", "err", err)
				continue
			}
			// The broker's own replies (no leader) may not echo the number.
			if rep.Req != req && (rep.Req != 0 || rep.OK) {
				c.log.Debug("dropped a stale reply", "got", rep.Req, "want", req)
				continue
			}
			if rt != nil {
				rt.sent, rt.received = sent, time.Now()
			}
			return rep, nil
		case <-timer.C:
			c.closeDealer()
			return nil, errNoReply
		case <-ctx.Done():
			// Keep the DEALER: a late reply will be dropped by its number.
			return nil, ctx.Err()
		case <-c.ctx.Done():
			return nil, ErrClosed
		}
	}
}

func decodeReply(msg zmq4.Msg) (*wire.Reply, error) {
	frames := msg.Frames
	if len(frames) == 2 && len(frames[0]) == 0 {
		frames = frames[1:]
	}
	if len(frames) != 1 {
		return nil, fmt.Errorf("reply has %d frames, want [empty, reply]", len(msg.Frames))
	}
	var rep wire.Reply
	if err := json.Unmarshal(frames[0], &rep); err != nil {
		return nil, fmt.Errorf("reply is not JSON: %w", err)
	}
	return &rep, nil
}

// dealer is one DEALER socket of the request path, with its reader and the
// goroutine connecting it.
type dealer struct {
	sock   zmq4.Socket
	cancel context.CancelFunc
	in     *zmqx.Inbox
	dialed chan struct{} // closed when Dial has returned
	err    error         // Dial's error, set before dialed is closed
	once   sync.Once
}

// close closes the socket and waits for its reader; idempotent.
func (d *dealer) close() {
	d.once.Do(func() {
		d.cancel()
		_ = d.sock.Close()
		d.in.Wait()
	})
}

// newDealer opens a DEALER with a new identity and starts connecting it; the
// connection keeps retrying (and reconnects after a broker restart) until the
// socket is closed. Called with reqSem held.
func (c *Client) newDealer() *dealer {
	c.dealers++
	ctx, cancel := context.WithCancel(c.ctx)
	opts := append(zmqx.Dialer(c.log),
		zmq4.WithID(zmq4.SocketIdentity(fmt.Sprintf("%s-%d", c.id, c.dealers))),
		zmq4.WithDialerTimeout(c.cfg.Timeout),
		zmq4.WithTimeout(c.cfg.Timeout))
	sock := zmq4.NewDealer(ctx, opts...)
	d := &dealer{sock: sock, cancel: cancel, in: zmqx.NewInbox(ctx, sock, 16), dialed: make(chan struct{})}
	c.dials.Go(func() {
		defer close(d.dialed)
		d.err = sock.Dial(zmqx.Endpoint(c.cfg.Broker))
	})
	return d
}

// closeDealer closes the current DEALER, if any. Called with reqSem held.
func (c *Client) closeDealer() {
	c.dealerMu.Lock()
	d := c.dealer
	c.dealer = nil
	c.dealerMu.Unlock()
	if d != nil {
		d.close()
	}
}

// observe merges the Lamport time and epoch of a reply or publication. A
// higher epoch means a failover happened: publications of the last moments of
// the old leader may be lost with nothing after them to reveal the gap, so
// every stream is checked against history.
func (c *Client) observe(lamport, epoch uint64) {
	if lamport > 0 {
		c.lamport.Witness(lamport)
	}
	c.mu.Lock()
	grew := epoch > c.epoch
	if grew {
		if c.epoch > 0 {
			c.log.Info("leader epoch changed", "from", c.epoch, "to", epoch)
		}
		c.epoch = epoch
		c.markAllLocked()
	}
	c.mu.Unlock()
	if grew {
		c.wake()
	}
}

// pingLoop keeps a logged-in user marked online: the servers count recent
// requests, so a ping is only sent when nothing else was.
func (c *Client) pingLoop() {
	t := time.NewTicker(c.cfg.PingEvery)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		if c.User() == "" || time.Since(time.Unix(0, c.lastReq.Load())) < c.cfg.PingEvery/2 {
			continue
		}
		ctx, cancel := context.WithTimeout(c.ctx, c.cfg.PingEvery)
		// One try: the next tick is the retry, and a retrying ping would
		// hold up the user's own requests.
		err := c.do(ctx, wire.Ping, nil, nil, 1, nil)
		cancel()
		if err != nil && c.ctx.Err() == nil {
			c.log.Debug("ping failed", "err", err)
		}
	}
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// waitTimeout waits for wg at most d; it reports whether wg finished.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}
