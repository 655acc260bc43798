package zmqx

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
)

// Link is a dialing socket that a role can always send on without blocking,
// and that heals itself.
//
// zmq4's automatic reconnect runs Dial synchronously, with unlimited retries,
// from whichever goroutine noticed the broken connection. When that is a
// writer, it keeps the socket's writer lock while it dials, and the new
// connection then needs that same lock: the socket's sends hang for good
// (measured here: a server's probes to a dead peer blocked until the test
// ended). So a Link sends from its own goroutine, fed by a bounded queue, and
// a watchdog replaces the socket (closing the old one unwedges it) when one
// send takes longer than StuckAfter. Callers can also Reset it themselves,
// the Lazy Pirate way, when their replies stop coming.
type Link struct {
	ctx      context.Context
	cancel   context.CancelFunc
	endpoint string
	make     func(ctx context.Context) zmq4.Socket
	log      *slog.Logger

	// C delivers what the socket receives, across socket replacements.
	C <-chan zmq4.Msg
	c chan zmq4.Msg

	sendq chan zmq4.Msg
	busy  atomic.Int64 // unix nanos when the current send started, 0 when idle

	// Healthy, if set, is asked by the watchdog about the current socket;
	// after StuckAfter of false answers the socket is replaced. Set it
	// before the link is used.
	Healthy func(zmq4.Socket) bool

	mu     sync.Mutex
	cur    *generation
	closed bool
	group  Group
}

type generation struct {
	sock   zmq4.Socket
	cancel context.CancelFunc
	in     *Inbox
	done   sync.WaitGroup
}

// StuckAfter is how long one send may take before the socket is replaced.
const StuckAfter = time.Second

// NewLink dials endpoint with sockets made by mk (which should use Dialer
// options) and starts the sender and the watchdog. queue bounds the sends
// waiting; past it Send drops and says so.
func NewLink(ctx context.Context, endpoint string, queue int, logger *slog.Logger, mk func(ctx context.Context) zmq4.Socket) *Link {
	c := make(chan zmq4.Msg, 1024)
	ctx, cancel := context.WithCancel(ctx)
	l := &Link{ctx: ctx, cancel: cancel, endpoint: endpoint, make: mk, log: logger, C: c, c: c, sendq: make(chan zmq4.Msg, queue)}
	l.mu.Lock()
	l.cur = l.start()
	l.mu.Unlock()
	l.group.Go(l.sender)
	l.group.Go(l.watchdog)
	return l
}

// start makes, dials and reads a new socket. Called with l.mu held.
func (l *Link) start() *generation {
	ctx, cancel := context.WithCancel(l.ctx)
	g := &generation{sock: l.make(ctx), cancel: cancel}
	g.done.Go(func() {
		// Dial retries until TCP connects, but gives up on a failed
		// handshake (a refused PLAIN secret, a peer that did not finish
		// in time): retry those too, less often, and say so once.
		for wait, warned := 100*time.Millisecond, false; ; wait = min(2*wait, 2*time.Second) {
			err := g.sock.Dial(Endpoint(l.endpoint))
			if err == nil || ctx.Err() != nil {
				return
			}
			if !warned {
				l.log.Warn("dial: retrying", "endpoint", l.endpoint, "err", err)
				warned = true
			} else {
				l.log.Debug("dial: retrying", "endpoint", l.endpoint, "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
	})
	g.in = NewInbox(ctx, g.sock, 64)
	g.done.Go(func() {
		for m := range g.in.C {
			select {
			case l.c <- m:
			case <-ctx.Done():
				return
			}
		}
	})
	return g
}

// Send queues msg; it returns false (and drops msg) when the queue is full.
func (l *Link) Send(msg zmq4.Msg) bool {
	select {
	case l.sendq <- msg:
		return true
	default:
		return false
	}
}

// Reset replaces the socket with a new one (a new identity, a new connection).
func (l *Link) Reset() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	old := l.cur
	l.cur = l.start()
	l.mu.Unlock()
	old.stop()
}

func (g *generation) stop() {
	g.cancel()
	g.sock.Close()
	g.done.Wait()
}

func (l *Link) sender() {
	for {
		select {
		case <-l.ctx.Done():
			return
		case msg := <-l.sendq:
			l.mu.Lock()
			if l.closed {
				l.mu.Unlock()
				return
			}
			sock := l.cur.sock
			l.mu.Unlock()
			l.busy.Store(time.Now().UnixNano())
			err := sock.Send(msg)
			l.busy.Store(0)
			if err != nil && l.ctx.Err() == nil {
				l.log.Debug("send", "endpoint", l.endpoint, "err", err)
			}
		}
	}
}

func (l *Link) watchdog() {
	t := time.NewTicker(StuckAfter / 4)
	defer t.Stop()
	var (
		sick  time.Time   // since when Healthy has said false
		wasUp zmq4.Socket // the socket Healthy last said true of
	)
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-t.C:
			if b := l.busy.Load(); b != 0 && time.Since(time.Unix(0, b)) > StuckAfter {
				l.log.Warn("socket stuck sending: replacing it", "endpoint", l.endpoint)
				l.Reset()
				sick = time.Time{}
				continue
			}
			if l.Healthy == nil {
				continue
			}
			l.mu.Lock()
			sock := l.cur.sock
			l.mu.Unlock()
			switch {
			case l.Healthy(sock):
				sick, wasUp = time.Time{}, sock
			case wasUp != sock:
				// Still dialing for the first time: its Dial retries.
			case sick.IsZero():
				sick = time.Now()
			case time.Since(sick) > StuckAfter:
				l.log.Warn("connection lost: redialing with a new socket", "endpoint", l.endpoint)
				l.Reset()
				sick = time.Time{}
			}
		}
	}
}

// Close closes the socket and waits for the link's goroutines. It is idempotent.
func (l *Link) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	cur := l.cur
	l.mu.Unlock()
	l.cancel()
	cur.stop()
	l.group.Wait()
}
