package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// ErrNotUTF8 is returned by EncodeCommand for a command with a string that
// is not valid UTF-8: JSON would replace the bad bytes, so the servers that
// decode the entry would apply a different command than the one given.
var ErrNotUTF8 = errors.New("not valid UTF-8")

// Command is the payload of one log entry: a write the leader has checked and
// stamped, which every server applies to its Machine in log order.
//
// The operations are the wire services that change state: wire.Register,
// wire.Create, wire.Join, wire.Leave, wire.Post, wire.DM and wire.Logout.
type Command struct {
	// Op is the operation: "register", "create", "join", "leave", "post", "dm" or "logout".
	Op string `json:"op"`
	// Client and Req make the command idempotent: the machine applies a
	// (Client, Req) pair at most once. An empty Client or a zero Req means
	// the command is not deduplicated.
	Client string `json:"client,omitempty"`
	Req    uint64 `json:"req,omitempty"`
	// User is the acting, already authenticated user; for register, the new user's name.
	User string `json:"user,omitempty"`
	// Lamport and Time are assigned by the leader when it appends the command.
	Lamport uint64    `json:"lamport,omitempty"`
	Time    time.Time `json:"time,omitzero"`
	// Name is the channel of create, join, leave and post.
	Name string `json:"name,omitempty"`
	// Description is the description of a channel being created.
	Description string `json:"desc,omitempty"`
	// Hash is the argon2id hash of a registering user's password, computed by
	// the leader: the machine stores it and never hashes anything.
	Hash string `json:"hash,omitempty"`
	// To is the recipient of a direct message.
	To string `json:"to,omitempty"`
	// Text is the text of a post or a direct message.
	Text string `json:"text,omitempty"`
}

// EncodeCommand returns c's log payload. DecodeCommand of the payload
// returns a command that Apply treats exactly as c (times are applied in
// UTC). It fails with ErrNotUTF8 when that can't hold.
func EncodeCommand(c *Command) ([]byte, error) {
	if c == nil {
		return nil, errors.New("store: encode command: nil command")
	}
	for _, f := range [...]struct{ name, s string }{
		{"op", c.Op}, {"client", c.Client}, {"user", c.User}, {"name", c.Name},
		{"desc", c.Description}, {"hash", c.Hash}, {"to", c.To}, {"text", c.Text},
	} {
		if !utf8.ValidString(f.s) {
			return nil, fmt.Errorf("store: encode %q command: field %s: %w", c.Op, f.name, ErrNotUTF8)
		}
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("store: encode %q command: %w", c.Op, err)
	}
	return b, nil
}

// DecodeCommand parses a log payload written by EncodeCommand. It rejects
// anything that is not one JSON object with an "op". Unknown fields are
// ignored; an unknown op decodes, and Apply answers it with bad_request.
func DecodeCommand(b []byte) (*Command, error) {
	var c Command
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("store: decode command: %w", err)
	}
	if c.Op == "" {
		return nil, errors.New("store: decode command: no \"op\"")
	}
	return &c, nil
}
