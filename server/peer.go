package server

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/election"
	"chat/internal/zmqx"
)

// The peer network: each server binds a ROUTER for its peers and dials one
// DEALER per peer (one peer per DEALER: zmq4's DEALER would copy every message
// to all its peers). A probe asks a peer for its state; the same message
// serves Bully elections, the followers' watch on the leader, clock polling
// and the status report.

// peerMsg is every message of the peer protocol.
type peerMsg struct {
	Type  string     `json:"type"` // "probe", "state", "adjust"
	N     uint64     `json:"n"`    // request number, echoed in the answer
	From  int        `json:"from,omitempty"`
	State *peerState `json:"state,omitempty"`
	// adjust: the correction to add to the receiver's software clock.
	DeltaNS int64  `json:"delta_ns,omitempty"`
	Epoch   uint64 `json:"epoch,omitempty"`
}

// roleLeaving is the role a shutting-down server answers probes with.
const roleLeaving = "leaving"

// peerState is what a server says of itself.
type peerState struct {
	ID         int       `json:"id"`
	Role       string    `json:"role"`
	Epoch      uint64    `json:"epoch"`
	Index      uint64    `json:"index"`
	Time       time.Time `json:"time"`          // its software clock when it answered
	Correction int64     `json:"correction_ns"` // sum of clock corrections applied
}

// peerLink is the DEALER to one peer.
type peerLink struct {
	id   int
	link *zmqx.Link

	mu      sync.Mutex
	waiting map[uint64]chan *peerMsg
	missed  int // answers missed in a row
}

type peers struct {
	self   int
	log    *slog.Logger
	links  map[int]*peerLink
	n      atomic.Uint64
	router zmq4.Socket
	secret string // the cluster secret: ZMTP PLAIN between peers
	rin    *zmqx.Inbox
	group  zmqx.Group
	// answer builds this server's state for a probe; adjust applies a correction.
	answer func() peerState
	adjust func(epoch uint64, delta time.Duration)
}

func listenPeers(ctx context.Context, self int, listen string, addrs map[int]string, secret string, logger *slog.Logger) (*peers, error) {
	p := &peers{self: self, log: logger, links: map[int]*peerLink{}, secret: secret}
	p.router = zmq4.NewRouter(ctx, append(zmqx.Listener(logger), zmqx.Cluster(secret)...)...)
	if err := p.router.Listen(zmqx.Endpoint(listen)); err != nil {
		return nil, fmt.Errorf("listen %s for peers: %w", listen, err)
	}
	for id := range addrs {
		if id != self {
			p.links[id] = &peerLink{id: id, waiting: map[uint64]chan *peerMsg{}}
		}
	}
	return p, nil
}

// Addr returns the bound peer endpoint.
func (p *peers) Addr() string {
	if a := p.router.Addr(); a != nil {
		return "tcp://" + a.String()
	}
	return ""
}

// start dials the peers and serves probes until ctx ends.
func (p *peers) start(ctx context.Context, addrs map[int]string) {
	for id, l := range p.links {
		l.link = zmqx.NewLink(ctx, addrs[id], 64, p.log, func(ctx context.Context) zmq4.Socket {
			ident := zmq4.SocketIdentity(fmt.Sprintf("server-%d-peer-%d-%x", p.self, id, time.Now().UnixNano()))
			return zmq4.NewDealer(ctx, append(zmqx.Dialer(p.log), append(zmqx.Cluster(p.secret), zmq4.WithID(ident))...)...)
		})
		p.group.Go(func() {
			for {
				var msg zmq4.Msg
				select {
				case msg = <-l.link.C:
				case <-ctx.Done():
					return
				}
				var m peerMsg
				if len(msg.Frames) != 1 || json.Unmarshal(msg.Frames[0], &m) != nil {
					continue
				}
				l.mu.Lock()
				c := l.waiting[m.N]
				delete(l.waiting, m.N)
				l.mu.Unlock()
				if c != nil {
					c <- &m
				}
			}
		})
	}
	p.rin = zmqx.NewInbox(ctx, p.router, 64)
	p.group.Go(func() {
		for msg := range p.rin.C {
			if len(msg.Frames) != 2 {
				continue
			}
			var m peerMsg
			if json.Unmarshal(msg.Frames[1], &m) != nil {
				continue
			}
			switch m.Type {
			case "probe":
				st := p.answer()
				reply, _ := json.Marshal(peerMsg{Type: "state", N: m.N, State: &st})
				_ = p.router.Send(zmq4.NewMsgFrom(msg.Frames[0], reply))
			case "adjust":
				p.adjust(m.Epoch, time.Duration(m.DeltaNS))
				reply, _ := json.Marshal(peerMsg{Type: "ok", N: m.N})
				_ = p.router.Send(zmq4.NewMsgFrom(msg.Frames[0], reply))
			}
		}
	})
}

// ask sends m to peer id and waits for the answer with the same N.
func (p *peers) ask(ctx context.Context, id int, m peerMsg) (*peerMsg, bool) {
	l := p.links[id]
	if l == nil {
		return nil, false
	}
	m.N = p.n.Add(1)
	m.From = p.self
	c := make(chan *peerMsg, 1)
	l.mu.Lock()
	l.waiting[m.N] = c
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.waiting, m.N)
		l.mu.Unlock()
	}()
	b, _ := json.Marshal(m)
	if l.link == nil || !l.link.Send(zmq4.NewMsg(b)) {
		return nil, false
	}
	select {
	case r := <-c:
		l.mu.Lock()
		l.missed = 0
		l.mu.Unlock()
		return r, true
	case <-ctx.Done():
		l.mu.Lock()
		l.missed++
		reset := l.missed >= resetAfter
		if reset {
			l.missed = 0
		}
		l.mu.Unlock()
		if reset {
			// zmq4's automatic reconnect gives up for good when a handshake
			// fails (as it can while the peer restarts): a link that stays
			// silent gets a new socket, the Lazy Pirate way.
			l.link.Reset()
		}
		return nil, false
	}
}

// resetAfter is how many answers a peer may miss in a row before its link
// is replaced.
const resetAfter = 3

// state probes peer id.
func (p *peers) state(ctx context.Context, id int) (peerState, time.Duration, bool) {
	start := time.Now()
	r, ok := p.ask(ctx, id, peerMsg{Type: "probe"})
	if !ok || r.State == nil {
		return peerState{}, 0, false
	}
	return *r.State, time.Since(start), true
}

// Probe implements election.Prober.
func (p *peers) Probe(ctx context.Context, id int) (election.PeerState, bool) {
	st, _, ok := p.state(ctx, id)
	if !ok || st.Role == roleLeaving {
		return election.PeerState{}, false
	}
	return election.PeerState{ID: st.ID, Leader: st.Role == "leader", Epoch: st.Epoch}, true
}

// ids returns the peer ids in ascending order.
func (p *peers) ids() []int {
	var ids []int
	for id := range p.links {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (p *peers) close() {
	for _, l := range p.links {
		if l.link != nil {
			l.link.Close()
		}
	}
	p.router.Close()
	p.group.Wait()
}

// ParsePeers parses "1=tcp://host:5561,2=tcp://host:5562".
func ParsePeers(s string) (map[int]string, error) {
	out := map[int]string{}
	if s == "" {
		return out, nil
	}
	for part := range strings.SplitSeq(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		id, err := strconv.Atoi(k)
		if !ok || err != nil || id <= 0 || v == "" {
			return nil, fmt.Errorf("peer %q: want ID=ENDPOINT, e.g. 2=tcp://server-2:5562", part)
		}
		out[id] = v
	}
	return out, nil
}
