// Package election decides which server leads, in which epoch.
//
// Bully priority over a lock file, with fencing epochs:
//
//   - The leader holds the leader lock (a file lock on the shared directory)
//     for as long as it leads. The kernel releases it the moment the leader
//     process dies, so a follower waiting on it learns of a crash at once.
//   - A paused leader keeps its lock, so followers also probe the leader over
//     the peer network; a leader that has not answered for LeaseTimeout is
//     presumed gone, lock or no lock.
//   - Either way the follower becomes a candidate and runs the Bully rule: it
//     probes every server with a higher id; if one answers, it defers to it.
//     Otherwise it claims epoch current+1. A claim is a compare-and-set: each
//     epoch has exactly one owner, and every write is fenced by its epoch, so
//     a deposed leader that wakes up can no longer commit anything.
//   - A healthy leader is never deposed by a returning higher id: only a
//     missing leader triggers an election.
//
// The package does no I/O of its own: the lock, the epochs and the peers are
// interfaces, implemented by the log backend and the server's peer network.
package election

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Epochs is the fencing-token store (store.Log satisfies it).
type Epochs interface {
	Epoch() (uint64, error)
	Claim(epoch uint64, leader int) error
}

// Lock is the leader lock (store.Log satisfies it). WaitLeaderFree returns
// the id of the last server to claim an epoch (0 if unknown): when the lock
// comes free, as a rule the leader that has just died or stepped down.
type Lock interface {
	WaitLeaderFree(ctx context.Context) (leader int, err error)
	ReleaseLeader()
}

// Prober asks a peer whether it is alive; it returns the peer's view.
type Prober interface {
	Probe(ctx context.Context, id int) (PeerState, bool)
}

// PeerState is what a probed server says of itself.
type PeerState struct {
	ID     int
	Leader bool
	Epoch  uint64
}

// lockHoldoff is how long a server that deferred to a higher id leaves the
// lock to it.
const lockHoldoff = 250 * time.Millisecond

// DefaultProbeTimeout is how long a probe may take by default: on loopback
// an answer takes well under a millisecond, so this is the time it takes to
// give up on a peer that is dead or paused.
const DefaultProbeTimeout = 150 * time.Millisecond

// Config tunes the elector. Zero durations take the defaults.
type Config struct {
	ID    int
	Peers []int // ids of the other servers

	ProbeInterval time.Duration // how often a follower probes the leader (100ms)
	ProbeTimeout  time.Duration // how long one probe may take (150ms)
	// SuspectTimeout is how long a peer probably dead may take to answer
	// (20ms): the last leader, when its lock came free.
	SuspectTimeout time.Duration
	LeaseTimeout   time.Duration // silence after which a leader is presumed gone (600ms)
	DeferTimeout   time.Duration // how long to wait for a higher id to take over (1s)

	Logger *slog.Logger
}

func (c *Config) defaults() {
	if c.ProbeInterval == 0 {
		c.ProbeInterval = 100 * time.Millisecond
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = DefaultProbeTimeout
	}
	if c.SuspectTimeout == 0 {
		c.SuspectTimeout = 20 * time.Millisecond
	}
	if c.LeaseTimeout == 0 {
		c.LeaseTimeout = 600 * time.Millisecond
	}
	if c.DeferTimeout == 0 {
		c.DeferTimeout = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	if c.ID <= 0 {
		return errors.New("election: server id must be a positive number")
	}
	if slices.Contains(c.Peers, c.ID) {
		return errors.New("election: the peer list must not contain the server's own id")
	}
	return nil
}

// Event kinds.
const (
	Elected = iota + 1 // this server now leads Epoch
	Deposed            // this server led and a newer epoch exists
)

// Event tells the server of a change of its own role.
type Event struct {
	Kind  int
	Epoch uint64
}

// Elector runs the election for one server.
type Elector struct {
	cfg    Config
	epochs Epochs
	lock   Lock
	peers  Prober
	events chan Event
	log    *slog.Logger

	mu       sync.Mutex
	leading  uint64 // epoch this server leads, 0 if it does not
	leaderID int    // the leader this server believes in (0 = none known)
	leaderEp uint64
	lastSeen time.Time // last time the believed leader answered (monotonic)
	locked   bool
	holdoff  time.Time // don't wait for the lock again before this (after deferring)

	lockFree chan int // the lock was acquired; the last leader's id
}

// New returns an elector; call Run.
func New(cfg Config, epochs Epochs, lock Lock, peers Prober) (*Elector, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Elector{
		cfg: cfg, epochs: epochs, lock: lock, peers: peers,
		events:   make(chan Event, 4),
		lockFree: make(chan int, 1),
		log:      cfg.Logger,
	}, nil
}

// Events delivers Elected and Deposed.
func (e *Elector) Events() <-chan Event { return e.events }

// Observe tells the elector which server leads which epoch, as learned from
// the log (a barrier) or a peer. It never lowers what is known.
func (e *Elector) Observe(leader int, epoch uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if epoch > e.leaderEp || (epoch == e.leaderEp && e.leaderID == 0) {
		e.leaderID, e.leaderEp = leader, epoch
		e.lastSeen = time.Now()
	}
}

// Leader returns the leader this server believes in and its epoch.
func (e *Elector) Leader() (id int, epoch uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leaderID, e.leaderEp
}

// Leading returns the epoch this server leads, or 0.
func (e *Elector) Leading() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leading
}

// StepDown gives up leadership (on SIGTERM, or when a write was fenced),
// releasing the lock so a follower takes over at once.
func (e *Elector) StepDown() {
	e.mu.Lock()
	was := e.leading
	e.leading = 0
	e.mu.Unlock()
	e.releaseLock()
	if was != 0 {
		e.log.Info("stepped down", "epoch", was)
	}
}

// Run loops until ctx ends.
func (e *Elector) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	// The lock waiter: whenever this server does not hold the lock, wait for
	// it. Getting it means its holder died or stepped down.
	wg.Go(func() {
		for ctx.Err() == nil {
			prev, err := e.lock.WaitLeaderFree(ctx)
			if err != nil {
				return
			}
			e.mu.Lock()
			e.locked = true
			e.mu.Unlock()
			select {
			case e.lockFree <- prev:
			case <-ctx.Done():
				return
			}
			// Hold the lock until released, then wait for it again (after a
			// hold-off when this server deferred to a higher id, so that one
			// gets the lock rather than this server again).
			for ctx.Err() == nil && e.holdsLock() {
				select {
				case <-ctx.Done():
				case <-time.After(e.cfg.ProbeInterval):
				}
			}
			e.mu.Lock()
			wait := time.Until(e.holdoff)
			e.mu.Unlock()
			if wait > 0 {
				select {
				case <-ctx.Done():
				case <-time.After(wait):
				}
			}
		}
	})

	tick := time.NewTicker(e.cfg.ProbeInterval)
	defer tick.Stop()
	e.mu.Lock()
	e.lastSeen = time.Now()
	e.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			e.releaseLock()
			return nil
		case prev := <-e.lockFree:
			e.onLockFree(ctx, prev)
		case <-tick.C:
			e.onTick(ctx)
		}
	}
}

func (e *Elector) holdsLock() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.locked
}

func (e *Elector) releaseLock() {
	e.mu.Lock()
	held := e.locked
	e.locked = false
	e.mu.Unlock()
	if held {
		e.lock.ReleaseLeader()
	}
}

// onLockFree: the previous lock holder died or stepped down. If this server
// already leads (it claimed while a paused leader held the lock), it just
// keeps the lock. Otherwise it campaigns; the campaign's probes find a healthy
// leader that does not hold the lock (it took over from a paused one), if
// there is one, and leave the lock to it.
func (e *Elector) onLockFree(ctx context.Context, prev int) {
	if e.Leading() != 0 {
		return
	}
	if prev == e.cfg.ID {
		prev = 0
	}
	e.campaign(ctx, prev)
}

func (e *Elector) onTick(ctx context.Context) {
	// The lock coming free says more, sooner, than any probe: see to it first.
	select {
	case prev := <-e.lockFree:
		e.onLockFree(ctx, prev)
		return
	default:
	}
	if ep := e.Leading(); ep != 0 {
		cur, err := e.epochs.Epoch()
		if err != nil {
			e.log.Warn("read epoch", "err", err)
			return
		}
		if cur > ep {
			e.mu.Lock()
			e.leading = 0
			e.mu.Unlock()
			e.releaseLock()
			e.log.Warn("deposed: a newer epoch exists", "epoch", ep, "newer", cur)
			e.emit(ctx, Event{Kind: Deposed, Epoch: ep})
		}
		return
	}
	id, _ := e.Leader()
	if id != 0 && id != e.cfg.ID {
		if st, ok := e.probe(ctx, id); ok && st.Leader {
			e.seen(st)
			return
		}
	}
	e.mu.Lock()
	silent := time.Since(e.lastSeen)
	e.mu.Unlock()
	if id == 0 || id == e.cfg.ID || silent >= e.cfg.LeaseTimeout {
		if id != 0 && id != e.cfg.ID {
			e.log.Info("leader silent: starting an election", "leader", id, "silent", silent.Round(time.Millisecond))
		}
		e.campaign(ctx, id) // the silent leader is the suspect
	}
}

// probe asks one peer, within ProbeTimeout.
func (e *Elector) probe(ctx context.Context, id int) (PeerState, bool) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.ProbeTimeout)
	defer cancel()
	return e.peers.Probe(ctx, id)
}

func (e *Elector) seen(st PeerState) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if st.Epoch >= e.leaderEp {
		e.leaderID, e.leaderEp = st.ID, st.Epoch
		e.lastSeen = time.Now()
	}
}

func (e *Elector) currentEpoch() uint64 {
	ep, err := e.epochs.Epoch()
	if err != nil {
		return 0
	}
	return ep
}

// campaign runs the Bully rule once. suspect is a peer that has probably
// just died or stepped down (the last leader, when this server got the
// lock): waiting out a probe of a dead process is the longest part of an
// election, so it gets SuspectTimeout to answer instead of ProbeTimeout. It
// is still asked: the hint can be wrong (a leader that took over from a
// paused one leads without the lock), and a live leader answers at once.
func (e *Elector) campaign(ctx context.Context, suspect int) {
	if ctx.Err() != nil {
		return
	}
	// Does any other live server already lead a current epoch (one we have
	// not heard of yet)? Does any higher id live?
	cur := e.currentEpoch()
	type answer struct {
		st PeerState
		ok bool
	}
	answers := make(chan answer, len(e.cfg.Peers))
	pctx, cancel := context.WithTimeout(ctx, e.cfg.ProbeTimeout)
	defer cancel()
	sctx, scancel := context.WithTimeout(pctx, e.cfg.SuspectTimeout)
	defer scancel()
	for _, p := range e.cfg.Peers {
		c := pctx
		if p == suspect {
			c = sctx
		}
		go func() {
			st, ok := e.peers.Probe(c, p)
			answers <- answer{st, ok}
		}()
	}
	higher := 0
	for range e.cfg.Peers {
		a := <-answers
		if !a.ok {
			continue
		}
		if a.st.Leader && a.st.Epoch >= cur {
			e.seen(a.st)
			e.releaseLock()
			return
		}
		if a.st.ID > e.cfg.ID {
			higher = max(higher, a.st.ID)
		}
	}
	if higher != 0 {
		// Bully: a higher id is alive; it will take over. Give it the lock
		// and wait for it before trying again.
		e.log.Info("deferring to a higher id", "higher", higher)
		e.mu.Lock()
		e.leaderID, e.lastSeen = higher, time.Now().Add(e.cfg.DeferTimeout-e.cfg.LeaseTimeout)
		// Long enough for the higher id (polling every few ms) to take the
		// lock, short enough not to stall a handover if that one leaves.
		e.holdoff = time.Now().Add(min(e.cfg.DeferTimeout, lockHoldoff))
		e.mu.Unlock()
		e.releaseLock()
		return
	}
	if ctx.Err() != nil {
		return // stopped while probing: this server is leaving
	}
	next := cur + 1
	if err := e.epochs.Claim(next, e.cfg.ID); err != nil {
		e.log.Info("claim lost", "epoch", next, "err", err)
		e.mu.Lock()
		e.lastSeen = time.Now() // give the winner a lease's time to show up
		e.mu.Unlock()
		e.releaseLock()
		return
	}
	e.mu.Lock()
	e.leading = next
	e.leaderID, e.leaderEp, e.lastSeen = e.cfg.ID, next, time.Now()
	e.mu.Unlock()
	e.log.Info("elected", "epoch", next)
	e.emit(ctx, Event{Kind: Elected, Epoch: next})
}

func (e *Elector) emit(ctx context.Context, ev Event) {
	select {
	case e.events <- ev:
	case <-ctx.Done():
	}
}
