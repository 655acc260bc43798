package election

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// world is the shared directory and the peer network, in memory.
type world struct {
	mu     sync.Mutex
	epochs map[uint64]int // epoch -> owner
	holder int            // the lock's holder, 0 = free
	last   int            // the id the lock file names: the last to claim
	alive  map[int]bool
	lead   map[int]uint64 // id -> epoch it leads (as it would answer a probe)
}

func newWorld() *world {
	return &world{epochs: map[uint64]int{}, alive: map[int]bool{}, lead: map[int]uint64{}}
}

func (w *world) newest() uint64 {
	var n uint64
	for e := range w.epochs {
		n = max(n, e)
	}
	return n
}

// node is one server's view of the world.
type node struct {
	w  *world
	id int
}

func (n node) Epoch() (uint64, error) {
	n.w.mu.Lock()
	defer n.w.mu.Unlock()
	return n.w.newest(), nil
}

var errTaken = errors.New("claimed")

func (n node) Claim(epoch uint64, leader int) error {
	n.w.mu.Lock()
	defer n.w.mu.Unlock()
	if _, taken := n.w.epochs[epoch]; taken || epoch != n.w.newest()+1 {
		return errTaken
	}
	n.w.epochs[epoch] = leader
	n.w.last = leader
	return nil
}

func (n node) WaitLeaderFree(ctx context.Context) (int, error) {
	for {
		n.w.mu.Lock()
		if n.w.holder == 0 && n.w.alive[n.id] {
			n.w.holder = n.id
			last := n.w.last
			n.w.mu.Unlock()
			return last, nil
		}
		n.w.mu.Unlock()
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (n node) ReleaseLeader() {
	n.w.mu.Lock()
	defer n.w.mu.Unlock()
	if n.w.holder == n.id {
		n.w.holder = 0
	}
}

func (n node) Probe(ctx context.Context, id int) (PeerState, bool) {
	n.w.mu.Lock()
	alive, ep := n.w.alive[id], n.w.lead[id]
	n.w.mu.Unlock()
	if !alive {
		<-ctx.Done() // a dead peer never answers
		return PeerState{}, false
	}
	return PeerState{ID: id, Leader: ep != 0, Epoch: ep}, true
}

// run starts an elector for id; it plays the server's part: on Elected it
// leads (answers probes as leader), on Deposed it stops.
func (w *world) run(t *testing.T, ctx context.Context, id int, peers ...int) *Elector {
	w.mu.Lock()
	w.alive[id] = true
	w.mu.Unlock()
	n := node{w, id}
	e, err := New(Config{ID: id, Peers: peers}, n, n, n)
	if err != nil {
		t.Fatal(err)
	}
	go e.Run(ctx)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-e.Events():
				w.mu.Lock()
				if ev.Kind == Elected {
					w.lead[id] = ev.Epoch
				} else {
					delete(w.lead, id)
				}
				w.mu.Unlock()
			}
		}
	}()
	return e
}

// kill makes id dead: it stops answering and its lock is released, as the
// kernel does for a killed process.
func (w *world) kill(id int, cancel context.CancelFunc) {
	cancel()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.alive[id] = false
	delete(w.lead, id)
	if w.holder == id {
		w.holder = 0
	}
}

func (w *world) leaders() map[int]uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[int]uint64{}
	for id, ep := range w.lead {
		out[id] = ep
	}
	return out
}

func TestHighestLiveIDWins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		w.run(t, ctx, 1, 2, 3)
		w.run(t, ctx, 2, 1, 3)
		w.run(t, ctx, 3, 1, 2)
		time.Sleep(5 * time.Second) // fake time: let the election settle
		synctest.Wait()
		if l := w.leaders(); len(l) != 1 || l[3] == 0 {
			t.Fatalf("leaders %v, want server 3 alone", l)
		}
	})
}

func TestFailoverToTheNextHighestAndNoPreemption(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		ctx := t.Context()
		c1, cancel1 := context.WithCancel(ctx)
		c2, cancel2 := context.WithCancel(ctx)
		c3, cancel3 := context.WithCancel(ctx)
		defer cancel1()
		defer cancel2()
		w.run(t, c1, 1, 2, 3)
		w.run(t, c2, 2, 1, 3)
		w.run(t, c3, 3, 1, 2)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		first := w.leaders()[3]

		w.kill(3, cancel3)
		start := time.Now()
		for len(w.leaders()) == 0 {
			time.Sleep(time.Millisecond)
		}
		took := time.Since(start)
		l := w.leaders()
		if len(l) != 1 || l[2] <= first {
			t.Fatalf("after killing 3: leaders %v, want 2 in an epoch above %d", l, first)
		}
		// The lock names the dead leader, so no one waits out a full probe
		// of it: the election costs lock polls, live probes and one short
		// probe of the suspect.
		if took >= DefaultProbeTimeout {
			t.Errorf("failover took %v of (fake) time, want less than one probe timeout (%v)", took, DefaultProbeTimeout)
		}

		// 3 comes back: it must not depose the healthy leader 2.
		c3, cancel3 = context.WithCancel(ctx)
		defer cancel3()
		w.run(t, c3, 3, 1, 2)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if l2 := w.leaders(); len(l2) != 1 || l2[2] != l[2] {
			t.Fatalf("after 3 returned: leaders %v, want 2 still in epoch %d", l2, l[2])
		}
	})
}

// A leader that stops answering probes (paused, or hung) while keeping its
// lock is replaced anyway (lease by probes); it then sees the newer epoch
// and is told it was deposed.
func TestSilentLeaderIsReplacedAndDeposed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		ctx := t.Context()
		w.run(t, ctx, 1, 2)
		e2 := w.run(t, ctx, 2, 1)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		old := w.leaders()[2]
		if old == 0 {
			t.Fatalf("leaders %v, want 2", w.leaders())
		}
		// Pause 2: alive to nobody, lock kept.
		w.mu.Lock()
		w.alive[2] = false
		w.mu.Unlock()
		time.Sleep(3 * time.Second)
		synctest.Wait()
		w.mu.Lock()
		newest := w.newest()
		w.mu.Unlock()
		if w.leaders()[1] != newest || newest <= old {
			t.Fatalf("silent leader not replaced: leaders %v, newest epoch %d", w.leaders(), newest)
		}
		if e2.Leading() != 0 {
			t.Fatal("the deposed leader still believes it leads")
		}
		if l := w.leaders(); len(l) != 1 || l[1] != newest {
			t.Fatalf("leaders %v, want only 1", l)
		}
	})
}

func TestEveryEpochHasOneOwner(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		ctx := t.Context()
		// Five servers that cannot see each other (probes all fail) race:
		// the claims still give each epoch exactly one owner.
		for id := 1; id <= 5; id++ {
			w.mu.Lock()
			w.alive[id] = true
			w.mu.Unlock()
			n := node{w, id}
			e, err := New(Config{ID: id}, n, n, n)
			if err != nil {
				t.Fatal(err)
			}
			go e.Run(ctx)
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		w.mu.Lock()
		defer w.mu.Unlock()
		if len(w.epochs) == 0 {
			t.Fatal("nobody claimed anything")
		}
		for e := uint64(1); e <= w.newest(); e++ {
			if _, ok := w.epochs[e]; !ok {
				t.Fatalf("epoch %d skipped: claims must be sequential", e)
			}
		}
	})
}

func TestConfigValidate(t *testing.T) {
	if _, err := New(Config{ID: 0}, nil, nil, nil); err == nil {
		t.Error("id 0 accepted")
	}
	if _, err := New(Config{ID: 2, Peers: []int{1, 2}}, nil, nil, nil); err == nil {
		t.Error("own id among peers accepted")
	}
}

// The lock names the last leader, a hint that it just died. But a leader
// that took over from a paused one leads without the lock; when that lock
// comes free it names a healthy leader: a returning higher id that gets the
// lock must find it alive and leave it be.
func TestLockHintDoesNotDeposeAHealthyLeader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		ctx := t.Context()
		w.run(t, ctx, 1, 2, 3)
		w.run(t, ctx, 2, 1, 3)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		ep := w.leaders()[2]
		if ep == 0 {
			t.Fatalf("leaders %v, want 2", w.leaders())
		}
		// The lock comes free while 2 leads (as when a paused old leader
		// that held it finally dies), naming 2; then 3 comes back.
		w.mu.Lock()
		w.holder, w.last = 0, 2
		w.mu.Unlock()
		w.run(t, ctx, 3, 1, 2)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if l := w.leaders(); len(l) != 1 || l[2] != ep {
			t.Fatalf("leaders %v: the healthy leader 2 (epoch %d) was deposed", l, ep)
		}
	})
}
