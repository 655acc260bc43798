package store

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"chat/wire"
)

func TestCommandRoundTrip(t *testing.T) {
	cmds := []Command{
		{Op: wire.Register, Client: "c-1", Req: 1, User: "Ana", Lamport: 9, Time: t0, Hash: testHash},
		{Op: wire.Create, User: "Ana", Name: "Général", Description: "a <b> & \"c\"\n\ttab", Time: t0.Add(time.Nanosecond)},
		{Op: wire.DM, User: "ana", To: "bob", Text: "héllo ✓ \u2028", Lamport: 1 << 63},
		{Op: wire.Post, User: "ana", Name: "x", Text: strings.Repeat("y", wire.MaxTextLen), Req: ^uint64(0), Client: "z"},
		{Op: "future-op"},
	}
	for _, c := range cmds {
		b, err := EncodeCommand(&c)
		if err != nil {
			t.Fatalf("encode %+v: %v", c, err)
		}
		d, err := DecodeCommand(b)
		if err != nil {
			t.Fatalf("decode %s: %v", b, err)
		}
		if !d.Time.Equal(c.Time) {
			t.Errorf("time %v came back as %v", c.Time, d.Time)
		}
		d.Time = c.Time
		if *d != c {
			t.Errorf("round trip:\n got %+v\nwant %+v", *d, c)
		}
	}
	b, _ := EncodeCommand(&Command{Op: wire.Logout, User: "ana", Client: "c", Req: 3, Lamport: 4, Time: t0})
	if want := `{"op":"logout","client":"c","req":3,"user":"ana","lamport":4,"time":"2025-03-01T12:00:00Z"}`; string(b) != want {
		t.Errorf("encoding = %s, want %s", b, want)
	}
	b, _ = EncodeCommand(&Command{Op: wire.Join})
	if want := `{"op":"join"}`; string(b) != want {
		t.Errorf("minimal encoding = %s, want %s", b, want)
	}
}

func TestEncodeCommandRefuses(t *testing.T) {
	tests := []struct {
		name string
		c    *Command
		is   error
	}{
		{"nil", nil, nil},
		{"bad text", &Command{Op: wire.Post, Text: "a\xffb"}, ErrNotUTF8},
		{"bad user", &Command{Op: wire.Post, User: "\xc3"}, ErrNotUTF8},
		{"bad client", &Command{Op: wire.Post, Client: "\x80"}, ErrNotUTF8},
		{"time past 9999", &Command{Op: wire.Post, Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, nil},
	}
	for _, tt := range tests {
		b, err := EncodeCommand(tt.c)
		if err == nil || !strings.HasPrefix(err.Error(), "store: encode") {
			t.Errorf("%s: EncodeCommand = %s, %v; want a store: encode error", tt.name, b, err)
		}
		if tt.is != nil && !errors.Is(err, tt.is) {
			t.Errorf("%s: error %v is not %v", tt.name, err, tt.is)
		}
	}
}

func TestDecodeCommandRejects(t *testing.T) {
	for _, in := range []string{
		"", " ", "null", "{}", `{"op":""}`, `[]`, `"register"`, `{"op":"post"`, `{"op":"post"} x`,
		`{"op":1}`, `{"op":"post","req":-1}`, `{"op":"post","req":1.5}`, `{"op":"post","time":"yesterday"}`,
		`{"op":"post","lamport":"1"}`, `{"op":"post","text":5}`, "\xff\xfe", `{"op":"post","time":"10000-01-01T00:00:00Z"}`,
	} {
		c, err := DecodeCommand([]byte(in))
		if err == nil {
			t.Errorf("DecodeCommand(%q) = %+v, want an error", in, c)
		} else if !strings.HasPrefix(err.Error(), "store: decode command") {
			t.Errorf("DecodeCommand(%q) error %q lacks its context", in, err)
		}
	}
	// Unknown fields are ignored, for commands written by a newer version.
	c, err := DecodeCommand([]byte(`{"op":"post","user":"ana","color":"red"}`))
	if err != nil || c.Op != wire.Post || c.User != "ana" {
		t.Errorf("DecodeCommand with an unknown field = %+v, %v", c, err)
	}
}

func FuzzDecodeCommand(f *testing.F) {
	for _, c := range []Command{
		register("ana"), create("ana", "general", "desc"), join("ana", "general"), leave("ana", "general"),
		with(post("ana", "general", "hi <there>"), "c1", 2), dm("ana", "bob", "é\n"), logout("ana"),
		{Op: wire.Post, Time: t0.In(time.FixedZone("", -7*3600)), Lamport: 5},
	} {
		b, err := EncodeCommand(&c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{"", "null", "{}", `{"op":"\ud800"}`, `{"op":"x","text":"\u0000"}`, `{"op":"x","time":"0000-01-01T00:00:00+23:59"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCommand(b)
		if err != nil {
			return
		}
		// Whatever decodes, re-encodes to a stable form and applies without a panic.
		enc, err := EncodeCommand(c)
		if err != nil {
			t.Fatalf("decoded %q to %+v, which does not encode: %v", b, c, err)
		}
		c2, err := DecodeCommand(enc)
		if err != nil {
			t.Fatalf("re-encoded %s does not decode: %v", enc, err)
		}
		enc2, err := EncodeCommand(c2)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding is not stable: %s then %s (%v)", enc, enc2, err)
		}
		h := newHarness(t, world...)
		r1 := h.m.Apply(100, c)
		h2 := newHarness(t, world...)
		r2 := h2.m.Apply(100, c2)
		if show(r1) != show(r2) {
			t.Fatalf("applying %s and its re-encoding differ:\n%s\n%s", b, show(r1), show(r2))
		}
	})
}
