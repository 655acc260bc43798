package zmqx

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/go-zeromq/zmq4"
)

// Builders of ZMTP byte streams, shared by the tests of this package.

func zGreeting(mech string) []byte { return zmq4Greeting(mech) }

func zFrame(flags byte, body []byte) []byte { return appendFrame(nil, flags, body) }

func zCommand(name string, data []byte) []byte {
	return zFrame(flagCommand, appendCommand(nil, name, data))
}

func zProp(name, value string) []byte {
	b := append([]byte{byte(len(name))}, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(value)))
	return append(b, value...)
}

func zReady(props ...[]byte) []byte { return zCommand("READY", bytes.Join(props, nil)) }

func zLongHeader(flags byte, size uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{flags | flagLong}, size)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

var testLimits = Limits{MaxFrame: 1024, MaxMessage: 4096}

func TestGuard(t *testing.T) {
	null, dealer := zGreeting("NULL"), zReady(zProp("Socket-Type", "DEALER"), zProp("Identity", "me"))
	canonical := zReady(zProp("Socket-Type", "DEALER"), zProp("Identity", "me"))
	tests := []struct {
		name    string
		lim     Limits
		in      []byte
		want    []byte // the output, when no error
		wantErr bool
		pongs   []byte
	}{
		{name: "handshake and messages", in: cat(null, dealer, zFrame(flagMore, nil), zFrame(0, []byte("hi"))),
			want: cat(null, canonical, zFrame(flagMore, nil), zFrame(0, []byte("hi")))},
		{name: "long frame", in: cat(null, dealer, zFrame(0, bytes.Repeat([]byte("x"), 1000))),
			want: cat(null, canonical, zFrame(0, bytes.Repeat([]byte("x"), 1000)))},
		{name: "metadata made canonical", in: cat(null, zReady(zProp("socket-TYPE", "ROUTER"), zProp("X-Other", "v"), zProp("identity", "id"))),
			want: cat(null, zReady(zProp("Socket-Type", "ROUTER"), zProp("Identity", "id")))},
		{name: "anonymous drops the identity", lim: Limits{MaxFrame: 1024, MaxMessage: 4096, Anonymous: true},
			in: cat(null, dealer), want: cat(null, zReady(zProp("Socket-Type", "DEALER")))},
		{name: "PING answered and swallowed", in: cat(null, dealer, zCommand("PING", []byte("\x00\x0actx")), zFrame(0, []byte("m"))),
			want: cat(null, canonical, zFrame(0, []byte("m"))), pongs: zCommand("PONG", []byte("ctx"))},
		{name: "other commands swallowed", in: cat(null, dealer, zCommand("PONG", nil), zCommand("SUBSCRIBE", []byte("t"))),
			want: cat(null, canonical)},
		{name: "subscriber: subscriptions only", in: cat(null, zReady(zProp("Socket-Type", "SUB")),
			zFrame(0, []byte("\x01topic")), zFrame(0, []byte("junk")), zFrame(flagMore, []byte("\x01a")), zFrame(0, []byte("b")),
			zFrame(0, nil), zFrame(0, []byte("\x00topic"))),
			want: cat(null, zReady(zProp("Socket-Type", "SUB")), zFrame(0, []byte("\x01topic")), zFrame(0, []byte("\x00topic")))},
		{name: "PLAIN handshake", in: cat(zGreeting("PLAIN"), zCommand("HELLO", []byte("\x01u\x02pw")), zCommand("INITIATE", zProp("Socket-Type", "PUB"))),
			want: cat(zGreeting("PLAIN"), zCommand("HELLO", []byte("\x01u\x02pw")), zCommand("INITIATE", zProp("Socket-Type", "PUB")))},
		{name: "PLAIN client side", in: cat(zGreeting("PLAIN"), zCommand("WELCOME", nil), zCommand("ERROR", []byte("\x02no"))),
			want: cat(zGreeting("PLAIN"), zCommand("WELCOME", nil), zCommand("ERROR", []byte("\x02no")))},

		{name: "frame announcing 2^62 bytes", in: cat(null, dealer, zLongHeader(0, 1<<62)), wantErr: true},
		{name: "frame over the limit", in: cat(null, dealer, zLongHeader(0, 1025)), wantErr: true},
		{name: "message over the limit", in: cat(null, dealer, bytes.Repeat(zFrame(flagMore, make([]byte, 1000)), 5)), wantErr: true},
		{name: "many empty frames", in: cat(null, dealer, bytes.Repeat(zFrame(flagMore, nil), 100)), wantErr: true},
		{name: "command over the limit", in: cat(null, zLongHeader(flagCommand, 70000)), wantErr: true},
		{name: "metadata cut short", in: cat(null, zReady([]byte{2, 'a', 'b'})), wantErr: true},
		{name: "value longer than the command", in: cat(null, zReady([]byte{1, 'a', 0xff, 0, 0, 0})), wantErr: true},
		{name: "no socket type", in: cat(null, zReady()), wantErr: true},
		{name: "unknown socket type", in: cat(null, zReady(zProp("Socket-Type", "STREAM"))), wantErr: true},
		{name: "identity too long", in: cat(null, zReady(zProp("Socket-Type", "DEALER"), zProp("Identity", string(make([]byte, 256))))), wantErr: true},
		{name: "message before the handshake", in: cat(null, zFrame(0, []byte("hi"))), wantErr: true},
		{name: "unknown command in the handshake", in: cat(null, zCommand("PING", []byte("\x00\x01"))), wantErr: true},
		{name: "malformed HELLO", in: cat(zGreeting("PLAIN"), zCommand("HELLO", []byte("\x05u"))), wantErr: true},
		{name: "command inside a message", in: cat(null, dealer, zFrame(flagMore, nil), zCommand("PING", []byte("\x00\x01"))), wantErr: true},
		{name: "command with MORE", in: cat(null, zFrame(flagCommand|flagMore, []byte("\x05READY"))), wantErr: true},
		{name: "reserved flags", in: cat(null, dealer, zFrame(0x08, nil)), wantErr: true},
		{name: "empty command", in: cat(null, zFrame(flagCommand, nil)), wantErr: true},
		{name: "command name longer than the command", in: cat(null, zFrame(flagCommand, []byte("\x09READY"))), wantErr: true},
		{name: "PING too long", in: cat(null, dealer, zCommand("PING", make([]byte, 19))), wantErr: true},
		{name: "HTTP", in: []byte("GET / HTTP/1.1\r\n\r\n"), wantErr: true},
		{name: "ZMTP 2", in: cat(zGreeting("NULL")[:10], []byte{1}), wantErr: true},
		{name: "CURVE", in: zGreeting("CURVE"), wantErr: true},
		{name: "garbage mechanism", in: cat(zGreeting("")[:12], []byte("N\x00LL"), make([]byte, 48)), wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lim := tc.lim
			if lim.MaxFrame == 0 {
				lim = testLimits
			}
			// All at once, and one byte at a time: the same.
			for _, step := range []int{len(tc.in), 1, 7} {
				g := newGuard(lim)
				var out []byte
				var err error
				for in := tc.in; len(in) > 0 && err == nil; {
					n := min(step, len(in))
					out, err = g.feed(out, in[:n])
					in = in[n:]
				}
				if tc.wantErr {
					if !errors.Is(err, ErrProtocol) {
						t.Fatalf("step %d: err %v, want ErrProtocol", step, err)
					}
					continue
				}
				if err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				if !bytes.Equal(out, tc.want) {
					t.Fatalf("step %d: out\n%q\nwant\n%q", step, out, tc.want)
				}
				if !bytes.Equal(g.pongs, tc.pongs) {
					t.Fatalf("step %d: pongs %q, want %q", step, g.pongs, tc.pongs)
				}
			}
		})
	}
}

func TestGuardReadyEnd(t *testing.T) {
	g := newGuard(testLimits)
	in := cat(zGreeting("NULL"), zReady(zProp("Socket-Type", "DEALER")), zFrame(0, []byte("m")))
	out, err := g.feed([]byte("left over"), in)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(len(zGreeting("NULL")) + len(zReady(zProp("Socket-Type", "DEALER")))); !g.ready || g.readyEnd != want {
		t.Fatalf("ready %v at %d, want at %d", g.ready, g.readyEnd, want)
	}
	if g.emitted != uint64(len(out)-len("left over")) {
		t.Fatalf("emitted %d of %d", g.emitted, len(out))
	}
}

func TestOutTracker(t *testing.T) {
	var o outTracker
	steps := []struct {
		in       []byte
		boundary bool
	}{
		{zGreeting("NULL")[:30], false},
		{zGreeting("NULL")[30:], true},
		{zReady(zProp("Socket-Type", "ROUTER")), true},
		{[]byte{flagMore}, false},
		{[]byte{0}, false}, // an empty frame with MORE
		{zLongHeader(0, 300), false},
		{make([]byte, 299), false},
		{[]byte{'x'}, true},
		{zFrame(0, nil), true},
	}
	for i, s := range steps {
		o.feed(s.in)
		if o.boundary != s.boundary {
			t.Fatalf("step %d: boundary %v, want %v", i, o.boundary, s.boundary)
		}
	}
}

// FuzzZMTPGuard feeds the guard anything, in two chunkings. It must never
// panic, must treat both chunkings alike, and what it hands on must be safe
// for zmq4: frames within the limits, metadata zmq4 parses without panicking.
func FuzzZMTPGuard(f *testing.F) {
	null, plain := zGreeting("NULL"), zGreeting("PLAIN")
	dealer := zReady(zProp("Socket-Type", "DEALER"), zProp("Identity", "id"))
	for _, seed := range [][]byte{
		nil,
		null,
		cat(null, dealer, zFrame(flagMore, nil), zFrame(0, []byte("hello"))),
		cat(null, dealer, zLongHeader(0, 1<<62)),
		cat(null, dealer, zLongHeader(flagMore, 300), make([]byte, 300), zFrame(0, []byte("x"))),
		cat(null, zReady([]byte{2, 'a', 'b'})),
		cat(null, zReady()),
		cat(null, zReady(zProp("Socket-Type", "SUB")), zFrame(0, []byte("\x01t")), zFrame(0, []byte("junk"))),
		cat(null, dealer, zCommand("PING", []byte("\x00\x10ctx")), zCommand("PONG", nil)),
		cat(plain, zCommand("HELLO", []byte("\x01u\x01p")), zCommand("INITIATE", zProp("Socket-Type", "PUB"))),
		cat(plain, zCommand("WELCOME", nil), zCommand("READY", zProp("Socket-Type", "ROUTER"))),
		[]byte("GET / HTTP/1.1\r\n\r\n"),
	} {
		f.Add(seed, uint8(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, step uint8) {
		whole := newGuard(testLimits)
		out, err := whole.feed(nil, in)

		chunked := newGuard(testLimits)
		var out2 []byte
		var err2 error
		n := int(step)%64 + 1
		for rest := in; len(rest) > 0 && err2 == nil; {
			k := min(n, len(rest))
			out2, err2 = chunked.feed(out2, rest[:k])
			rest = rest[k:]
		}
		if (err == nil) != (err2 == nil) {
			t.Fatalf("whole: %v; in chunks of %d: %v", err, n, err2)
		}
		if err != nil {
			if !errors.Is(err, ErrProtocol) || !errors.Is(err2, ErrProtocol) {
				t.Fatalf("errors %v, %v: want ErrProtocol", err, err2)
			}
			return
		}
		if !bytes.Equal(out, out2) || !bytes.Equal(whole.pongs, chunked.pongs) {
			t.Fatalf("chunks of %d changed the output", n)
		}
		checkForZMQ4(t, out)
	})
}

// checkForZMQ4 parses what the guard handed on as zmq4 would, and fails on
// what would hurt it.
func checkForZMQ4(t *testing.T, b []byte) {
	if len(b) < greetingLen {
		return
	}
	b = b[greetingLen:]
	for len(b) >= 2 {
		fl, size, hl := b[0], uint64(b[1]), 2
		if fl&flagLong != 0 {
			if len(b) < 9 {
				return
			}
			size, hl = binary.BigEndian.Uint64(b[1:9]), 9
		}
		if size > testLimits.MaxFrame {
			t.Fatalf("handed on a frame of %d bytes", size)
		}
		if uint64(len(b)-hl) < size {
			return
		}
		body := b[hl : hl+int(size)]
		b = b[hl+int(size):]
		if fl&flagCommand == 0 {
			continue
		}
		var cmd zmq4.Cmd
		n := int(body[0])
		cmd.Name, cmd.Body = string(body[1:1+n]), body[1+n:]
		if cmd.Name == zmq4.CmdReady || cmd.Name == zmq4.CmdInitiate {
			md := zmq4.Metadata{}
			if err := md.UnmarshalZMTP(cmd.Body); err != nil {
				t.Fatalf("handed on metadata zmq4 rejects: %v", err)
			}
			zmq4.SocketType(md["Socket-Type"]).IsCompatible(zmq4.Dealer) // panics on an unknown type
		}
	}
}
