// Package zmqx holds the few helpers every role needs to use zmq4 safely
// (see "Facts measured" in DESIGN.md): one reader goroutine per socket feeding
// a channel, options for long-lived dialers, and a logger adapter.
package zmqx

import (
	"context"
	"errors"
	"log"
	"log/slog"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"
)

// SendTimeout bounds a Send on a dialing socket. zmq4's Send blocks until the
// socket has a connection (5 minutes by default): a role must never hang on a
// peer that is down, so the send fails instead and the caller's own timeout
// and retry logic takes over.
const SendTimeout = 250 * time.Millisecond

// Dialer returns the options of a socket that dials and must keep dialing:
// automatic reconnect with unlimited retries, and sends bounded by
// SendTimeout. Never use them on a socket that listens: zmq4 would try to
// dial its own listen address when a peer leaves.
func Dialer(logger *slog.Logger) []zmq4.Option {
	return []zmq4.Option{
		zmq4.WithAutomaticReconnect(true),
		zmq4.WithDialerMaxRetries(-1),
		zmq4.WithDialerRetry(100 * time.Millisecond),
		zmq4.WithTimeout(SendTimeout),
		zmq4.WithLogger(StdLogger(logger)),
	}
}

// Once returns the options of a socket that dials until it connects (the
// Dial blocks meanwhile: run it on its own goroutine) but does not reconnect
// by itself: its owner replaces it when the connection is lost (see Link).
func Once(logger *slog.Logger) []zmq4.Option {
	return []zmq4.Option{
		zmq4.WithDialerMaxRetries(-1),
		zmq4.WithDialerRetry(100 * time.Millisecond),
		zmq4.WithTimeout(SendTimeout),
		zmq4.WithLogger(StdLogger(logger)),
	}
}

// Listener returns the options of a socket that listens.
func Listener(logger *slog.Logger) []zmq4.Option {
	return []zmq4.Option{zmq4.WithLogger(StdLogger(logger))}
}

// StdLogger adapts slog to the *log.Logger zmq4 wants, at debug level.
func StdLogger(logger *slog.Logger) *log.Logger {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return slog.NewLogLogger(logger.With("lib", "zmq4").Handler(), slog.LevelDebug)
}

// Inbox is the one reader of a socket: a goroutine that calls Recv in a loop
// and hands over every well-formed user message on C. It drops messages with
// an error, with no frames, or of Type CmdMsg (zmq4 surfaces libzmq's ZMTP
// PINGs that way). C is closed when the socket is closed or its context ends.
type Inbox struct {
	C    <-chan zmq4.Msg
	done chan struct{}
}

// NewInbox starts the reader of sock. Close the socket (or cancel its context)
// to stop it, then Wait.
func NewInbox(ctx context.Context, sock zmq4.Socket, buffer int) *Inbox {
	c := make(chan zmq4.Msg, buffer)
	in := &Inbox{C: c, done: make(chan struct{})}
	go func() {
		defer close(in.done)
		defer close(c)
		for {
			msg, err := sock.Recv()
			if err != nil {
				if ctx.Err() != nil || isClosed(err) {
					return
				}
				// A failed read of one peer (it went away mid-message): keep
				// serving the others, without spinning if the error persists.
				time.Sleep(time.Millisecond)
				continue
			}
			if msg.Type == zmq4.CmdMsg || len(msg.Frames) == 0 {
				continue
			}
			select {
			case c <- msg:
			case <-ctx.Done():
				return
			}
		}
	}()
	return in
}

// Wait blocks until the reader goroutine has returned.
func (in *Inbox) Wait() { <-in.done }

// isClosed reports whether Recv failed because the socket itself was closed
// (zmq4 cancels the socket's context), as opposed to one connection failing
// (io.EOF, a reset, "use of closed network connection"), which must not stop
// the reader of a socket that still has other peers.
func isClosed(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// Group runs goroutines and waits for all of them: the one owner of every
// goroutine a role starts.
type Group struct{ wg sync.WaitGroup }

// Go starts f.
func (g *Group) Go(f func()) { g.wg.Go(f) }

// Wait waits for every started f.
func (g *Group) Wait() { g.wg.Wait() }
