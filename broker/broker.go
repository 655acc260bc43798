// Package broker is the request-reply relay between chat clients and chat
// servers. It routes every request to the current leader only, and every
// reply back to the client that asked.
//
// Frames (see package wire for the whole protocol):
//
//	client  -> frontend  [empty, request JSON]                  (REQ, or DEALER with a delimiter)
//	broker  -> leader    [client identity, empty, request JSON] (servers use one DEALER each)
//	server  -> backend   [client identity, empty, reply JSON]   (forwarded as is, from any server)
//	server  -> backend   [heartbeat JSON]                       (one frame: a control message)
//	broker  -> client    [empty, reply JSON]
//
// A heartbeat is {"type":"heartbeat","id":N,"epoch":E,"role":"leader"|"follower"}.
// The leader is the server that, among those heard from within
// HeartbeatTimeout and claiming role "leader", has the highest epoch. The
// broker also fences: once it has routed to a leader of epoch E, it ignores
// leadership claims of an epoch below E (a paused old leader that wakes up
// gets no traffic back), unless no acceptable leader has shown up for
// fenceReset heartbeat timeouts (the servers were wiped and epochs restarted).
//
// While there is no leader, requests wait in a bounded queue for up to Wait
// and go to the next leader as soon as it announces itself, so a failover
// looks like a slow reply to clients. A request that waits too long, or finds
// the queue full, gets an "unavailable" error reply.
//
// The broker parses only heartbeats, and the "service" and "req" fields of a
// request it must answer itself; it never uses zmq4.NewProxy, which panics
// when a backend peer disconnects.
package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/internal/zmqx"
)

// Defaults of Config.
const (
	DefaultHeartbeatTimeout = time.Second
	DefaultWait             = 1500 * time.Millisecond
	DefaultMaxPending       = 10000
)

const (
	// fenceReset is how many heartbeat timeouts the broker goes without an
	// acceptable leader before it accepts a leader whose epoch is below the
	// highest it has routed to.
	fenceReset = 10
	// outbox is the capacity of each socket's send queue.
	outbox = 4096
	// inbox is the capacity of each socket's receive queue.
	inbox = 1024
)

// ErrClosed is returned by Serve after Close.
var ErrClosed = errors.New("broker: closed")

// Config configures a Broker. Every field but Frontend and Backend has a
// usable zero value.
type Config struct {
	// Frontend is where clients connect, e.g. "tcp://*:5555".
	Frontend string
	// Backend is where servers connect, e.g. "tcp://*:5556".
	Backend string
	// HeartbeatTimeout is how long a server may be silent before the broker
	// drops it (default 1s).
	HeartbeatTimeout time.Duration
	// Wait is how long a request may wait for a leader (default 1.5s).
	Wait time.Duration
	// MaxPending bounds the requests waiting for a leader (default 10000).
	MaxPending int
	// ClusterSecret, if set, is the ZMTP PLAIN password servers must present
	// on the backend (zmqx.Cluster); empty: anyone may connect there.
	ClusterSecret string
	// Logger receives the broker's events (default: discard). The caller
	// adds attributes such as role=broker.
	Logger *slog.Logger
}

func (c Config) withDefaults() (Config, error) {
	if c.Frontend == "" {
		return c, errors.New("broker: no frontend endpoint")
	}
	if c.Backend == "" {
		return c, errors.New("broker: no backend endpoint")
	}
	if c.HeartbeatTimeout < 0 || c.Wait < 0 || c.MaxPending < 0 {
		return c, errors.New("broker: heartbeat timeout, wait and max pending must not be negative")
	}
	if c.ClusterSecret != "" {
		if err := zmqx.CheckSecret(c.ClusterSecret); err != nil {
			return c, fmt.Errorf("broker: %w", err)
		}
	}
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if c.Wait == 0 {
		c.Wait = DefaultWait
	}
	if c.MaxPending == 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Server describes a chat server as the broker last heard of it.
type Server struct {
	ID     int       // the server's --id
	Epoch  uint64    // the epoch of its last heartbeat
	Role   string    // the role of its last heartbeat
	Leader bool      // whether the broker routes requests to it
	Seen   time.Time // when its last heartbeat arrived
}

// Broker routes client requests to the leading chat server. Make one with
// Listen, run it with Serve, stop it with Close.
type Broker struct {
	cfg  Config
	log  *slog.Logger
	tick time.Duration

	ctx    context.Context // the sockets' lifeline: cancelled by Close
	cancel context.CancelFunc
	front  zmq4.Socket // ROUTER, clients
	back   zmq4.Socket // ROUTER, servers
	faddr  string
	baddr  string

	closeOnce sync.Once
	serving   atomic.Bool
	served    chan struct{} // closed when Serve returns

	snapMu  sync.Mutex
	snap    []Server
	waiting atomic.Int64

	// Owned by the Serve loop.
	servers    map[string]*server // by DEALER identity
	leader     *server
	floor      uint64    // the highest epoch routed to
	leaderless time.Time // since when there has been no leader
	pending    []pending // FIFO; equal waits, so deadlines grow
	head       int       // pending[head:] are waiting
	toFront    chan zmq4.Msg
	toBack     chan zmq4.Msg
	dropped    int // replies dropped on a full frontend queue since the last tick
	// inflight holds, per client, the last request forwarded to a leader
	// and not answered yet, if it is idempotent (it carries "client" and
	// "req"). When the leader changes, these go to the new one at once: the
	// client need not wait out its timeout, and the servers' dedupe table
	// makes a request that the old leader had committed answer, not apply,
	// again.
	inflight map[string]inflight
}

type inflight struct {
	body   []byte
	leader *server
	sent   time.Time
}

// inflightTTL is how long an unanswered request is remembered for re-sending.
const inflightTTL = 30 * time.Second

type server struct {
	identity []byte
	id       int
	epoch    uint64
	role     string
	seen     time.Time
	fenced   uint64 // the stale epoch last warned about
}

type pending struct {
	client   []byte
	body     []byte
	deadline time.Time
}

// Listen binds the frontend and backend sockets. Cancelling ctx closes them.
func Listen(ctx context.Context, cfg Config) (*Broker, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	b := &Broker{
		cfg:        cfg,
		log:        cfg.Logger,
		tick:       tickFor(cfg),
		ctx:        sctx,
		cancel:     cancel,
		front:      zmq4.NewRouter(sctx, zmqx.Listener(cfg.Logger)...),
		back:       zmq4.NewRouter(sctx, append(zmqx.Listener(cfg.Logger), zmqx.Cluster(cfg.ClusterSecret)...)...),
		served:     make(chan struct{}),
		servers:    make(map[string]*server),
		inflight:   make(map[string]inflight),
		leaderless: time.Now(),
	}
	if err := zmqx.BindClients(b.front, cfg.Frontend); err != nil {
		b.shutdown()
		return nil, fmt.Errorf("broker: %w", err)
	}
	if err := zmqx.Bind(b.back, cfg.Backend); err != nil {
		b.shutdown()
		return nil, fmt.Errorf("broker: %w", err)
	}
	b.faddr = zmqx.BoundEndpoint(b.front, cfg.Frontend)
	b.baddr = zmqx.BoundEndpoint(b.back, cfg.Backend)
	return b, nil
}

// tickFor is the period of the expiry checks: a fraction of the shortest
// timeout, within 5-100 ms.
func tickFor(cfg Config) time.Duration {
	t := min(cfg.HeartbeatTimeout, cfg.Wait) / 5
	return min(max(t, 5*time.Millisecond), 100*time.Millisecond)
}

// Addr returns the endpoints the broker really listens on, with the ports
// the system chose for port 0.
func (b *Broker) Addr() (frontend, backend string) { return b.faddr, b.baddr }

// Leader returns the server the broker routes requests to, if any.
func (b *Broker) Leader() (id int, epoch uint64, ok bool) {
	b.snapMu.Lock()
	defer b.snapMu.Unlock()
	for _, s := range b.snap {
		if s.Leader {
			return s.ID, s.Epoch, true
		}
	}
	return 0, 0, false
}

// Servers returns the servers the broker hears from, by ID.
func (b *Broker) Servers() []Server {
	b.snapMu.Lock()
	defer b.snapMu.Unlock()
	return append([]Server(nil), b.snap...)
}

// Waiting returns how many requests are waiting for a leader.
func (b *Broker) Waiting() int { return int(b.waiting.Load()) }

// Close closes the sockets and waits for Serve to return. It is idempotent.
func (b *Broker) Close() error {
	b.shutdown()
	if b.serving.Load() {
		<-b.served
	}
	return nil
}

func (b *Broker) shutdown() {
	b.closeOnce.Do(func() {
		b.cancel()
		_ = b.front.Close()
		_ = b.back.Close()
	})
}

// Serve relays until ctx is done or Close is called, then closes the broker
// and returns nil. It may be called once.
func (b *Broker) Serve(ctx context.Context) error {
	if !b.serving.CompareAndSwap(false, true) {
		return errors.New("broker: Serve called twice")
	}
	defer close(b.served)
	if b.ctx.Err() != nil {
		return ErrClosed
	}
	b.log.Debug("broker serving", "frontend", b.faddr, "backend", b.baddr)

	b.toFront = make(chan zmq4.Msg, outbox)
	b.toBack = make(chan zmq4.Msg, outbox)
	var writers zmqx.Group
	writers.Go(func() { b.write(b.front, b.toFront, "frontend") })
	writers.Go(func() { b.write(b.back, b.toBack, "backend") })
	frontIn := zmqx.NewInbox(b.ctx, b.front, inbox)
	backIn := zmqx.NewInbox(b.ctx, b.back, inbox)
	defer func() {
		b.shutdown()
		frontIn.Wait()
		backIn.Wait()
		close(b.toFront)
		close(b.toBack)
		writers.Wait()
	}()

	ticker := time.NewTicker(b.tick)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-b.ctx.Done():
			return nil
		case msg, ok := <-frontIn.C:
			if !ok {
				frontIn = b.reopen(frontIn, b.front, "frontend")
				continue
			}
			b.onRequest(msg, time.Now())
		case msg, ok := <-backIn.C:
			if !ok {
				backIn = b.reopen(backIn, b.back, "backend")
				continue
			}
			b.onServer(msg, time.Now())
		case now := <-ticker.C:
			b.onTick(now)
		}
		b.waiting.Store(int64(len(b.pending) - b.head))
	}
}

// reopen replaces an inbox whose reader stopped while the broker still runs
// (zmqx.Inbox stops on any error that mentions "closed"). The old reader has
// returned, so the new one competes with no one.
func (b *Broker) reopen(in *zmqx.Inbox, sock zmq4.Socket, name string) *zmqx.Inbox {
	in.Wait()
	if b.ctx.Err() != nil {
		return in // the loop sees b.ctx.Done next
	}
	b.log.Warn("socket reader stopped; restarting it", "socket", name)
	return zmqx.NewInbox(b.ctx, sock, inbox)
}

// write is the one sender of sock. A ROUTER send blocks while a peer does
// not read; doing it here keeps heartbeats and expiry going meanwhile.
func (b *Broker) write(sock zmq4.Socket, c <-chan zmq4.Msg, name string) {
	for msg := range c {
		if b.ctx.Err() != nil {
			continue // drain
		}
		if err := sock.SendMulti(msg); err != nil && b.ctx.Err() == nil {
			b.log.Debug("send failed", "socket", name, "err", err)
		}
	}
}

// --- clients ---

func (b *Broker) onRequest(msg zmq4.Msg, now time.Time) {
	f := msg.Frames
	client := f[0]
	if len(client) == 0 {
		b.log.Debug("dropped a client message with no identity", "frames", len(f))
		return
	}
	switch {
	case len(f) < 2:
		b.log.Debug("dropped an empty client message")
		return
	case len(f) != 3 || len(f[1]) != 0:
		b.reply(client, errorReply(f[len(f)-1], "bad_request",
			"a request is two frames: an empty delimiter, then the request JSON"))
		return
	case len(f[2]) == 0:
		b.reply(client, errorReply(nil, "bad_request", "the request is empty"))
		return
	}
	body := f[2]
	if l := b.current(now); l != nil {
		b.forward(l, client, body)
		return
	}
	if len(b.pending)-b.head >= b.cfg.MaxPending {
		b.log.Debug("request queue full", "max", b.cfg.MaxPending)
		b.reply(client, unavailable(body))
		return
	}
	b.pending = append(b.pending, pending{client: client, body: body, deadline: now.Add(b.cfg.Wait)})
}

// forward sends a request to leader l.
func (b *Broker) forward(l *server, client, body []byte) {
	select {
	case b.toBack <- zmq4.NewMsgFrom(l.identity, client, nil, body):
		if idempotent(body) && (len(b.inflight) < b.cfg.MaxPending || b.inflight[string(client)].body != nil) {
			b.inflight[string(client)] = inflight{body: body, leader: l, sent: time.Now()}
		}
	default:
		b.log.Debug("backend send queue full", "leader", l.id)
		b.reply(client, unavailable(body))
	}
}

// reply sends [client, empty, body] to the frontend.
func (b *Broker) reply(client, body []byte) {
	b.sendFront(zmq4.NewMsgFrom(client, nil, body))
}

func (b *Broker) sendFront(msg zmq4.Msg) {
	select {
	case b.toFront <- msg:
	default:
		b.dropped++
	}
}

// --- servers ---

func (b *Broker) onServer(msg zmq4.Msg, now time.Time) {
	f := msg.Frames
	switch {
	case len(f) == 2:
		b.onControl(f[0], f[1], now)
	case len(f) >= 4 && len(f[1]) > 0 && len(f[2]) == 0:
		if in, ok := b.inflight[string(f[1])]; ok && in.leader != nil && string(in.leader.identity) == string(f[0]) {
			delete(b.inflight, string(f[1]))
		}
		b.sendFront(zmq4.NewMsgFrom(f[1:]...))
	default:
		b.log.Debug("dropped a server message of unknown shape", "frames", len(f))
	}
}

// heartbeat is the JSON of wire.Heartbeat.
type heartbeat struct {
	Type  string `json:"type"`
	ID    int    `json:"id"`
	Epoch uint64 `json:"epoch"`
	Role  string `json:"role"`
}

const roleLeader = "leader"

func (b *Broker) onControl(identity, body []byte, now time.Time) {
	var hb heartbeat
	if err := json.Unmarshal(body, &hb); err != nil || hb.Type != "heartbeat" {
		b.log.Debug("dropped a control message that is not a heartbeat", "bytes", len(body))
		return
	}
	s := b.servers[string(identity)]
	if s == nil {
		s = &server{identity: identity}
		b.servers[string(identity)] = s
		b.log.Info("server joined", "id", hb.ID, "role", hb.Role, "epoch", hb.Epoch)
	}
	s.id, s.epoch, s.role, s.seen = hb.ID, hb.Epoch, hb.Role, now
	b.elect(now)
	b.publish()
}

func (b *Broker) onTick(now time.Time) {
	b.expire(now)
	for b.head < len(b.pending) && !now.Before(b.pending[b.head].deadline) {
		p := b.pending[b.head]
		b.pending[b.head] = pending{}
		b.head++
		b.reply(p.client, unavailable(p.body))
	}
	b.compact()
	for client, in := range b.inflight {
		if now.Sub(in.sent) > inflightTTL {
			delete(b.inflight, client)
		}
	}
	if b.dropped > 0 {
		b.log.Warn("dropped replies: frontend send queue full", "count", b.dropped)
		b.dropped = 0
	}
}

func (b *Broker) compact() {
	switch {
	case b.head == len(b.pending):
		b.pending, b.head = b.pending[:0], 0
	case b.head > 1024 && b.head > len(b.pending)/2:
		n := copy(b.pending, b.pending[b.head:])
		clear(b.pending[n:])
		b.pending, b.head = b.pending[:n], 0
	}
}

// current returns the leader, first dropping it if it has gone silent since
// the last tick.
func (b *Broker) current(now time.Time) *server {
	if b.leader != nil && now.Sub(b.leader.seen) > b.cfg.HeartbeatTimeout {
		b.expire(now)
	}
	return b.leader
}

// expire drops the servers silent for longer than HeartbeatTimeout.
func (b *Broker) expire(now time.Time) {
	before, changed := b.leader, false
	for k, s := range b.servers {
		if silent := now.Sub(s.seen); silent > b.cfg.HeartbeatTimeout {
			delete(b.servers, k)
			changed = true
			b.log.Info("server lost", "id", s.id, "role", s.role, "epoch", s.epoch, "silent", silent.Round(time.Millisecond))
		}
	}
	if changed || b.leader == nil { // with no leader, time may lift the fence
		b.elect(now)
	}
	if changed || b.leader != before {
		b.publish()
	}
}

// elect picks the leader among the live servers and, if it changed, sends it
// the waiting requests.
func (b *Broker) elect(now time.Time) {
	var best, stale *server
	for _, s := range b.servers {
		if s.role != roleLeader || now.Sub(s.seen) > b.cfg.HeartbeatTimeout {
			continue
		}
		if s.epoch < b.floor {
			if stale == nil || s.epoch > stale.epoch {
				stale = s
			}
			if s.fenced != s.epoch {
				s.fenced = s.epoch
				b.log.Warn("ignored a leader of a stale epoch", "id", s.id, "epoch", s.epoch, "fence", b.floor)
			}
			continue
		}
		if best == nil || better(s, best, b.leader) {
			best = s
		}
	}
	if best == nil && stale != nil && b.leader == nil &&
		now.Sub(b.leaderless) > fenceReset*b.cfg.HeartbeatTimeout {
		b.log.Warn("lowered the epoch fence: no leader of a newer epoch came", "fence", b.floor, "epoch", stale.epoch)
		b.floor = stale.epoch
		best = stale
	}
	if best == b.leader {
		return
	}
	old := b.leader
	b.leader = best
	if best == nil {
		b.leaderless = now
		b.log.Warn("no leader", "last", old.id, "epoch", old.epoch)
		return
	}
	b.floor = max(b.floor, best.epoch)
	b.log.Info("leader elected", "id", best.id, "epoch", best.epoch)
	b.flush(best)
	b.resend(best, now)
}

// resend forwards to the new leader l the requests still unanswered by a
// previous one.
func (b *Broker) resend(l *server, now time.Time) {
	n := 0
	for client, in := range b.inflight {
		if in.leader == l {
			continue
		}
		if now.Sub(in.sent) > inflightTTL {
			delete(b.inflight, client)
			continue
		}
		b.forward(l, []byte(client), in.body)
		n++
	}
	if n > 0 {
		b.log.Info("re-sent unanswered requests to the new leader", "count", n, "id", l.id)
	}
}

// idempotent reports whether a request carries a client id and a request
// number, so that the servers apply it at most once however often it is sent.
func idempotent(body []byte) bool {
	var env struct {
		Client string `json:"client"`
		Req    uint64 `json:"req"`
	}
	return json.Unmarshal(body, &env) == nil && env.Client != "" && env.Req != 0
}

// better reports whether s should lead rather than t: a higher epoch wins;
// in one epoch (which the election should never allow) the current leader
// stays, else the higher id wins.
func better(s, t, current *server) bool {
	switch {
	case s.epoch != t.epoch:
		return s.epoch > t.epoch
	case t == current:
		return false
	case s == current:
		return true
	default:
		return s.id > t.id
	}
}

// flush sends the waiting requests to leader l.
func (b *Broker) flush(l *server) {
	if n := len(b.pending) - b.head; n > 0 {
		b.log.Info("sending waiting requests to the leader", "count", n, "id", l.id)
	}
	for i := b.head; i < len(b.pending); i++ {
		b.forward(l, b.pending[i].client, b.pending[i].body)
		b.pending[i] = pending{}
	}
	b.pending, b.head = b.pending[:0], 0
}

// publish refreshes the snapshot that Leader and Servers read.
func (b *Broker) publish() {
	snap := make([]Server, 0, len(b.servers))
	for _, s := range b.servers {
		snap = append(snap, Server{ID: s.id, Epoch: s.epoch, Role: s.role, Leader: s == b.leader, Seen: s.seen})
	}
	sort.Slice(snap, func(i, j int) bool { return snap[i].ID < snap[j].ID })
	b.snapMu.Lock()
	b.snap = snap
	b.snapMu.Unlock()
}

// --- replies the broker makes itself ---

// envelope holds the fields of a request the broker echoes in an error reply.
type envelope struct {
	Service string `json:"service"`
	Req     uint64 `json:"req"`
}

// replyJSON matches wire.Reply for a failed reply.
type replyJSON struct {
	Service string     `json:"service"`
	OK      bool       `json:"ok"`
	Error   *errorJSON `json:"error,omitempty"`
	Req     uint64     `json:"req,omitempty"`
}

type errorJSON struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// errorReply builds a failed reply to request (which may be nil or not
// JSON: then the reply has no service and no req).
func errorReply(request []byte, code, message string) []byte {
	var env envelope
	if len(request) > 0 {
		_ = json.Unmarshal(request, &env) // keeps what it could read
	}
	b, err := json.Marshal(replyJSON{Service: env.Service, Req: env.Req, Error: &errorJSON{Code: code, Message: message}})
	if err != nil {
		panic("broker: encode error reply: " + err.Error()) // plain strings and numbers: can't happen
	}
	return b
}

func unavailable(request []byte) []byte {
	return errorReply(request, "unavailable", "no chat server is leading right now; retry in a moment")
}
