// Package clienttest is a fake chat system for tests of the client library
// and the programs on it (console, bot): one ROUTER that plays broker and
// leader, answering every service from an in-memory state with the real wire
// types, and one PUB that plays the pubsub. Faults are injected on demand:
// lost replies, "unavailable" answers, a new epoch, publications out of
// order, a restarted pubsub.
package clienttest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/clock"
	"chat/internal/zmqx"
	"chat/wire"
)

// Server is the fake. Its methods are safe for concurrent use.
type Server struct {
	Broker string // endpoint clients send requests to
	PubSub string // endpoint clients subscribe at

	t      testing.TB
	ctx    context.Context
	cancel context.CancelFunc
	router zmq4.Socket
	in     *zmqx.Inbox
	done   chan struct{}
	wg     sync.WaitGroup // delayed replies

	pubMu sync.Mutex
	pub   zmq4.Socket

	mu          sync.Mutex
	lamport     clock.Lamport
	epoch       uint64
	skew        time.Duration
	users       map[string]*user
	tokens      map[string]string
	channels    map[string]*channel
	answered    map[string]*wire.Reply
	requests    []wire.Request
	dropReplies int
	delayN      int
	delay       time.Duration
	unavailable int
	closed      bool
}

type user struct {
	password string
	channels map[string]bool
	mailbox  []wire.Message
}

type channel struct {
	info wire.ChannelInfo
	msgs []wire.Message
}

// NewServer starts a fake on random loopback ports; it is closed at the end of
// the test.
func NewServer(t testing.TB) *Server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		t: t, ctx: ctx, cancel: cancel, done: make(chan struct{}), epoch: 1,
		users: map[string]*user{}, tokens: map[string]string{}, channels: map[string]*channel{},
		answered: map[string]*wire.Reply{},
	}
	s.router = zmq4.NewRouter(ctx, zmq4.WithLogger(zmqx.StdLogger(nil)))
	if err := zmqx.Bind(s.router, "tcp://127.0.0.1:0"); err != nil {
		t.Fatalf("fake broker: %v", err)
	}
	s.Broker = zmqx.BoundEndpoint(s.router, "tcp://127.0.0.1:0")
	s.pub = zmq4.NewPub(ctx, zmq4.WithLogger(zmqx.StdLogger(nil)))
	if err := zmqx.Bind(s.pub, "tcp://127.0.0.1:0"); err != nil {
		t.Fatalf("fake pubsub: %v", err)
	}
	s.PubSub = zmqx.BoundEndpoint(s.pub, "tcp://127.0.0.1:0")
	s.in = zmqx.NewInbox(ctx, s.router, 64)
	go s.serve()
	t.Cleanup(s.Close)
	return s
}

// Close stops the fake.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	_ = s.router.Close()
	s.pubMu.Lock()
	_ = s.pub.Close()
	s.pubMu.Unlock()
	s.in.Wait()
	<-s.done
	s.wg.Wait()
}

// DropReplies makes the fake apply the next n requests but lose their replies.
func (s *Server) DropReplies(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropReplies = n
}

// DelayReplies makes the fake hold the replies of the next n requests for d
// (it keeps serving others meanwhile).
func (s *Server) DelayReplies(n int, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delayN, s.delay = n, d
}

// Unavailable makes the fake answer the next n requests with "unavailable"
// (as the broker does when there is no leader), without the request number.
func (s *Server) Unavailable(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unavailable = n
}

// SetEpoch sets the epoch stamped on replies and publications.
func (s *Server) SetEpoch(e uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.epoch = e
}

// Epoch returns the current epoch.
func (s *Server) Epoch() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epoch
}

// SetClockSkew sets how far the fake leader's clock is from the OS clock.
func (s *Server) SetClockSkew(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.skew = d
}

// Requests returns every request received, in order.
func (s *Server) Requests() []wire.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// RequestsFor returns the requests received for service, in order.
func (s *Server) RequestsFor(service string) []wire.Request {
	var out []wire.Request
	for _, r := range s.Requests() {
		if r.Service == service {
			out = append(out, r)
		}
	}
	return out
}

// AddUser creates an account.
func (s *Server) AddUser(name, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users[name] = &user{password: password, channels: map[string]bool{}}
}

// AddMember creates the channel if needed and makes name (an existing user) a member.
func (s *Server) AddMember(name, ch string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.channelLocked(ch, name)
	if !s.users[name].channels[ch] {
		s.users[name].channels[ch] = true
		c.info.Members++
	}
}

func (s *Server) channelLocked(name, owner string) *channel {
	c, ok := s.channels[name]
	if !ok {
		c = &channel{info: wire.ChannelInfo{Name: name, Owner: owner, Created: time.Now().UTC(), Topic: wire.ChannelTopic(name)}}
		s.channels[name] = c
	}
	return c
}

// Store appends a message to a channel (created if needed) without
// publishing it, as if its publication had been lost.
func (s *Server) Store(ch, from, text string) wire.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.channelLocked(ch, from)
	m := wire.Message{Channel: ch, From: from, Text: text, Seq: uint64(len(c.msgs) + 1), Lamport: s.lamport.Tick(), Time: s.nowLocked()}
	c.msgs = append(c.msgs, m)
	return m
}

// Messages returns a channel's stored messages.
func (s *Server) Messages(ch string) []wire.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.channels[ch]; c != nil {
		return slices.Clone(c.msgs)
	}
	return nil
}

// Post stores a message and publishes it.
func (s *Server) Post(ch, from, text string) wire.Message {
	m := s.Store(ch, from, text)
	s.Publish(wire.ChannelTopic(ch), wire.EventMessage, s.Epoch(), m)
	return m
}

// Publish sends a publication as the pubsub would deliver it.
func (s *Server) Publish(topic, typ string, epoch uint64, m wire.Message) {
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	b := wire.Encode(wire.Publication{Type: typ, Epoch: epoch, Message: m})
	if err := s.pub.Send(zmq4.NewMsgFrom([]byte(topic), b)); err != nil {
		s.t.Errorf("fake pubsub: publish %s: %v", topic, err)
	}
}

// WaitSubscribed waits until some subscriber has subscribed to every topic.
func (s *Server) WaitSubscribed(topics ...string) {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.pubMu.Lock()
		have := s.pub.(zmq4.Topics).Topics()
		s.pubMu.Unlock()
		missing := ""
		for _, t := range topics {
			if !slices.Contains(have, t) {
				missing = t
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("fake pubsub: no subscription to %q after 10s (have %q)", missing, have)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not waiting for time to pass
	}
}

// RestartBroker closes the broker and binds a new one on the same address:
// requests in flight are lost and clients must reconnect.
func (s *Server) RestartBroker() {
	s.t.Helper()
	_ = s.router.Close()
	s.in.Wait()
	<-s.done
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.router = zmq4.NewRouter(s.ctx, zmq4.WithLogger(zmqx.StdLogger(nil)))
		err := zmqx.Bind(s.router, s.Broker)
		if err == nil {
			break
		}
		_ = s.router.Close()
		if time.Now().After(deadline) {
			s.t.Fatalf("fake broker: rebind %s: %v", s.Broker, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.in = zmqx.NewInbox(s.ctx, s.router, 64)
	s.done = make(chan struct{})
	go s.serve()
}

// RestartPubSub closes the pubsub and binds a new one on the same address:
// subscribers must reconnect and subscribe again.
func (s *Server) RestartPubSub() {
	s.t.Helper()
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	_ = s.pub.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.pub = zmq4.NewPub(s.ctx, zmq4.WithLogger(zmqx.StdLogger(nil)))
		err := zmqx.Bind(s.pub, s.PubSub)
		if err == nil {
			return
		}
		_ = s.pub.Close()
		if time.Now().After(deadline) {
			s.t.Fatalf("fake pubsub: rebind %s: %v", s.PubSub, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *Server) serve() {
	defer close(s.done)
	for msg := range s.in.C {
		if len(msg.Frames) != 3 || len(msg.Frames[1]) != 0 {
			s.t.Errorf("fake broker: got %d frames, want [identity, empty, request]", len(msg.Frames))
			continue
		}
		id := msg.Frames[0]
		rep, pubs, send, delay := s.handle(msg.Frames[2])
		for _, p := range pubs {
			s.Publish(p.topic, p.typ, p.epoch, p.msg)
		}
		if !send {
			continue
		}
		out := zmq4.NewMsgFrom(id, []byte{}, wire.Encode(rep))
		if delay > 0 {
			router := s.router
			s.wg.Go(func() {
				select {
				case <-time.After(delay):
					_ = router.Send(out)
				case <-s.ctx.Done():
				}
			})
			continue
		}
		if err := s.router.Send(out); err != nil && s.ctx.Err() == nil {
			s.t.Logf("fake broker: reply: %v", err)
		}
	}
}

type publication struct {
	topic, typ string
	epoch      uint64
	msg        wire.Message
}

func (s *Server) handle(frame []byte) (*wire.Reply, []publication, bool, time.Duration) {
	req, werr := wire.DecodeRequest(frame)
	if werr != nil {
		return wire.ErrorReply(nil, werr), nil, true, 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, *req)
	s.lamport.Witness(req.Lamport)
	if s.unavailable > 0 {
		s.unavailable--
		rep := wire.ErrorReply(nil, wire.Errorf(wire.CodeUnavailable, "no chat server is leading right now"))
		return rep, nil, true, 0
	}
	key := fmt.Sprintf("%s/%d", req.Client, req.Req)
	var pubs []publication
	rep, seen := s.answered[key]
	if !seen || req.Client == "" {
		rep, pubs = s.apply(req)
		rep.Lamport = s.lamport.Tick()
		rep.Epoch = s.epoch
		now := s.nowLocked()
		rep.Time, rep.Server = &now, 1
		if req.Client != "" {
			s.answered[key] = rep
		}
	}
	send, delay := true, time.Duration(0)
	if s.dropReplies > 0 {
		s.dropReplies--
		send = false
	}
	if s.delayN > 0 {
		s.delayN--
		delay = s.delay
	}
	return rep, pubs, send, delay
}

func (s *Server) nowLocked() time.Time { return time.Now().Add(s.skew).UTC() }

func (s *Server) apply(req *wire.Request) (*wire.Reply, []publication) {
	fail := func(code, format string, args ...any) (*wire.Reply, []publication) {
		return wire.ErrorReply(req, wire.Errorf(code, format, args...)), nil
	}
	ok := func(data any) (*wire.Reply, []publication) { return wire.OKReply(req, data), nil }

	var me string
	switch req.Service {
	case wire.Register, wire.Login, wire.Time, wire.Status:
	default:
		me = s.tokens[req.Token]
		if me == "" {
			return fail(wire.CodeUnauthorized, "log in first")
		}
	}
	switch req.Service {
	case wire.Register:
		var c wire.Credentials
		if e := wire.DecodeData(req, &c); e != nil {
			return wire.ErrorReply(req, e), nil
		}
		if e := wire.ValidName("user", c.User); e != nil {
			return wire.ErrorReply(req, e), nil
		}
		if len(c.Password) < wire.MinPasswordLen {
			return fail(wire.CodeBadRequest, "password is shorter than %d characters", wire.MinPasswordLen)
		}
		if s.users[c.User] != nil {
			return fail(wire.CodeExists, "user %q already exists", c.User)
		}
		s.users[c.User] = &user{password: c.Password, channels: map[string]bool{}}
		return ok(nil)
	case wire.Login:
		var c wire.Credentials
		if e := wire.DecodeData(req, &c); e != nil {
			return wire.ErrorReply(req, e), nil
		}
		u := s.users[c.User]
		if u == nil || u.password != c.Password {
			return fail(wire.CodeBadCredentials, "unknown user or wrong password")
		}
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		tok := hex.EncodeToString(b)
		s.tokens[tok] = c.User
		var chans []string
		for ch := range u.channels {
			chans = append(chans, ch)
		}
		sort.Strings(chans)
		return ok(wire.LoginReply{User: c.User, Token: tok, Expires: time.Now().Add(time.Hour).UTC(), Channels: chans,
			Mailbox: uint64(len(u.mailbox)), Topic: wire.DMTopic(c.User)})
	case wire.Logout:
		delete(s.tokens, req.Token)
		return ok(nil)
	case wire.Channels:
		var r wire.ChannelsReply
		for _, c := range s.channels {
			r.Channels = append(r.Channels, s.infoLocked(c, me))
		}
		sort.Slice(r.Channels, func(i, j int) bool { return r.Channels[i].Name < r.Channels[j].Name })
		return ok(r)
	case wire.Users:
		var r wire.UsersReply
		for name := range s.users {
			r.Users = append(r.Users, wire.UserInfo{Name: name, Online: name == me})
		}
		sort.Slice(r.Users, func(i, j int) bool { return r.Users[i].Name < r.Users[j].Name })
		return ok(r)
	case wire.Create:
		var cr wire.CreateRequest
		if e := wire.DecodeData(req, &cr); e != nil {
			return wire.ErrorReply(req, e), nil
		}
		if e := wire.ValidName("channel", cr.Channel); e != nil {
			return wire.ErrorReply(req, e), nil
		}
		if s.channels[cr.Channel] != nil {
			return fail(wire.CodeExists, "channel %q already exists", cr.Channel)
		}
		c := s.channelLocked(cr.Channel, me)
		c.info.Description = cr.Description
		c.info.Members = 1
		s.users[me].channels[cr.Channel] = true
		return ok(wire.ChannelsReply{Channels: []wire.ChannelInfo{s.infoLocked(c, me)}})
	case wire.Join, wire.Leave:
		var nr wire.NameRequest
		if e := wire.DecodeData(req, &nr); e != nil {
			return wire.ErrorReply(req, e), nil
		}
		c := s.channels[nr.Channel]
		if c == nil {
			return fail(wire.CodeNotFound, "channel %q does not exist", nr.Channel)
		}
		u := s.users[me]
		if req.Service == wire.Join && !u.channels[nr.Channel] {
			u.channels[nr.Channel] = true
			c.info.Members++
		}
		if req.Service == wire.Leave {
			if !u.channels[nr.Channel] {
				return fail(wire.CodeNotMember, "you are not a member of %q", nr.Channel)
			}
			delete(u.channels, nr.Channel)
			c.info.Members--
		}
		return ok(wire.ChannelsReply{Channels: []wire.ChannelInfo{s.infoLocked(c, me)}})
	case wire.Post:
		var pr wire.PostRequest
		if e := wire.DecodeData(req, &pr); e != nil {
			return wire.ErrorReply(req, e), nil
		}
		c := s.channels[pr.Channel]
		if c == nil {
			return fail(wire.CodeNotFound, "channel %q does not exist", pr.Channel)
		}
		if !s.users[me].channels[pr.Channel] {
			return fail(wire.CodeNotMember, "join %q first", pr.Channel)
		}
		if pr.Text == "" {
			return fail(wire.CodeBadRequest, "text is empty")
		}
		m := wire.Message{Channel: pr.Channel, From: me, Text: pr.Text, Seq: uint64(len(c.msgs) + 1), Lamport: s.lamport.Tick(), Time: s.nowLocked()}
		c.msgs = append(c.msgs, m)
		return wire.OKReply(req, wire.MessageReply{Message: m}),
			[]publication{{wire.ChannelTopic(pr.Channel), wire.EventMessage, s.epoch, m}}
	case wire.DM:
		var dr wire.DMRequest
		if e := wire.DecodeData(req, &dr); e != nil {
			return wire.ErrorReply(req, e), nil
		}
		to := s.users[dr.To]
		if to == nil {
			return fail(wire.CodeNotFound, "user %q does not exist", dr.To)
		}
		lam, now := s.lamport.Tick(), s.nowLocked()
		var pubs []publication
		var mine wire.Message
		for _, name := range []string{dr.To, me} {
			u := s.users[name]
			m := wire.Message{From: me, To: dr.To, Text: dr.Text, Seq: uint64(len(u.mailbox) + 1), Lamport: lam, Time: now}
			u.mailbox = append(u.mailbox, m)
			pubs = append(pubs, publication{wire.DMTopic(name), wire.EventDM, s.epoch, m})
			mine = m
			if dr.To == me {
				break
			}
		}
		return wire.OKReply(req, wire.MessageReply{Message: mine}), pubs
	case wire.History:
		var hr wire.HistoryRequest
		if e := wire.DecodeData(req, &hr); e != nil {
			return wire.ErrorReply(req, e), nil
		}
		var msgs []wire.Message
		if hr.Direct {
			msgs = s.users[me].mailbox
		} else {
			c := s.channels[hr.Channel]
			if c == nil {
				return fail(wire.CodeNotFound, "channel %q does not exist", hr.Channel)
			}
			msgs = c.msgs
		}
		limit := hr.Limit
		if limit <= 0 {
			limit = wire.DefaultHistory
		}
		limit = min(limit, wire.MaxHistory)
		var out []wire.Message
		for _, m := range msgs {
			if m.Seq > hr.After && (hr.Before == 0 || m.Seq < hr.Before) {
				out = append(out, m)
			}
		}
		if len(out) > limit {
			out = out[len(out)-limit:]
		}
		return ok(wire.HistoryReply{Messages: slices.Clone(out), Seq: uint64(len(msgs))})
	case wire.Time:
		return ok(wire.TimeReply{Time: s.nowLocked(), Lamport: s.lamport.Now()})
	case wire.Status:
		return ok(wire.StatusReply{Leader: 1, Epoch: s.epoch, Servers: []wire.ServerStatus{{ID: 1, Role: wire.RoleLeader, Epoch: s.epoch, Seen: time.Now().UTC()}}})
	case wire.Ping:
		return ok(nil)
	default:
		return fail(wire.CodeUnknownService, "unknown service %q", req.Service)
	}
}

func (s *Server) infoLocked(c *channel, me string) wire.ChannelInfo {
	info := c.info
	info.Seq = uint64(len(c.msgs))
	info.Joined = me != "" && s.users[me] != nil && s.users[me].channels[c.info.Name]
	return info
}
