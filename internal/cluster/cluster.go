// Package cluster runs a whole chat system in one process for tests: a
// broker, a pubsub and N servers on random 127.0.0.1 ports, with Kill,
// Restart and WaitLeader. Real processes are tested elsewhere; this is the
// fast, deterministic harness.
package cluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"chat/broker"
	"chat/proxy"
	"chat/server"
)

// Cluster is a running system.
type Cluster struct {
	t      testing.TB
	Dir    string
	Broker *broker.Broker
	PubSub *proxy.Proxy
	// Client endpoints.
	Frontend, Subscribe string

	backend, publish string
	peers            map[int]string
	log              *slog.Logger

	tune    func(*server.Config)
	mu      sync.Mutex
	servers map[int]*running
}

type running struct {
	s      *server.Server
	cancel context.CancelFunc
	done   chan struct{}
}

// Options tune a cluster.
type Options struct {
	Servers int
	Tune    func(*server.Config) // adjusts each server's config
	Log     io.Writer            // where every role logs (default: stderr, warnings only unless -v)
	// ClusterSecret, if set, makes the broker's backend, the pubsub's
	// frontend and the servers' peer ports accept only peers presenting it.
	ClusterSecret string
}

// Start runs a cluster and stops it when the test ends.
func Start(t testing.TB, opt Options) *Cluster {
	secret := opt.ClusterSecret
	t.Helper()
	if opt.Servers == 0 {
		opt.Servers = 3
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	if opt.Log != nil {
		log = slog.New(slog.NewTextHandler(opt.Log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	b, err := broker.Listen(ctx, broker.Config{Frontend: "tcp://127.0.0.1:0", Backend: "tcp://127.0.0.1:0",
		Logger: log.With("role", "broker"), ClusterSecret: secret})
	if err != nil {
		cancel()
		t.Fatalf("broker: %v", err)
	}
	p, err := proxy.Listen(ctx, proxy.Config{Frontend: "tcp://127.0.0.1:0", Backend: "tcp://127.0.0.1:0",
		Logger: log.With("role", "pubsub"), ClusterSecret: secret})
	if err != nil {
		cancel()
		b.Close()
		t.Fatalf("pubsub: %v", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { b.Serve(ctx) })
	wg.Go(func() { p.Serve(ctx) })
	c := &Cluster{t: t, Dir: t.TempDir(), Broker: b, PubSub: p, log: log,
		peers: map[int]string{}, servers: map[int]*running{}}
	c.Frontend, c.backend = b.Addr()
	c.publish, c.Subscribe = p.Addr()
	for id := 1; id <= opt.Servers; id++ {
		c.peers[id] = "tcp://" + FreeAddr(t)
	}
	t.Cleanup(func() {
		c.mu.Lock()
		ids := []int{}
		for id := range c.servers {
			ids = append(ids, id)
		}
		c.mu.Unlock()
		for _, id := range ids {
			c.Kill(id)
		}
		cancel()
		b.Close()
		p.Close()
		wg.Wait()
	})
	c.tune = func(cfg *server.Config) {
		cfg.ClusterSecret = secret
		if opt.Tune != nil {
			opt.Tune(cfg)
		}
	}
	for id := 1; id <= opt.Servers; id++ {
		c.StartServer(id)
	}
	return c
}

// FreeAddr returns a 127.0.0.1 address with a port free a moment ago.
func FreeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Config returns the configuration server id runs with.
func (c *Cluster) Config(id int) server.Config {
	cfg := server.DefaultConfig(id)
	cfg.Broker, cfg.PubSub, cfg.Listen, cfg.Peers, cfg.Dir = c.backend, c.publish, c.peers[id], c.peers, c.Dir
	cfg.Secret = "0123456789abcdef0123456789abcdef-test-key"
	cfg.Logger = c.log
	if c.tune != nil {
		c.tune(&cfg)
	}
	return cfg
}

// StartServer starts server id (again).
func (c *Cluster) StartServer(id int) {
	c.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := server.Listen(ctx, c.Config(id))
	if err != nil {
		cancel()
		c.t.Fatalf("server %d: %v", id, err)
	}
	r := &running{s: s, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(r.done); s.Serve(ctx) }()
	c.mu.Lock()
	c.servers[id] = r
	c.mu.Unlock()
}

// Kill stops server id abruptly: no handover (its lock is released as the
// kernel would on a crash, since the process stays).
func (c *Cluster) Kill(id int) {
	c.mu.Lock()
	r := c.servers[id]
	delete(c.servers, id)
	c.mu.Unlock()
	if r == nil {
		return
	}
	r.s.Close()
	r.cancel()
	<-r.done
}

// Stop shuts server id down cleanly, as SIGTERM does: it hands leadership
// over before it exits.
func (c *Cluster) Stop(id int) {
	c.mu.Lock()
	r := c.servers[id]
	delete(c.servers, id)
	c.mu.Unlock()
	if r == nil {
		return
	}
	r.cancel()
	<-r.done
	r.s.Close()
}

// Leader waits until the broker routes to a leader and returns its id and epoch.
func (c *Cluster) WaitLeader(timeout time.Duration) (int, uint64) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if id, ep, ok := c.Broker.Leader(); ok {
			return id, ep
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.t.Fatalf("no leader within %v", timeout)
	return 0, 0
}

// WaitNewLeader waits for a leader with an epoch above after.
func (c *Cluster) WaitNewLeader(after uint64, timeout time.Duration) (int, uint64) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if id, ep, ok := c.Broker.Leader(); ok && ep > after {
			return id, ep
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.t.Fatalf("no leader with an epoch above %d within %v", after, timeout)
	return 0, 0
}

func (c *Cluster) String() string {
	return fmt.Sprintf("cluster(broker %s, pubsub %s)", c.Frontend, c.Subscribe)
}
