package server

import (
	"context"
	"encoding/base64"
	"errors"
	"slices"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/golang-jwt/jwt/v5"

	"chat/internal/mailbox"
	"chat/store"
	"chat/wire"
)

// maxLamportLead bounds how far ahead of the server a client's Lamport clock may be.
const maxLamportLead = 1 << 40

// handle answers one message from the broker: [client identity, "", request].
func (s *Server) handle(msg zmq4.Msg) {
	f := msg.Frames
	if len(f) < 2 {
		return // a control message from the broker or noise: nothing to answer
	}
	ident := f[0]
	if len(f) != 3 || len(f[1]) != 0 {
		s.reply(ident, wire.ErrorReply(nil, wire.Errorf(wire.CodeBadRequest,
			"a request is two frames: an empty delimiter, then one JSON object")))
		return
	}
	req, werr := wire.DecodeRequest(f[2])
	if werr != nil {
		s.reply(ident, wire.ErrorReply(nil, werr))
		return
	}
	if len(req.Client) > maxClientID {
		s.reply(ident, wire.ErrorReply(req, wire.Errorf(wire.CodeBadRequest, "client id is longer than %d bytes", maxClientID)))
		return
	}
	// A client may be ahead, but not by an absurd amount: a clock pushed
	// near 2^64 would wrap around and run backwards.
	if req.Lamport > s.lamport.Now()+maxLamportLead {
		s.reply(ident, wire.ErrorReply(req, wire.Errorf(wire.CodeBadRequest, "lamport %d is implausibly far ahead of the server's clock", req.Lamport)))
		return
	}
	s.lamport.Witness(req.Lamport)
	if s.epoch.Load() == 0 {
		s.reply(ident, wire.ErrorReply(req, wire.Errorf(wire.CodeNotLeader, "this server is not the leader; retry")))
		return
	}
	switch req.Service {
	case wire.Register:
		s.register(ident, req)
	case wire.Login:
		s.login(ident, req)
	case wire.Time:
		now := s.clock.Now()
		s.reply(ident, wire.OKReply(req, wire.TimeReply{Time: now, Lamport: s.lamport.Now()}))
	case wire.Status:
		s.status(ident, req)
	case wire.Ping:
		if user, err := s.auth(req); err == nil {
			s.presence[user] = time.Now()
		}
		s.reply(ident, wire.OKReply(req, nil))
	case wire.Channels, wire.Users, wire.History, wire.Create, wire.Join, wire.Leave, wire.Post, wire.DM, wire.Logout:
		user, err := s.auth(req)
		if err != nil {
			s.reply(ident, wire.ErrorReply(req, err))
			return
		}
		s.presence[user] = time.Now()
		s.authed(ident, req, user)
	default:
		s.reply(ident, wire.ErrorReply(req, wire.Errorf(wire.CodeUnknownService,
			"unknown service %q; see PROTOCOL.md for the list", req.Service)))
	}
}

// auth checks the request's token.
func (s *Server) auth(req *wire.Request) (string, *wire.Error) {
	if req.Token == "" {
		return "", wire.Errorf(wire.CodeUnauthorized, "log in first")
	}
	user, issued, err := s.tokens.Check(req.Token, s.clock.Now())
	if err != nil {
		return "", wire.Errorf(wire.CodeUnauthorized, "session token rejected (%s): log in again", tokenProblem(err))
	}
	_, revoked, ok := s.m.UserAuth(user)
	if !ok {
		return "", wire.Errorf(wire.CodeUnauthorized, "session token rejected (no such user): log in again")
	}
	if !revoked.IsZero() && !issued.After(revoked) {
		return "", wire.Errorf(wire.CodeUnauthorized, "session ended by logout: log in again")
	}
	return user, nil
}

func tokenProblem(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "expired"
	default:
		return "invalid"
	}
}

// authed serves the services that need a session.
func (s *Server) authed(ident []byte, req *wire.Request, user string) {
	switch req.Service {
	case wire.Channels:
		s.reply(ident, wire.OKReply(req, wire.ChannelsReply{Channels: s.m.Channels(user)}))
	case wire.Users:
		s.reply(ident, wire.OKReply(req, s.users()))
	case wire.History:
		var q wire.HistoryRequest
		if len(req.Data) > 0 {
			if err := wire.DecodeData(req, &q); err != nil {
				s.reply(ident, wire.ErrorReply(req, err))
				return
			}
		}
		h, err := s.m.History(user, q)
		if err != nil {
			s.reply(ident, wire.ErrorReply(req, err))
			return
		}
		s.reply(ident, wire.OKReply(req, h))
	default:
		cmd, err := s.command(req, user)
		if err != nil {
			s.reply(ident, wire.ErrorReply(req, err))
			return
		}
		if !s.isRetry(user, req) && req.Service != wire.Logout {
			if ok, wait := s.changes.allow(user, time.Now()); !ok {
				s.reply(ident, wire.ErrorReply(req, wire.Errorf(wire.CodeRateLimited,
					"%s is sending too fast: wait %s", user, waitText(wait))))
				return
			}
		}
		s.write(ident, req, cmd, nil)
	}
}

// command turns a write request into a log command, rejecting what is
// malformed before it takes a place in the log.
func (s *Server) command(req *wire.Request, user string) (*store.Command, *wire.Error) {
	c := &store.Command{Op: req.Service, User: user}
	switch req.Service {
	case wire.Create:
		var d wire.CreateRequest
		if err := wire.DecodeValid(req, &d); err != nil {
			return nil, err
		}
		c.Name, c.Description = d.Channel, d.Description
	case wire.Join, wire.Leave:
		var d wire.NameRequest
		if err := wire.DecodeValid(req, &d); err != nil {
			return nil, err
		}
		c.Name = d.Channel
	case wire.Post:
		var d wire.PostRequest
		if err := wire.DecodeValid(req, &d); err != nil {
			return nil, err
		}
		c.Name, c.Text = d.Channel, d.Text
	case wire.DM:
		var d wire.DMRequest
		if err := wire.DecodeValid(req, &d); err != nil {
			return nil, err
		}
		c.To, c.Text = d.To, d.Text
	}
	return c, nil
}

// write queues cmd for the next batch, unless the request was answered
// before (a retry): then the original answer is sent again.
func (s *Server) write(ident []byte, req *wire.Request, cmd *store.Command, done func(store.Result)) {
	if req.Client != "" {
		key := dedupeKey(cmd.User, req.Client)
		if res, found, stale := s.m.Answered(key, req.Req); stale {
			s.reply(ident, wire.ErrorReply(req, wire.Errorf(wire.CodeStale, "request %d was superseded by a newer one from this client", req.Req)))
			return
		} else if found {
			if done != nil {
				done(res)
			} else {
				s.replyResult(ident, req, res, s.lamport.Now())
			}
			return
		}
		cmd.Client, cmd.Req = key, req.Req
	}
	cmd.Lamport = s.lamport.Tick()
	cmd.Time = s.clock.Now()
	s.batch = append(s.batch, &pendingWrite{req: req, ident: ident, cmd: cmd, done: done})
}

// flush makes the batch durable, then applies it by reading it back from the
// log (so the leader's state follows the log exactly as the followers' does),
// replying and publishing as each entry is applied.
func (s *Server) flush() {
	if len(s.batch) == 0 {
		return
	}
	batch := s.batch
	s.batch = nil
	ep := s.epoch.Load()
	if ep == 0 {
		for _, w := range batch {
			s.reply(w.ident, wire.ErrorReply(w.req, wire.Errorf(wire.CodeNotLeader, "this server stopped leading; retry")))
		}
		return
	}
	payloads := make([][]byte, 0, len(batch))
	kept := batch[:0]
	for _, w := range batch {
		b, err := store.EncodeCommand(w.cmd)
		if err != nil {
			s.log.Error("encode command", "op", w.cmd.Op, "err", err)
			s.reply(w.ident, wire.ErrorReply(w.req, wire.Errorf(wire.CodeInternal, "the server could not store the change")))
			continue
		}
		payloads = append(payloads, b)
		kept = append(kept, w)
	}
	batch = kept
	if len(batch) == 0 {
		return
	}
	if err := s.lg.Append(ep, payloads); err != nil {
		fenced := errors.Is(err, store.ErrFenced)
		if !fenced {
			s.log.Error("append to log", "err", err, "entries", len(batch))
		}
		for _, w := range batch {
			code, msg := wire.CodeNotLeader, "this server stopped leading; retry"
			if !fenced {
				code, msg = wire.CodeInternal, "the server could not store the change; retry"
			}
			s.reply(w.ident, wire.ErrorReply(w.req, wire.Errorf(code, "%s", msg)))
		}
		s.elector.StepDown()
		s.stopLeading("append failed", ep)
		return
	}
	s.pending = append(s.pending, batch...)
	if _, err := s.catchUp(); err != nil {
		s.log.Error("read back own entries", "err", err)
	}
	if len(s.pending) > 0 {
		s.log.Error("own entries missing from the log: stepping down", "missing", len(s.pending))
		s.elector.StepDown()
		s.stopLeading("own entries missing", ep)
	}
}

// replyResult sends the reply of an applied (or remembered) command.
func (s *Server) replyResult(ident []byte, req *wire.Request, res store.Result, lamport uint64) {
	var rep *wire.Reply
	if res.Err != nil {
		rep = wire.ErrorReply(req, res.Err)
	} else {
		rep = &wire.Reply{Service: req.Service, OK: true, Req: req.Req, Data: res.Data}
	}
	rep.Lamport = lamport
	s.send(ident, rep)
}

// reply sends a reply built here, stamping it with a Lamport tick.
func (s *Server) reply(ident []byte, rep *wire.Reply) {
	rep.Lamport = s.lamport.Tick()
	s.send(ident, rep)
}

func (s *Server) send(ident []byte, rep *wire.Reply) {
	rep.Epoch = s.epoch.Load()
	rep.Server = s.cfg.ID
	now := s.clock.Now()
	rep.Time = &now
	if !s.backend.Send(zmq4.NewMsgFrom(ident, nil, wire.Encode(rep))) {
		s.log.Warn("reply queue full: reply dropped (the client will retry)", "service", rep.Service)
	}
}

// register hashes the password on a worker (argon2id is slow on purpose),
// then appends the new user.
func (s *Server) register(ident []byte, req *wire.Request) {
	var d wire.Credentials
	if err := wire.DecodeData(req, &d); err != nil {
		s.reply(ident, wire.ErrorReply(req, err))
		return
	}
	if err := validCredentials(d); err != nil {
		s.reply(ident, wire.ErrorReply(req, err))
		return
	}
	if req.Client != "" {
		if res, found, _ := s.m.Answered(dedupeKey(d.User, req.Client), req.Req); found {
			s.replyResult(ident, req, res, s.lamport.Now())
			return
		}
	}
	if s.m.HasUser(d.User) {
		s.reply(ident, wire.ErrorReply(req, wire.Errorf(wire.CodeExists, "user name %q is taken", d.User)))
		return
	}
	if ok, wait := s.signups.allow(clientKey(ident, req), time.Now()); !ok {
		s.reply(ident, wire.ErrorReply(req, wire.Errorf(wire.CodeRateLimited, "too many registrations from this client: wait %s", waitText(wait))))
		return
	}
	s.offload(ident, req, func() func() {
		hash, err := HashPassword(d.Password)
		return func() {
			if err != nil {
				s.log.Error("hash password", "err", err)
				s.reply(ident, wire.ErrorReply(req, wire.Errorf(wire.CodeInternal, "registration failed; retry")))
				return
			}
			if s.epoch.Load() == 0 {
				s.reply(ident, wire.ErrorReply(req, wire.Errorf(wire.CodeNotLeader, "this server stopped leading; retry")))
				return
			}
			s.write(ident, req, &store.Command{Op: wire.Register, User: d.User, Hash: hash}, nil)
		}
	})
}

// login checks the password on a worker and issues a token.
func (s *Server) login(ident []byte, req *wire.Request) {
	var d wire.Credentials
	if err := wire.DecodeData(req, &d); err != nil {
		s.reply(ident, wire.ErrorReply(req, err))
		return
	}
	if err := validCredentials(d); err != nil {
		s.reply(ident, wire.ErrorReply(req, err))
		return
	}
	userKey, fromKey := "user:"+d.User, "client:"+clientKey(ident, req)
	now := time.Now()
	if wait := max(s.logins.wait(userKey, now), s.logins.wait(fromKey, now)); wait > 0 {
		s.reply(ident, wire.ErrorReply(req, wire.Errorf(wire.CodeRateLimited,
			"too many failed logins: wait %s before trying again", waitText(wait))))
		return
	}
	hash, _, exists := s.m.UserAuth(d.User)
	if !exists {
		hash = dummyHash
	}
	s.offload(ident, req, func() func() {
		ok, err := CheckPassword(hash, d.Password)
		return func() {
			if err != nil {
				s.log.Error("check password", "user", d.User, "err", err)
			}
			if !ok || !exists {
				s.logins.fail(userKey, time.Now())
				s.logins.fail(fromKey, time.Now())
				s.reply(ident, wire.ErrorReply(req, wire.Errorf(wire.CodeBadCredentials, "wrong user name or password")))
				return
			}
			s.logins.succeed(userKey)
			s.logins.succeed(fromKey)
			token, exp, err := s.tokens.Issue(d.User, s.clock.Now())
			if err != nil {
				s.log.Error("issue token", "err", err)
				s.reply(ident, wire.ErrorReply(req, wire.Errorf(wire.CodeInternal, "login failed; retry")))
				return
			}
			s.presence[d.User] = time.Now()
			key := mailbox.Key(s.tokens.Primary(), d.User)
			s.reply(ident, wire.OKReply(req, wire.LoginReply{
				User: d.User, Token: token, Expires: exp,
				Channels: s.m.Memberships(d.User), Mailbox: s.m.MailboxSeq(d.User),
				Topic: mailbox.Topic(key), Key: base64.StdEncoding.EncodeToString(key),
			}))
		}
	})
}

// offload runs slow on a worker; what it returns runs back on the core.
func (s *Server) offload(ident []byte, req *wire.Request, slow func() func()) {
	select {
	case s.jobs <- func() { s.later(slow()) }:
	default:
		s.reply(ident, wire.ErrorReply(req, wire.Errorf(wire.CodeRateLimited, "the server is busy checking passwords; retry in a moment")))
	}
}

// isRetry reports whether req, from user, is a retry of a request already
// answered (a retry costs nothing against rate limits: it is answered from
// memory).
func (s *Server) isRetry(user string, req *wire.Request) bool {
	if req.Client == "" {
		return false
	}
	_, found, _ := s.m.Answered(dedupeKey(user, req.Client), req.Req)
	return found
}

// maxClientID bounds a request's client id (the dedupe key adds the user).
const maxClientID = 64

// dedupeKey is the key of a client's answered requests in the replicated
// dedupe table: the client id within the user it acts as. Keyed by client id
// alone, anyone who learned another client's id could replay its request
// numbers and be handed that client's answers (its direct messages).
func dedupeKey(user, client string) string { return user + "/" + client }

// clientKey names the client a request comes from, for rate limits: its
// client id, or else its connection.
func clientKey(ident []byte, req *wire.Request) string {
	if req.Client != "" {
		return req.Client
	}
	return string(ident)
}

func validCredentials(d wire.Credentials) *wire.Error {
	if err := wire.ValidName("user", d.User); err != nil {
		return err
	}
	if len(d.Password) < wire.MinPasswordLen || len(d.Password) > wire.MaxPasswordLen {
		return wire.Errorf(wire.CodeBadRequest, "password must be %d to %d bytes", wire.MinPasswordLen, wire.MaxPasswordLen)
	}
	return nil
}

// users lists every user with presence; never a hash.
func (s *Server) users() wire.UsersReply {
	now := time.Now()
	out := wire.UsersReply{Users: []wire.UserInfo{}}
	for _, name := range s.m.Users() {
		u := wire.UserInfo{Name: name}
		if seen, ok := s.presence[name]; ok {
			u.Online = now.Sub(seen) < s.cfg.OnlineFor
			t := s.clock.Now().Add(-now.Sub(seen))
			u.LastSeen = &t
		}
		out.Users = append(out.Users, u)
	}
	return out
}

// status probes every peer (off the core goroutine) and reports the cluster.
func (s *Server) status(ident []byte, req *wire.Request) {
	self := s.peerState()
	ids := s.peers.ids()
	go func() {
		ctx, cancel := context.WithTimeout(s.ctx, 300*time.Millisecond)
		defer cancel()
		type probe struct {
			id   int
			st   peerState
			sent time.Time
			rtt  time.Duration
			ok   bool
		}
		c := make(chan probe, len(ids))
		for _, id := range ids {
			go func() {
				sent := s.clock.Now()
				st, rtt, ok := s.peers.state(ctx, id)
				c <- probe{id, st, sent, rtt, ok}
			}()
		}
		rep := wire.StatusReply{Leader: s.cfg.ID, Epoch: self.Epoch, Index: self.Index}
		rep.Servers = append(rep.Servers, serverStatus(self, self, self.Time, 0))
		for range ids {
			p := <-c
			if !p.ok {
				rep.Servers = append(rep.Servers, wire.ServerStatus{ID: p.id, Role: wire.RoleUnreachable})
				continue
			}
			rep.Servers = append(rep.Servers, serverStatus(p.st, self, p.sent, p.rtt))
		}
		slices.SortFunc(rep.Servers, func(a, b wire.ServerStatus) int { return a.ID - b.ID })
		s.later(func() { s.reply(ident, wire.OKReply(req, rep)) })
	}()
}

func serverStatus(st, leader peerState, sent time.Time, rtt time.Duration) wire.ServerStatus {
	out := wire.ServerStatus{ID: st.ID, Role: st.Role, Epoch: st.Epoch, Index: st.Index,
		Correction: float64(st.Correction) / 1e6, Seen: st.Time}
	if leader.Index > st.Index {
		out.Lag = leader.Index - st.Index
	}
	// The peer's clock when it answered, against the leader's at the middle
	// of the round trip.
	out.Offset = float64(st.Time.Sub(sent.Add(rtt/2))) / 1e6
	if st.ID == leader.ID {
		out.Offset = 0
	}
	return out
}
