// Package proxy is the publish-subscribe relay (the "pubsub" role): chat
// servers publish [topic, payload] messages to its frontend, and subscribers
// that connect to its backend receive those whose topic starts with one of
// their subscriptions.
//
// From the outside it behaves as a libzmq XSUB/XPUB proxy: PUB sockets
// connect to the frontend, SUB sockets to the backend. Inside it is a SUB
// socket that listens on the frontend and subscribes to everything (zmq4's
// SUB re-sends its subscriptions on every new connection), and a PUB socket
// that listens on the backend and filters by each subscriber's topics. zmq4's
// XSUB/XPUB proxy delivers nothing and its XPUB never hands subscriptions to
// the application, hence this shape; the cost is that publishers send every
// message to the proxy, whatever the subscribers want.
//
// Peers: a subscriber may dial with automatic reconnect (zmqx.Dialer) and
// gets publications again after the proxy restarts. A publisher should not:
// a zmq4 PUB with automatic reconnect deadlocked here when the proxy went
// away (its send loop holds the writer lock while redialing, and the
// connection reaper holds the socket lock while waiting for the writer
// lock), after which it sends nothing and Close hangs. A publisher that
// loses the proxy should close its PUB and dial a new one; its PUB's
// Topics() is [""] while it is connected to a proxy, and empty once the
// connection is gone.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/go-zeromq/zmq4"

	"chat/internal/zmqx"
)

// DefaultHWM is the default bound of the queue of messages waiting to go out
// to subscribers.
const DefaultHWM = 10000

// inbox is the capacity of the frontend's receive queue.
const inbox = 1024

// ErrClosed is returned by Serve after Close.
var ErrClosed = errors.New("proxy: closed")

// Config configures a Proxy. Every field but Frontend and Backend has a
// usable zero value.
type Config struct {
	// Frontend is where publishers connect, e.g. "tcp://*:5557".
	Frontend string
	// Backend is where subscribers connect, e.g. "tcp://*:5558".
	Backend string
	// HWM bounds the messages queued for subscribers (default 10000); past
	// it new messages are dropped, as a PUB socket does. zmq4 keeps one
	// queue for all subscribers, not one each, and sends to them in turn:
	// a subscriber that stops reading delays the others.
	HWM int
	// Logger receives the proxy's events (default: discard).
	Logger *slog.Logger
	// ClusterSecret, if set, is the ZMTP PLAIN password publishers must
	// present on the frontend (zmqx.Cluster); empty: anyone may publish.
	ClusterSecret string
}

func (c Config) withDefaults() (Config, error) {
	if c.Frontend == "" {
		return c, errors.New("proxy: no frontend endpoint")
	}
	if c.Backend == "" {
		return c, errors.New("proxy: no backend endpoint")
	}
	if c.HWM < 0 {
		return c, errors.New("proxy: HWM must not be negative")
	}
	if c.HWM == 0 {
		c.HWM = DefaultHWM
	}
	if c.ClusterSecret != "" {
		if err := zmqx.CheckSecret(c.ClusterSecret); err != nil {
			return c, fmt.Errorf("proxy: %w", err)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Proxy relays publications from publishers to subscribers. Make one with
// Listen, run it with Serve, stop it with Close.
type Proxy struct {
	cfg Config
	log *slog.Logger

	ctx    context.Context // the sockets' lifeline: cancelled by Close
	cancel context.CancelFunc
	sub    zmq4.Socket // listens on the frontend, subscribed to everything
	pub    zmq4.Socket // listens on the backend
	faddr  string
	baddr  string

	closeOnce sync.Once
	serving   atomic.Bool
	served    chan struct{}

	relayed atomic.Uint64
}

// Listen binds the frontend and backend sockets. Cancelling ctx closes them.
func Listen(ctx context.Context, cfg Config) (*Proxy, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	p := &Proxy{
		cfg:    cfg,
		log:    cfg.Logger,
		ctx:    sctx,
		cancel: cancel,
		sub:    zmq4.NewSub(sctx, append(zmqx.Listener(cfg.Logger), zmqx.Cluster(cfg.ClusterSecret)...)...),
		served: make(chan struct{}),
	}
	fail := func(err error) (*Proxy, error) {
		p.shutdown()
		return nil, fmt.Errorf("proxy: %w", err)
	}
	// Before Listen, so every publisher gets the subscription as it connects.
	if err := p.sub.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		return fail(fmt.Errorf("subscribe: %w", err))
	}
	if err := zmqx.Bind(p.sub, cfg.Frontend); err != nil {
		return fail(err)
	}
	// The PUB comes second: zmq4 leaks a goroutine for each PUB it closes.
	p.pub = zmq4.NewPub(sctx, zmqx.Listener(cfg.Logger)...)
	if err := p.pub.SetOption(zmq4.OptionHWM, cfg.HWM); err != nil {
		return fail(fmt.Errorf("set HWM: %w", err))
	}
	if err := zmqx.BindClients(p.pub, cfg.Backend); err != nil {
		return fail(err)
	}
	p.faddr = zmqx.BoundEndpoint(p.sub, cfg.Frontend)
	p.baddr = zmqx.BoundEndpoint(p.pub, cfg.Backend)
	return p, nil
}

// Addr returns the endpoints the proxy really listens on, with the ports the
// system chose for port 0.
func (p *Proxy) Addr() (frontend, backend string) { return p.faddr, p.baddr }

// Relayed returns how many messages the proxy has handed to its PUB socket
// (some may then be dropped at the HWM or for want of a subscriber).
func (p *Proxy) Relayed() uint64 { return p.relayed.Load() }

// Close closes the sockets and waits for Serve to return. It is idempotent.
func (p *Proxy) Close() error {
	p.shutdown()
	if p.serving.Load() {
		<-p.served
	}
	return nil
}

func (p *Proxy) shutdown() {
	p.closeOnce.Do(func() {
		p.cancel()
		_ = p.sub.Close()
		if p.pub != nil {
			_ = p.pub.Close()
		}
	})
}

// Serve relays until ctx is done or Close is called, then closes the proxy
// and returns nil. It may be called once.
func (p *Proxy) Serve(ctx context.Context) error {
	if !p.serving.CompareAndSwap(false, true) {
		return errors.New("proxy: Serve called twice")
	}
	defer close(p.served)
	if p.ctx.Err() != nil {
		return ErrClosed
	}
	p.log.Debug("pubsub serving", "frontend", p.faddr, "backend", p.baddr)

	in := zmqx.NewInbox(p.ctx, p.sub, inbox)
	defer func() {
		p.shutdown()
		in.Wait()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.ctx.Done():
			return nil
		case msg, ok := <-in.C:
			if !ok {
				// zmqx.Inbox also stops on a peer error that mentions
				// "closed"; its reader has returned, so a new one competes
				// with no one.
				in.Wait()
				if p.ctx.Err() != nil || ctx.Err() != nil {
					return nil
				}
				p.log.Warn("frontend reader stopped; restarting it")
				in = zmqx.NewInbox(p.ctx, p.sub, inbox)
				continue
			}
			// The Inbox has dropped errors, commands and empty messages.
			// A zmq4 PUB send only queues (and drops past the HWM): it
			// never blocks this loop.
			if err := p.pub.SendMulti(msg); err != nil && p.ctx.Err() == nil {
				p.log.Debug("publish failed", "err", err)
				continue
			}
			p.relayed.Add(1)
		}
	}
}
