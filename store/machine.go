package store

import (
	"encoding/json"
	"slices"
	"strings"
	"time"

	"chat/wire"
)

// Limits of the dedupe table and of command fields the machine enforces on
// top of wire's limits.
const (
	// SessionTTL is how long the machine remembers a client's last answer
	// after that client's last applied command, measured in command Time.
	SessionTTL = 24 * time.Hour
	// MaxSessions caps the dedupe table; the least recently used client is
	// forgotten first.
	MaxSessions = 100_000
	// MaxClientLen is the longest client id the machine deduplicates.
	MaxClientLen = 128
	// MaxHashLen is the longest password hash register accepts.
	MaxHashLen = 1024
)

// Result is the machine's answer to one command. Err is nil on success.
// Data is the reply's data, JSON-encoded. Events are what the leader
// publishes once the command is durable; their Pub.Epoch is left 0 for the
// server to fill. Callers must not modify Data: the dedupe table keeps it.
type Result struct {
	Err    *wire.Error     `json:"error,omitempty"`
	Data   json.RawMessage `json:"data,omitempty"`
	Events []Event         `json:"-"`
}

// Event is one publication a command produced.
type Event struct {
	Topic string
	Pub   wire.Publication
}

// UserReply is the data of register and logout.
type UserReply struct {
	User string `json:"user"`
}

// Machine is the chat state: users, channels, memberships, messages, the
// Lamport clock, the applied log index and the dedupe table. It changes only
// through Apply (or Restore), deterministically: every server that applies the
// same commands in the same order holds the same state and returns the same
// results.
//
// A Machine is not safe for concurrent use. Its query methods do not modify
// it, so a caller may serialize Apply against queries with a sync.RWMutex.
type Machine struct {
	index   uint64
	lamport uint64

	users        map[string]*user
	userNames    []string // sorted
	channels     map[string]*channel
	channelNames []string // sorted

	sessions    map[string]*session
	oldest      *session // least recently used; the list runs oldest -> newest
	newest      *session
	maxSessions int // MaxSessions; lowered only by tests
}

type user struct {
	name     string // the canonical copy every message and member set shares
	hash     string
	revoked  time.Time           // tokens issued at or before are revoked
	mailbox  stream              // direct messages to and from this user
	channels map[string]struct{} // memberships
}

type channel struct {
	name    string
	desc    string
	owner   string
	created time.Time
	members map[string]struct{}
	msgs    stream
}

// session is what the dedupe table keeps of one client: its last answered
// request and the answer, in a list ordered by last use.
type session struct {
	client     string
	req        uint64
	time       time.Time // Time of the client's last applied command
	result     Result    // without Events
	prev, next *session
}

// New returns an empty machine.
func New() *Machine {
	return &Machine{
		users:       make(map[string]*user),
		channels:    make(map[string]*channel),
		sessions:    make(map[string]*session),
		maxSessions: MaxSessions,
	}
}

// Command times the machine accepts: years 0 to 9999, as RFC 3339 can write them.
const (
	minUnix = -62167219200 // 0000-01-01T00:00:00Z
	maxUnix = 253402300799 // 9999-12-31T23:59:59Z
)

// Apply applies the command at log position index and returns its result.
// It sets the applied index to index and the Lamport clock to
// max(Lamport(), c.Lamport), whatever the outcome.
//
// c.Time is applied in UTC, so a leader applying the command it built and a
// follower applying the decoded log entry agree. Two commands are refused
// before dedupe, leaving no trace: a Client longer than MaxClientLen and a
// Time outside the years 0 to 9999 (which no log entry can hold).
//
// A command with a Client and a non-zero Req is applied at most once: if the
// machine already answered (Client, Req) it returns that answer again, without
// Events and without changing anything else; a Req lower than the client's
// last answered one fails with wire.CodeStale. Failed commands are
// remembered like successful ones: the answer is the answer.
func (m *Machine) Apply(index uint64, c *Command) Result {
	m.index = index
	if c == nil {
		return fail(wire.CodeBadRequest, "empty command")
	}
	m.lamport = max(m.lamport, c.Lamport)

	// Refused before dedupe, so nothing of them is stored.
	if len(c.Client) > MaxClientLen {
		return fail(wire.CodeBadRequest, "client id is longer than %d bytes", MaxClientLen)
	}
	if sec := c.Time.Unix(); sec < minUnix || sec > maxUnix {
		return fail(wire.CodeBadRequest, "command time is outside the years 0 to 9999")
	}
	now := c.Time.UTC() // no monotonic reading, no zone: the same on every server

	deduped := c.Client != "" && c.Req != 0
	if deduped {
		if s := m.sessions[c.Client]; s != nil {
			switch {
			case c.Req == s.req:
				return s.result.clone()
			case c.Req < s.req:
				return fail(wire.CodeStale, "request %d is older than request %d, which was already answered", c.Req, s.req)
			}
		}
	}
	m.expireSessions(now)
	r := m.apply(c, now)
	if deduped {
		m.remember(c.Client, c.Req, now, r)
	}
	return r
}

// Answered reports what Apply would do with (client, req) without applying
// it: found with the stored answer (without Events) if the request was
// already answered, stale if a later request of client was.
func (m *Machine) Answered(client string, req uint64) (r Result, found bool, stale bool) {
	if client == "" || req == 0 {
		return Result{}, false, false
	}
	s := m.sessions[client]
	switch {
	case s == nil:
		return Result{}, false, false
	case req == s.req:
		return s.result.clone(), true, false
	case req < s.req:
		return Result{}, false, true
	}
	return Result{}, false, false
}

func (m *Machine) apply(c *Command, now time.Time) Result {
	if c.Op == wire.Register {
		return m.register(c)
	}
	switch c.Op {
	case wire.Create, wire.Join, wire.Leave, wire.Post, wire.DM, wire.Logout:
	default:
		return fail(wire.CodeBadRequest, "unknown command %q", c.Op)
	}
	u := m.users[c.User]
	if u == nil {
		if c.User == "" {
			return fail(wire.CodeUnauthorized, "log in first")
		}
		return fail(wire.CodeUnauthorized, "user %q does not exist: log in again", c.User)
	}
	switch c.Op {
	case wire.Create:
		return m.create(u, c, now)
	case wire.Join:
		return m.join(u, c)
	case wire.Leave:
		return m.leave(u, c)
	case wire.Post:
		return m.post(u, c, now)
	case wire.DM:
		return m.dm(u, c, now)
	default: // wire.Logout
		if now.After(u.revoked) {
			u.revoked = now
		}
		return ok(UserReply{User: u.name})
	}
}

func (m *Machine) register(c *Command) Result {
	if e := wire.ValidName("user", c.User); e != nil {
		return Result{Err: e}
	}
	if m.users[c.User] != nil {
		return fail(wire.CodeExists, "user name %q is taken", c.User)
	}
	if c.Hash == "" || len(c.Hash) > MaxHashLen {
		return fail(wire.CodeBadRequest, "register needs a password hash of 1 to %d bytes", MaxHashLen)
	}
	name := strings.Clone(c.User)
	m.users[name] = &user{name: name, hash: strings.Clone(c.Hash), channels: make(map[string]struct{})}
	m.userNames = insertSorted(m.userNames, name)
	return ok(UserReply{User: name})
}

func (m *Machine) create(u *user, c *Command, now time.Time) Result {
	if e := wire.ValidName("channel", c.Name); e != nil {
		return Result{Err: e}
	}
	if e := wire.ValidText("description", c.Description, wire.MaxDescLen); e != nil {
		return Result{Err: e}
	}
	if m.channels[c.Name] != nil {
		return fail(wire.CodeExists, "channel name %q is taken", c.Name)
	}
	ch := &channel{
		name:    strings.Clone(c.Name),
		desc:    strings.Clone(c.Description),
		owner:   u.name,
		created: now,
		members: map[string]struct{}{u.name: {}},
	}
	m.channels[ch.name] = ch
	m.channelNames = insertSorted(m.channelNames, ch.name)
	u.channels[ch.name] = struct{}{}
	return ok(wire.ChannelsReply{Channels: []wire.ChannelInfo{ch.info(u.name)}})
}

func (m *Machine) join(u *user, c *Command) Result {
	ch, e := m.channel(c.Name)
	if e != nil {
		return Result{Err: e}
	}
	ch.members[u.name] = struct{}{}
	u.channels[ch.name] = struct{}{}
	return ok(wire.ChannelsReply{Channels: []wire.ChannelInfo{ch.info(u.name)}})
}

func (m *Machine) leave(u *user, c *Command) Result {
	ch, e := m.channel(c.Name)
	if e != nil {
		return Result{Err: e}
	}
	if _, in := ch.members[u.name]; !in {
		return fail(wire.CodeNotMember, "you are not a member of channel %q", ch.name)
	}
	delete(ch.members, u.name)
	delete(u.channels, ch.name)
	return ok(wire.ChannelsReply{Channels: []wire.ChannelInfo{ch.info(u.name)}})
}

func (m *Machine) post(u *user, c *Command, now time.Time) Result {
	ch, e := m.channel(c.Name)
	if e != nil {
		return Result{Err: e}
	}
	if _, in := ch.members[u.name]; !in {
		return fail(wire.CodeNotMember, "join channel %q before posting", ch.name)
	}
	if e := checkText(c.Text); e != nil {
		return Result{Err: e}
	}
	ch.msgs.add(msg{from: u.name, text: strings.Clone(c.Text), lamport: c.Lamport, time: now})
	wm := ch.msgs.message(ch.msgs.len()-1, ch.name)
	r := ok(wire.MessageReply{Message: wm})
	if r.Err == nil {
		r.Events = []Event{{Topic: wire.ChannelTopic(ch.name), Pub: wire.Publication{Type: wire.EventMessage, Message: wm}}}
	}
	return r
}

func (m *Machine) dm(u *user, c *Command, now time.Time) Result {
	if e := wire.ValidName("user", c.To); e != nil {
		return Result{Err: e}
	}
	to := m.users[c.To]
	if to == nil {
		return fail(wire.CodeNotFound, "user %q does not exist", c.To)
	}
	if e := checkText(c.Text); e != nil {
		return Result{Err: e}
	}
	x := msg{from: u.name, to: to.name, text: strings.Clone(c.Text), lamport: c.Lamport, time: now}
	to.mailbox.add(x)
	theirs := to.mailbox.message(to.mailbox.len()-1, "")
	events := []Event{{Topic: wire.DMTopic(to.name), Pub: wire.Publication{Type: wire.EventDM, Message: theirs}}}
	mine := theirs
	if to != u {
		u.mailbox.add(x)
		mine = u.mailbox.message(u.mailbox.len()-1, "")
		events = append(events, Event{Topic: wire.DMTopic(u.name), Pub: wire.Publication{Type: wire.EventDM, Message: mine}})
	}
	r := ok(wire.MessageReply{Message: mine})
	if r.Err == nil {
		r.Events = events
	}
	return r
}

// channel returns the channel called name, or why there is none.
func (m *Machine) channel(name string) (*channel, *wire.Error) {
	if e := wire.ValidName("channel", name); e != nil {
		return nil, e
	}
	ch := m.channels[name]
	if ch == nil {
		return nil, wire.Errorf(wire.CodeNotFound, "channel %q does not exist", name)
	}
	return ch, nil
}

func (ch *channel) info(asking string) wire.ChannelInfo {
	_, joined := ch.members[asking]
	return wire.ChannelInfo{
		Name:        ch.name,
		Description: ch.desc,
		Owner:       ch.owner,
		Created:     ch.created,
		Members:     len(ch.members),
		Seq:         uint64(ch.msgs.len()),
		Joined:      joined,
		Topic:       wire.ChannelTopic(ch.name),
	}
}

// checkText checks the text of a post or a direct message.
func checkText(s string) *wire.Error {
	if e := wire.ValidText("message", s, wire.MaxTextLen); e != nil {
		return e
	}
	if strings.TrimSpace(s) == "" {
		return wire.Errorf(wire.CodeBadRequest, "message is blank")
	}
	return nil
}

// --- dedupe table ---

// expireSessions forgets clients, oldest first, whose last command is more
// than SessionTTL older than now.
func (m *Machine) expireSessions(now time.Time) {
	cutoff := now.Add(-SessionTTL)
	for s := m.oldest; s != nil && s.time.Before(cutoff); s = m.oldest {
		m.unlink(s)
		delete(m.sessions, s.client)
	}
}

// remember stores r as the answer to client's request req.
func (m *Machine) remember(client string, req uint64, now time.Time, r Result) {
	s := m.sessions[client]
	if s == nil {
		s = &session{client: strings.Clone(client)}
		m.sessions[s.client] = s
	} else {
		m.unlink(s)
	}
	s.req, s.time, s.result = req, now, Result{Err: r.Err, Data: r.Data}
	m.pushNewest(s)
	for len(m.sessions) > m.maxSessions {
		old := m.oldest
		m.unlink(old)
		delete(m.sessions, old.client)
	}
}

func (m *Machine) unlink(s *session) {
	if s.prev != nil {
		s.prev.next = s.next
	} else {
		m.oldest = s.next
	}
	if s.next != nil {
		s.next.prev = s.prev
	} else {
		m.newest = s.prev
	}
	s.prev, s.next = nil, nil
}

func (m *Machine) pushNewest(s *session) {
	s.prev = m.newest
	if m.newest != nil {
		m.newest.next = s
	} else {
		m.oldest = s
	}
	m.newest = s
}

// clone returns a copy of r the caller may keep: Events dropped, Err and
// Data copied.
func (r Result) clone() Result {
	c := Result{Data: slices.Clone(r.Data)}
	if r.Err != nil {
		e := *r.Err
		c.Err = &e
	}
	return c
}

// --- queries ---

// Index returns the log index of the last applied command.
func (m *Machine) Index() uint64 { return m.index }

// Lamport returns the highest Lamport time of any applied command.
func (m *Machine) Lamport() uint64 { return m.lamport }

// UserAuth returns what the leader needs to authenticate name: the password
// hash and the time at or before which the user's tokens are revoked. It is
// the only way a hash leaves the machine.
func (m *Machine) UserAuth(name string) (hash string, revokedBefore time.Time, ok bool) {
	u := m.users[name]
	if u == nil {
		return "", time.Time{}, false
	}
	return u.hash, u.revoked, true
}

// HasUser reports whether a user called name exists.
func (m *Machine) HasUser(name string) bool { return m.users[name] != nil }

// Users returns every user's name, sorted (in byte order: "Zoe" before "ana").
func (m *Machine) Users() []string {
	return append(make([]string, 0, len(m.userNames)), m.userNames...)
}

// Channels describes every channel, sorted by name in byte order, as the
// user asking sees it (Joined).
func (m *Machine) Channels(asking string) []wire.ChannelInfo {
	out := make([]wire.ChannelInfo, 0, len(m.channelNames))
	for _, name := range m.channelNames {
		out = append(out, m.channels[name].info(asking))
	}
	return out
}

// Channel describes the channel called name as the user asking sees it.
func (m *Machine) Channel(name, asking string) (wire.ChannelInfo, bool) {
	ch := m.channels[name]
	if ch == nil {
		return wire.ChannelInfo{}, false
	}
	return ch.info(asking), true
}

// Memberships returns the names of the channels user is a member of, sorted.
func (m *Machine) Memberships(user string) []string {
	u := m.users[user]
	if u == nil {
		return nil
	}
	out := make([]string, 0, len(u.channels))
	for name := range u.channels {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// MailboxSeq returns the sequence number of the last direct message in
// user's mailbox (0 when empty or when there is no such user).
func (m *Machine) MailboxSeq(user string) uint64 {
	u := m.users[user]
	if u == nil {
		return 0
	}
	return uint64(u.mailbox.len())
}

// History returns messages of a channel the asking user is a member of, or
// with q.Direct the asking user's own direct messages: those with a Seq
// strictly between q.After and q.Before (0 = unbounded), the newest q.Limit
// of them (0 = wire.DefaultHistory, at most wire.MaxHistory), oldest first.
// Its cost depends on the number of messages returned, not stored.
func (m *Machine) History(asking string, q wire.HistoryRequest) (wire.HistoryReply, *wire.Error) {
	u := m.users[asking]
	if u == nil {
		return wire.HistoryReply{}, wire.Errorf(wire.CodeUnauthorized, "log in first")
	}
	if q.Limit < 0 {
		return wire.HistoryReply{}, wire.Errorf(wire.CodeBadRequest, "history limit must not be negative")
	}
	s, chName := &u.mailbox, ""
	if !q.Direct {
		if q.Channel == "" {
			return wire.HistoryReply{}, wire.Errorf(wire.CodeBadRequest, "history needs a channel, or direct for your direct messages")
		}
		ch, e := m.channel(q.Channel)
		if e != nil {
			return wire.HistoryReply{}, e
		}
		if _, in := ch.members[u.name]; !in {
			return wire.HistoryReply{}, wire.Errorf(wire.CodeNotMember, "join channel %q to read its history", ch.name)
		}
		s, chName = &ch.msgs, ch.name
	}

	// Message i (0-based) has Seq i+1: Seq > After is i >= After, Seq < Before is i < Before-1.
	n := uint64(s.len())
	lo, hi := min(q.After, n), n
	if q.Before > 0 {
		hi = min(hi, q.Before-1)
	}
	lo = min(lo, hi)
	limit := uint64(wire.DefaultHistory)
	if q.Limit > 0 {
		limit = uint64(min(q.Limit, wire.MaxHistory))
	}
	if hi-lo > limit {
		lo = hi - limit
	}
	out := make([]wire.Message, 0, hi-lo)
	for i := lo; i < hi; i++ {
		out = append(out, s.message(int(i), chName))
	}
	return wire.HistoryReply{Messages: out, Seq: n}, nil
}

// --- helpers ---

func fail(code, format string, args ...any) Result {
	return Result{Err: wire.Errorf(code, format, args...)}
}

// ok encodes data as a successful result.
func ok(data any) Result {
	b, err := json.Marshal(data)
	if err != nil { // unreachable: every time in data passed Apply's range check
		return fail(wire.CodeInternal, "internal error")
	}
	return Result{Data: b}
}

func insertSorted(s []string, v string) []string {
	i, _ := slices.BinarySearch(s, v)
	return slices.Insert(s, i, v)
}
