// Package server is the `chat server` role: it holds the replicated state,
// and when it leads it answers requests, appends every change to the fenced
// log, applies it, replies and publishes.
//
// Every server applies the same log in the same order (followers tail it, so
// they are hot standbys); only the leader writes. The leader serializes every
// change through one goroutine (centralized mutual exclusion), batching the
// changes that arrive while the previous batch is being made durable (group
// commit). Nothing is acknowledged or published before it is durable and its
// epoch is still current.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/clock"
	"chat/election"
	"chat/internal/mailbox"
	"chat/internal/zmqx"
	"chat/store"
	"chat/store/filelog"
	"chat/wire"
)

// Config configures a server. Zero values take the defaults of DefaultConfig.
type Config struct {
	ID     int
	Broker string         // the broker's backend, to dial: tcp://localhost:5556
	PubSub string         // the pubsub's frontend, to dial: tcp://localhost:5557
	Listen string         // the peer endpoint to bind: tcp://*:5561
	Peers  map[int]string // every server's peer endpoint by id (its own may be included)
	Dir    string         // the shared data directory

	Secret        string        // JWT key; empty: a key file in Dir
	ClusterSecret string        // ZMTP PLAIN password to the broker, the pubsub and the peers; empty: none
	TokenTTL      time.Duration // session lifetime (24h)
	Heartbeat     time.Duration // to the broker (100ms)
	ClockSkew     time.Duration // start the software clock off by this much (demos, tests)
	ClockSync     time.Duration // how often the leader synchronizes the servers' clocks (2s); negative: never
	SnapshotEvery uint64        // followers snapshot every this many entries (100000)
	OnlineFor     time.Duration // a user is online this long after its last request (30s)
	PostRate      float64       // changes (posts, DMs, creates, joins, leaves) per second per user (20)
	PostBurst     int           // changes a user may make at once above the rate (50)
	Election      election.Config

	Logger *slog.Logger
}

// DefaultConfig returns the configuration of server id as `chat up` runs it.
func DefaultConfig(id int) Config {
	return Config{
		ID:     id,
		Broker: "tcp://localhost:5556",
		PubSub: "tcp://localhost:5557",
		Listen: fmt.Sprintf("tcp://*:%d", 5560+id),
		Peers: map[int]string{
			1: "tcp://localhost:5561", 2: "tcp://localhost:5562", 3: "tcp://localhost:5563",
		},
		Dir: ".chat/data",
	}
}

func (c *Config) defaults() {
	if c.TokenTTL == 0 {
		c.TokenTTL = 24 * time.Hour
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 100 * time.Millisecond
	}
	if c.SnapshotEvery == 0 {
		c.SnapshotEvery = 100000
	}
	if c.OnlineFor == 0 {
		c.OnlineFor = 30 * time.Second
	}
	if c.ClockSync == 0 {
		c.ClockSync = 2 * time.Second
	}
	if c.PostRate == 0 {
		c.PostRate = 20
	}
	if c.PostBurst == 0 {
		c.PostBurst = 50
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports a configuration that cannot work, in words for the operator.
func (c Config) Validate() error {
	switch {
	case c.ID <= 0:
		return errors.New("--id must be a positive number")
	case c.Broker == "":
		return errors.New("--broker is empty: give the broker's backend endpoint, e.g. tcp://localhost:5556")
	case c.PubSub == "":
		return errors.New("--pubsub is empty: give the pubsub's frontend endpoint, e.g. tcp://localhost:5557")
	case c.Listen == "":
		return errors.New("--listen is empty: give the endpoint to bind for peers, e.g. tcp://*:5561")
	case c.Dir == "":
		return errors.New("--data is empty: give the shared data directory")
	}
	if c.ClusterSecret != "" {
		return zmqx.CheckSecret(c.ClusterSecret)
	}
	return nil
}

// Server is one running `chat server`.
type Server struct {
	cfg    Config
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc

	lg      store.Log
	m       *store.Machine
	reader  store.LogReader
	pos     store.Position
	sinceSn uint64 // entries applied since the last snapshot

	tokens  *Tokens
	clock   *clock.Software
	lamport clock.Lamport
	elector *election.Elector
	peers   *peers

	backend *zmqx.Link // DEALER to the broker
	pub     *zmqx.Link // PUB to the pubsub

	// Published for probes and heartbeats (read by other goroutines).
	epoch atomic.Uint64 // the epoch this server leads, 0 when following
	index atomic.Uint64 // log entries applied
	known atomic.Uint64 // newest epoch seen in the log
	// leaving is set when the server shuts down: it no longer stands for election.
	leaving      atomic.Bool
	stopElection context.CancelFunc

	// Owned by the core goroutine.
	pending  []*pendingWrite // appended by this leader, waiting to be read back
	batch    []*pendingWrite // accepted writes not yet appended
	barrier  [2]uint64       // the last barrier read: leader id, epoch
	presence map[string]time.Time
	changes  *limiter  // per user
	signups  *limiter  // registrations per client
	logins   *failures // failed logins per user and per client
	pruned   time.Time
	results  chan func() // work finished elsewhere, to run on the core goroutine
	jobs     chan func() // slow work (password hashing) for the workers

	group     zmqx.Group
	closeOnce sync.Once
}

// pendingWrite is a request whose command was appended and awaits its result.
type pendingWrite struct {
	req   *wire.Request
	ident []byte // client identity for the reply
	cmd   *store.Command
	done  func(store.Result) // builds the reply data from the result; nil: the result's own
}

// Listen opens the data directory, restores the state, binds the peer port
// and connects to the broker and the pubsub. Errors surface here, before the
// server says it is ready.
func Listen(ctx context.Context, cfg Config) (*Server, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("role", "server", "id", cfg.ID)
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create data directory %s: %w", cfg.Dir, err)
	}
	keys, err := LoadKeys(cfg.Secret, cfg.Dir)
	if err != nil {
		return nil, err
	}
	tokens, err := NewTokens(keys, cfg.TokenTTL)
	if err != nil {
		return nil, err
	}
	lg, err := filelog.Open(cfg.Dir, log)
	if err != nil {
		return nil, fmt.Errorf("open log in %s: %w", cfg.Dir, err)
	}
	// The server's own lifetime ends with Close (or the end of Serve), not
	// with ctx: cancelling Serve's context must leave it time to hand over.
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Server{
		cfg: cfg, log: log, ctx: ctx, cancel: cancel,
		lg: lg, tokens: tokens,
		clock:    clock.NewSoftware(cfg.ClockSkew, nil),
		presence: map[string]time.Time{},
		changes:  newLimiter(cfg.PostRate, cfg.PostBurst),
		signups:  newLimiter(1, 10),
		logins:   newFailures(),
		results:  make(chan func(), 256),
		jobs:     make(chan func(), 64),
	}
	fail := func(err error) (*Server, error) {
		cancel()
		lg.Close()
		return nil, err
	}
	if err := s.restore(); err != nil {
		return fail(err)
	}
	peerIDs := []int{}
	for id := range cfg.Peers {
		if id != cfg.ID {
			peerIDs = append(peerIDs, id)
		}
	}
	s.peers, err = listenPeers(ctx, cfg.ID, cfg.Listen, cfg.Peers, cfg.ClusterSecret, log)
	if err != nil {
		return fail(err)
	}
	s.peers.answer = s.peerState
	s.peers.adjust = s.adjustClock
	ecfg := cfg.Election
	ecfg.ID, ecfg.Peers, ecfg.Logger = cfg.ID, peerIDs, log
	s.elector, err = election.New(ecfg, lg, lg, s.peers)
	if err != nil {
		s.peers.close()
		return fail(err)
	}
	if id, ep := s.lastBarrier(); ep != 0 {
		s.elector.Observe(id, ep)
	}
	return s, nil
}

// restore loads the newest snapshot and replays the log after it.
func (s *Server) restore() error {
	start := time.Now()
	s.m = store.New()
	pos, r, ok, err := s.lg.LatestSnapshot()
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	if ok {
		m, err := store.Restore(r)
		r.Close()
		if err != nil {
			s.log.Warn("snapshot unreadable: replaying the whole log", "err", err)
			pos = store.Position{}
		} else {
			s.m = m
		}
	}
	s.pos = pos
	s.index.Store(pos.Index)
	s.known.Store(pos.MaxEp)
	s.reader, err = s.lg.Reader(pos)
	if err != nil {
		return fmt.Errorf("open log reader: %w", err)
	}
	n, err := s.catchUp()
	if err != nil {
		return err
	}
	s.log.Info("state restored", "snapshot_index", pos.Index, "replayed", n, "index", s.m.Index(), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// catchUp applies every entry available in the log. It returns how many.
func (s *Server) catchUp() (int, error) {
	n := 0
	for {
		e, err := s.reader.Next()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("read log: %w", err)
		}
		s.applyEntry(e)
		n++
	}
}

// applyEntry applies one entry read from the log, replies to and publishes
// for this leader's own pending writes.
func (s *Server) applyEntry(e store.Entry) {
	s.pos = e.Pos
	s.index.Store(e.Index)
	if e.Kind == store.KindBarrier {
		if e.Epoch > s.known.Load() {
			s.known.Store(e.Epoch)
		}
		s.barrier = [2]uint64{uint64(e.Leader), e.Epoch}
		if s.elector != nil {
			s.elector.Observe(e.Leader, e.Epoch)
		}
		return
	}
	cmd, err := store.DecodeCommand(e.Payload)
	if err != nil {
		// Every server skips the same undecodable entry: state stays identical.
		s.log.Error("undecodable log entry skipped", "index", e.Index, "err", err)
		return
	}
	res := s.m.Apply(e.Index, cmd)
	s.lamport.Observe(cmd.Lamport)
	s.sinceSn++
	ep := s.epoch.Load()
	if ep == 0 || e.Epoch != ep || len(s.pending) == 0 {
		return
	}
	p := s.pending[0]
	s.pending = s.pending[1:]
	for _, ev := range res.Events {
		s.publish(ev, ep)
	}
	if p.done != nil {
		p.done(res)
		return
	}
	s.replyResult(p.ident, p.req, res, cmd.Lamport)
}

// publish sends one publication; a direct message goes sealed for the user
// whose mailbox it is published to, under that mailbox's secret topic.
func (s *Server) publish(ev store.Event, epoch uint64) {
	ev.Pub.Epoch = epoch
	topic, payload := ev.Topic, []byte(nil)
	if owner, ok := dmOwner(ev.Topic); ok {
		key := mailbox.Key(s.tokens.Primary(), owner)
		sealed, err := mailbox.Seal(key, wire.Encode(ev.Pub.Message))
		if err != nil {
			s.log.Error("seal direct message", "err", err)
			return
		}
		topic = mailbox.Topic(key)
		payload = wire.Encode(sealedPublication{Type: ev.Pub.Type, Epoch: epoch, Sealed: sealed})
	} else {
		payload = wire.Encode(ev.Pub)
	}
	if !s.pub.Send(zmq4.NewMsgFrom([]byte(topic), payload)) {
		s.log.Warn("publish queue full: publication dropped (subscribers recover it from history)", "topic", topic)
	}
}

// sealedPublication is a direct message as published: nothing readable but
// its type and epoch.
type sealedPublication struct {
	Type   string `json:"type"`
	Epoch  uint64 `json:"epoch"`
	Sealed string `json:"sealed"`
}

// dmOwner returns the user of a direct-message topic as the store names it.
func dmOwner(topic string) (string, bool) {
	rest, ok := strings.CutPrefix(topic, "dm/")
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, "/")
}

func (s *Server) lastBarrier() (int, uint64) {
	return int(s.barrier[0]), s.barrier[1]
}

// Serve runs the server until ctx ends or Close is called.
func (s *Server) Serve(ctx context.Context) error {
	s.backend = zmqx.NewLink(s.ctx, s.cfg.Broker, 4096, s.log, func(ctx context.Context) zmq4.Socket {
		ident := zmq4.SocketIdentity(fmt.Sprintf("server-%d-%x", s.cfg.ID, time.Now().UnixNano()))
		return zmq4.NewDealer(ctx, append(zmqx.Dialer(s.log), append(zmqx.Cluster(s.cfg.ClusterSecret), zmq4.WithID(ident))...)...)
	})
	// The PUB dials without zmq4's automatic reconnect, which can deadlock a
	// PUB when the pubsub restarts (its writer and its reaper take two locks
	// in opposite orders). A connected PUB knows the pubsub's subscription
	// to everything; when that is gone, the link replaces the socket.
	s.pub = zmqx.NewLink(s.ctx, s.cfg.PubSub, 4096, s.log, func(ctx context.Context) zmq4.Socket {
		pub := zmq4.NewPub(ctx, append(zmqx.Once(s.log), zmqx.Cluster(s.cfg.ClusterSecret)...)...)
		_ = pub.SetOption(zmq4.OptionHWM, 10000)
		return pub
	})
	s.pub.Healthy = func(sock zmq4.Socket) bool {
		t, ok := sock.(interface{ Topics() []string })
		return !ok || len(t.Topics()) > 0
	}
	s.peers.start(s.ctx, s.cfg.Peers)
	for range 2 {
		s.group.Go(s.worker)
	}
	s.group.Go(s.clockSync)
	ectx, stopElection := context.WithCancel(s.ctx)
	s.stopElection = stopElection
	s.group.Go(func() {
		if err := s.elector.Run(ectx); err != nil {
			s.log.Error("election", "err", err)
		}
	})
	s.log.Info("serving", "broker", s.cfg.Broker, "pubsub", s.cfg.PubSub, "peers", s.peers.Addr(), "index", s.m.Index())
	err := s.core(ctx, s.backend.C)
	s.Close()
	return err
}

// worker runs slow jobs off the core goroutine.
func (s *Server) worker() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case job := <-s.jobs:
			job()
		}
	}
}

// later runs f on the core goroutine.
func (s *Server) later(f func()) {
	select {
	case s.results <- f:
	case <-s.ctx.Done():
	}
}

// core is the one goroutine that owns the state machine.
func (s *Server) core(ctx context.Context, in <-chan zmq4.Msg) error {
	hb := time.NewTicker(s.cfg.Heartbeat)
	defer hb.Stop()
	tail := time.NewTicker(5 * time.Millisecond)
	defer tail.Stop()
	s.heartbeat()
	for {
		select {
		case <-ctx.Done():
			s.resign()
			return nil
		case <-s.ctx.Done():
			return nil
		case ev := <-s.elector.Events():
			s.onElection(ev)
		case f := <-s.results:
			f()
			s.flush()
		case <-hb.C:
			s.heartbeat()
			s.checkFence()
			if now := time.Now(); now.Sub(s.pruned) > 10*time.Second {
				s.pruned = now
				s.changes.prune(now)
				s.signups.prune(now)
				s.logins.prune(now)
			}
		case <-tail.C:
			if s.epoch.Load() == 0 {
				if _, err := s.catchUp(); err != nil {
					s.log.Error("tail log", "err", err)
				}
				s.maybeSnapshot()
			}
		case msg, ok := <-in:
			if !ok {
				return nil
			}
			s.handle(msg)
			// Group commit: take whatever else has arrived, then make the
			// whole batch durable with one write.
			for drained := false; !drained; {
				select {
				case msg, ok := <-in:
					if !ok {
						drained = true
						break
					}
					s.handle(msg)
					if len(s.batch) >= 256 {
						drained = true
					}
				default:
					drained = true
				}
			}
			s.flush()
		}
	}
}

// onElection reacts to a change of this server's own role.
func (s *Server) onElection(ev election.Event) {
	switch ev.Kind {
	case election.Elected:
		// Read everything up to and including this epoch's barrier before
		// serving: then this server's state holds every committed write.
		start := time.Now()
		if _, err := s.catchUp(); err != nil {
			s.log.Error("catch up before leading", "err", err)
			s.elector.StepDown()
			return
		}
		if _, ep := s.lastBarrier(); ep != ev.Epoch {
			s.log.Error("own barrier not found in the log: stepping down", "epoch", ev.Epoch, "last_barrier", ep)
			s.elector.StepDown()
			return
		}
		s.lamport.Observe(s.m.Lamport())
		s.epoch.Store(ev.Epoch)
		s.log.Info("leading", "epoch", ev.Epoch, "index", s.m.Index(), "took", time.Since(start).Round(time.Microsecond))
		s.heartbeat()
	case election.Deposed:
		s.stopLeading("deposed", ev.Epoch)
	}
}

// stopLeading turns this server into a follower; writes in flight get a
// retryable error (the client resends to the new leader, whose dedupe table
// returns the original answer if the write had been committed after all).
func (s *Server) stopLeading(why string, epoch uint64) {
	if s.epoch.Swap(0) == 0 {
		return
	}
	for _, p := range s.pending {
		s.reply(p.ident, wire.ErrorReply(p.req, wire.Errorf(wire.CodeNotLeader, "this server stopped leading; retry")))
	}
	s.pending = nil
	for _, w := range s.batch {
		s.reply(w.ident, wire.ErrorReply(w.req, wire.Errorf(wire.CodeNotLeader, "this server stopped leading; retry")))
	}
	s.batch = nil
	s.log.Warn("stopped leading", "why", why, "epoch", epoch)
	s.heartbeat()
}

// checkFence steps down as soon as a newer epoch exists, even with no write
// to discover it.
func (s *Server) checkFence() {
	ep := s.epoch.Load()
	if ep == 0 {
		return
	}
	cur, err := s.lg.Epoch()
	if err == nil && cur > ep {
		s.elector.StepDown()
		s.stopLeading("a newer epoch exists", ep)
	}
}

// resign hands leadership over on a clean shutdown: release the lock first so
// a follower takes over at once.
func (s *Server) resign() {
	// From now on peers take this server for gone: a follower that wins
	// the lock must not defer to it as a higher id.
	s.leaving.Store(true)
	s.stopElection() // no more campaigns; the elector lets go of the lock
	ep := s.epoch.Load()
	if ep != 0 {
		s.stopLeading("shutting down", ep)
	}
	s.elector.StepDown()
	if ep == 0 {
		return
	}
	// Stay a moment, answering probes with "leaving", until a successor has
	// claimed the next epoch: a candidate then learns at once that this
	// server is gone instead of waiting out a probe to a closed port.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if cur, err := s.lg.Epoch(); err != nil || cur > ep {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *Server) heartbeat() {
	role := wire.RoleFollower
	ep := s.epoch.Load()
	if ep != 0 {
		role = wire.RoleLeader
	} else {
		ep = s.known.Load()
	}
	hb := wire.Encode(wire.Heartbeat{Type: "heartbeat", ID: s.cfg.ID, Epoch: ep, Role: role})
	s.backend.Send(zmq4.NewMsg(hb))
}

func (s *Server) maybeSnapshot() {
	if s.sinceSn < s.cfg.SnapshotEvery {
		return
	}
	start := time.Now()
	if err := s.lg.SaveSnapshot(s.pos, s.m.Snapshot); err != nil {
		s.log.Warn("save snapshot", "err", err)
		return
	}
	s.sinceSn = 0
	s.log.Info("snapshot saved", "index", s.pos.Index, "took", time.Since(start).Round(time.Millisecond))
}

func (s *Server) peerState() peerState {
	if s.leaving.Load() {
		return peerState{ID: s.cfg.ID, Role: roleLeaving, Time: s.clock.Now()}
	}
	role := wire.RoleFollower
	ep := s.epoch.Load()
	if ep != 0 {
		role = wire.RoleLeader
	} else {
		ep = s.known.Load()
	}
	return peerState{ID: s.cfg.ID, Role: role, Epoch: ep, Index: s.index.Load(), Time: s.clock.Now(), Correction: int64(s.clock.Correction())}
}

func (s *Server) adjustClock(epoch uint64, delta time.Duration) {
	if epoch < s.known.Load() {
		return // from a deposed leader
	}
	s.clock.Adjust(delta)
}

// Close stops the server; it is idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		if s.backend != nil {
			s.backend.Close()
			s.pub.Close()
		}
		s.peers.close()
		s.group.Wait()
		s.reader.Close()
		s.lg.Close()
	})
	return nil
}

// PeerAddr returns the bound peer endpoint (useful with port 0).
func (s *Server) PeerAddr() string { return s.peers.Addr() }
