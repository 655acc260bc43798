// Package wire defines the chat protocol: the request and reply envelopes, the
// publications, every service's data, the topics and the error codes.
// It is pure: no sockets, no clocks. PROTOCOL.md is its prose twin.
//
// Frames (ZeroMQ multipart):
//
//	client  -> broker   [empty, request JSON]            (REQ-compatible)
//	broker  -> server   [client identity, empty, request JSON]
//	server  -> broker   [client identity, empty, reply JSON]
//	server  -> broker   [control JSON]                   (one frame: heartbeat)
//	broker  -> client   [empty, reply JSON]
//	server  -> pubsub -> subscriber   [topic, publication JSON]
package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Services a client may ask for.
const (
	Register = "register"
	Login    = "login"
	Logout   = "logout"
	Channels = "channels"
	Users    = "users"
	Create   = "create"
	Join     = "join"
	Leave    = "leave"
	Post     = "post"
	DM       = "dm"
	History  = "history"
	Time     = "time"
	Status   = "status"
	Ping     = "ping"
)

// Error codes. Clients branch on these; the message is for people.
const (
	CodeBadRequest     = "bad_request"     // malformed frame, JSON or field
	CodeUnknownService = "unknown_service" // no such service
	CodeTooLarge       = "too_large"       // request or field over its limit
	CodeUnauthorized   = "unauthorized"    // missing, invalid or expired token
	CodeBadCredentials = "bad_credentials" // unknown user or wrong password (same code for both)
	CodeExists         = "exists"          // name already taken
	CodeNotFound       = "not_found"       // no such user or channel
	CodeNotMember      = "not_member"      // must join the channel first
	CodeRateLimited    = "rate_limited"    // slow down
	CodeStale          = "stale_request"   // a request number older than one already answered
	CodeNotLeader      = "not_leader"      // reached a server that is not the leader: retry
	CodeUnavailable    = "unavailable"     // no leader right now: retry
	CodeInternal       = "internal"        // the server failed; details are in its log
)

// Retryable reports whether a request that failed with code may succeed if sent again.
func Retryable(code string) bool {
	return code == CodeNotLeader || code == CodeUnavailable
}

// Limits enforced by the servers and documented in PROTOCOL.md.
const (
	MaxRequestBytes = 64 << 10 // one request frame
	MaxNameLen      = 32       // user and channel names
	MinNameLen      = 1
	MaxPasswordLen  = 128
	MinPasswordLen  = 4
	MaxDescLen      = 200
	MaxTextLen      = 4000 // bytes of one message
	MaxHistory      = 500  // messages in one history reply
	DefaultHistory  = 50
)

// Request is what a client sends. Token, Client, Req and Lamport are optional
// for readers; Client+Req make a write idempotent across retries.
type Request struct {
	Service string          `json:"service"`
	Data    json.RawMessage `json:"data,omitempty"`
	Token   string          `json:"token,omitempty"`
	Client  string          `json:"client,omitempty"`  // client id, stable for a session
	Req     uint64          `json:"req,omitempty"`     // request number, grows per client
	Lamport uint64          `json:"lamport,omitempty"` // the sender's Lamport clock
}

// Reply answers one request.
type Reply struct {
	Service string          `json:"service"`
	OK      bool            `json:"ok"`
	Data    json.RawMessage `json:"data,omitempty"`
	Error   *Error          `json:"error,omitempty"`
	Req     uint64          `json:"req,omitempty"`
	Lamport uint64          `json:"lamport,omitempty"`
	Epoch   uint64          `json:"epoch,omitempty"`
	Server  int             `json:"server,omitempty"`
	Time    *time.Time      `json:"time,omitempty"` // the server's (synchronized) clock when it replied
}

// Error is a failed reply's reason.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Errorf builds an *Error with a message for people.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of err if it is (or wraps) an *Error, else "".
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// Heartbeat is the control message a server sends to the broker, alone in its frame.
type Heartbeat struct {
	Type  string `json:"type"` // "heartbeat"
	ID    int    `json:"id"`
	Epoch uint64 `json:"epoch"`
	Role  string `json:"role"` // "leader" or "follower"
}

// Roles of a server.
const (
	RoleLeader      = "leader"
	RoleFollower    = "follower"
	RoleUnreachable = "unreachable"
)

// --- service data ---

// Credentials are the data of register and login.
type Credentials struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// LoginReply is the data of a successful login.
type LoginReply struct {
	User     string    `json:"user"`
	Token    string    `json:"token"`
	Expires  time.Time `json:"expires"`
	Channels []string  `json:"channels"`              // the channels the user is a member of
	Mailbox  uint64    `json:"mailbox_seq"`           // last sequence number of the user's direct messages
	Topic    string    `json:"mailbox_topic"`         // where the user's direct messages are published
	Key      string    `json:"mailbox_key,omitempty"` // base64 key that opens them (see Publication.Sealed)
}

// NameRequest is the data of join and leave.
type NameRequest struct {
	Channel string `json:"channel"`
}

// CreateRequest is the data of create.
type CreateRequest struct {
	Channel     string `json:"channel"`
	Description string `json:"description,omitempty"`
}

// ChannelInfo describes a channel.
type ChannelInfo struct {
	Name        string    `json:"name"`
	Description string    `json:"description,omitempty"`
	Owner       string    `json:"owner"`
	Created     time.Time `json:"created"`
	Members     int       `json:"members"`
	Seq         uint64    `json:"seq"`    // sequence number of the channel's last message
	Joined      bool      `json:"joined"` // whether the asking user is a member
	Topic       string    `json:"topic"`
}

// ChannelsReply is the data of channels, and (with one entry) of create, join and leave.
type ChannelsReply struct {
	Channels []ChannelInfo `json:"channels"`
}

// UserInfo describes a user as others see it: never a password hash.
type UserInfo struct {
	Name     string     `json:"name"`
	Online   bool       `json:"online"`
	LastSeen *time.Time `json:"last_seen,omitempty"`
}

// UsersReply is the data of users.
type UsersReply struct {
	Users []UserInfo `json:"users"`
}

// PostRequest is the data of post.
type PostRequest struct {
	Channel string `json:"channel"`
	Text    string `json:"text"`
}

// DMRequest is the data of dm.
type DMRequest struct {
	To   string `json:"to"`
	Text string `json:"text"`
}

// Message is a channel message or a direct message. Seq numbers the message
// within its stream: the channel, or for a direct message the mailbox of the
// user it is shown to (sender and recipient each have their own numbering).
type Message struct {
	Channel string    `json:"channel,omitempty"`
	From    string    `json:"from"`
	To      string    `json:"to,omitempty"`
	Text    string    `json:"text"`
	Seq     uint64    `json:"seq"`
	Lamport uint64    `json:"lamport"`
	Time    time.Time `json:"time"`
}

// MessageReply is the data of post and dm.
type MessageReply struct {
	Message Message `json:"message"`
}

// HistoryRequest is the data of history: a channel's messages, or with Direct
// the asking user's own direct messages. After and Before bound Seq
// (exclusive, 0 = unbounded); Limit caps the count (newest kept).
type HistoryRequest struct {
	Channel string `json:"channel,omitempty"`
	Direct  bool   `json:"direct,omitempty"`
	After   uint64 `json:"after,omitempty"`
	Before  uint64 `json:"before,omitempty"`
	Limit   int    `json:"limit,omitempty"`
}

// HistoryReply is the data of history, oldest first. Seq is the stream's last
// sequence number when the reply was made.
type HistoryReply struct {
	Messages []Message `json:"messages"`
	Seq      uint64    `json:"seq"`
}

// TimeReply is the data of time: the leader's synchronized clock.
type TimeReply struct {
	Time    time.Time `json:"time"`
	Lamport uint64    `json:"lamport"`
}

// ServerStatus is one server in a status reply.
type ServerStatus struct {
	ID         int       `json:"id"`
	Role       string    `json:"role"`
	Epoch      uint64    `json:"epoch"`
	Index      uint64    `json:"index"` // log position applied
	Lag        uint64    `json:"lag"`   // records behind the leader
	Correction float64   `json:"correction_ms"`
	Offset     float64   `json:"offset_ms"` // software clock minus the leader's, as last measured
	Seen       time.Time `json:"seen"`
}

// StatusReply is the data of status.
type StatusReply struct {
	Leader  int            `json:"leader"`
	Epoch   uint64         `json:"epoch"`
	Index   uint64         `json:"index"`
	Servers []ServerStatus `json:"servers"`
}

// --- publications ---

// Publication types.
const (
	EventMessage = "message"
	EventDM      = "dm"
)

// Publication is the payload published under a topic: a channel message or a
// direct message, with the epoch of the leader that committed it. A direct
// message travels sealed: its Message fields are empty and Sealed holds the
// message's JSON encrypted with the mailbox key of the user whose mailbox
// topic it is published under (XChaCha20-Poly1305: base64 of a 24-byte nonce
// followed by the ciphertext).
type Publication struct {
	Type   string `json:"type"`
	Epoch  uint64 `json:"epoch"`
	Sealed string `json:"sealed,omitempty"`
	Message
}

// ChannelTopic is the topic of a channel's messages. The trailing "/" can't
// occur in a name, so no topic is a prefix of another.
func ChannelTopic(name string) string { return "channel/" + name + "/" }

// DMTopic is the topic of a user's direct messages.
func DMTopic(user string) string { return "dm/" + user + "/" }

// --- validation ---

// ValidName checks a user or channel name: 1-32 characters among letters,
// digits, '_', '-' and '.', starting with a letter or digit. Case is kept and
// significant.
func ValidName(kind, s string) *Error {
	if len(s) < MinNameLen {
		return Errorf(CodeBadRequest, "%s name is empty", kind)
	}
	if len(s) > MaxNameLen {
		return Errorf(CodeBadRequest, "%s name is longer than %d characters", kind, MaxNameLen)
	}
	for i, r := range s {
		ok := r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r) || (i > 0 && strings.ContainsRune("_-.", r)))
		if !ok {
			return Errorf(CodeBadRequest, "%s name %q: use letters, digits, '_', '-' and '.', starting with a letter or digit", kind, s)
		}
	}
	return nil
}

// ValidText checks a message or description: valid UTF-8, within max bytes,
// not blank, no control characters other than newline and tab.
func ValidText(kind, s string, max int) *Error {
	if !utf8.ValidString(s) {
		return Errorf(CodeBadRequest, "%s is not valid UTF-8", kind)
	}
	if len(s) > max {
		return Errorf(CodeTooLarge, "%s is %d bytes, over the limit of %d", kind, len(s), max)
	}
	for _, r := range s {
		if unicode.IsControl(r) && r != '\n' && r != '\t' {
			return Errorf(CodeBadRequest, "%s contains a control character (%U)", kind, r)
		}
	}
	return nil
}

// --- validation of service data (the servers check; a client may too) ---

// Validate checks the data of create.
func (r *CreateRequest) Validate() *Error {
	if err := ValidName("channel", r.Channel); err != nil {
		return err
	}
	return ValidText("description", r.Description, MaxDescLen)
}

// Validate checks the data of join and leave.
func (r *NameRequest) Validate() *Error { return ValidName("channel", r.Channel) }

// Validate checks the data of post.
func (r *PostRequest) Validate() *Error {
	if err := ValidName("channel", r.Channel); err != nil {
		return err
	}
	return ValidText("message", r.Text, MaxTextLen)
}

// Validate checks the data of dm.
func (r *DMRequest) Validate() *Error {
	if err := ValidName("user", r.To); err != nil {
		return err
	}
	return ValidText("message", r.Text, MaxTextLen)
}

// DecodeValid parses a request's data into v and checks it.
func DecodeValid(r *Request, v interface{ Validate() *Error }) *Error {
	if err := DecodeData(r, v); err != nil {
		return err
	}
	return v.Validate()
}

// --- encoding ---

// DecodeRequest parses one request frame. Unknown fields are ignored.
func DecodeRequest(b []byte) (*Request, *Error) {
	if len(b) > MaxRequestBytes {
		return nil, Errorf(CodeTooLarge, "request is %d bytes, over the limit of %d", len(b), MaxRequestBytes)
	}
	var r Request
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, Errorf(CodeBadRequest, "request is not a JSON object of the form {\"service\": ..., \"data\": {...}}: %s", jsonProblem(err))
	}
	if r.Service == "" {
		return nil, Errorf(CodeBadRequest, "request has no \"service\"")
	}
	return &r, nil
}

// DecodeData parses a request's data into v, rejecting unknown shapes with a clear error.
func DecodeData(r *Request, v any) *Error {
	if len(r.Data) == 0 || bytes.Equal(r.Data, []byte("null")) {
		return Errorf(CodeBadRequest, "%s: missing \"data\"", r.Service)
	}
	if err := json.Unmarshal(r.Data, v); err != nil {
		return Errorf(CodeBadRequest, "%s: bad \"data\": %s", r.Service, jsonProblem(err))
	}
	return nil
}

// jsonProblem turns a decoding error into a sentence without Go type names.
func jsonProblem(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field != "" {
			return fmt.Sprintf("field %q must be a %s, not a %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value)
		}
		return fmt.Sprintf("expected a %s, got a %s", jsonKind(te.Type.Kind().String()), te.Value)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("invalid JSON at byte %d", se.Offset)
	}
	return "invalid JSON"
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "string"
	case "bool":
		return "boolean"
	case "struct", "map":
		return "object"
	case "slice", "array":
		return "array"
	default:
		return "number"
	}
}

// Encode marshals v; it panics only on types that can't be JSON (a programming error).
func Encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("wire: encode %T: %v", v, err))
	}
	return b
}

// OKReply builds a successful reply to r carrying data.
func OKReply(r *Request, data any) *Reply {
	rep := &Reply{Service: r.Service, OK: true, Req: r.Req}
	if data != nil {
		rep.Data = Encode(data)
	}
	return rep
}

// ErrorReply builds a failed reply to r (r may be nil when the request could not be read).
func ErrorReply(r *Request, e *Error) *Reply {
	rep := &Reply{OK: false, Error: e}
	if r != nil {
		rep.Service, rep.Req = r.Service, r.Req
	}
	return rep
}
