package zmqx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// The ZMTP guard: a streaming parser of the bytes one peer sends, between the
// TCP connection and zmq4, which would otherwise trust every byte. Measured
// with zmq4 v0.17.0 (each one kills the whole process, from the goroutine
// that reads the connection or from the listener's accept loop):
//   - a frame header announcing 2^62 bytes: "makeslice: len out of range"
//     (zmq4 allocates the announced size before reading it);
//   - a READY command whose metadata is cut short: "slice bounds out of range";
//   - a READY command without a Socket-Type, or with an unknown one:
//     panic "unknown socket-type".
//
// The guard checks the greeting, bounds every frame and every message,
// accepts only the commands of the NULL and PLAIN handshakes before the
// handshake is done, rewrites the peer's metadata to a canonical form zmq4
// parses safely (dropping the peer's identity where Limits.Anonymous), and
// swallows every command after the handshake, answering PINGs itself (zmq4
// never does, and a libzmq peer with ZMTP heartbeats on drops connections
// whose PINGs go unanswered).

const (
	greetingLen = 64
	// maxCommand bounds one command frame (handshake commands and PINGs are
	// a few dozen bytes).
	maxCommand = 64 << 10
	// frameOverhead is what one frame costs besides its bytes (slice header,
	// allocation), counted against Limits.MaxMessage so that a message of
	// millions of empty frames is bounded too.
	frameOverhead = 64

	flagMore    = 0x01
	flagLong    = 0x02
	flagCommand = 0x04
	flagsKnown  = flagMore | flagLong | flagCommand
)

// ErrProtocol is wrapped by every error the guard reports: the peer broke
// ZMTP or a limit, and its connection is closed.
var ErrProtocol = errors.New("zmtp protocol violation")

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// knownSocketTypes are the types zmq4 can pair (SocketType.IsCompatible
// panics on any other).
var knownSocketTypes = map[string]bool{
	"PAIR": true, "PUB": true, "SUB": true, "REQ": true, "REP": true, "DEALER": true,
	"ROUTER": true, "PULL": true, "PUSH": true, "XPUB": true, "XSUB": true,
}

type guardState uint8

const (
	stGreeting guardState = iota
	stHeader              // the flags byte and the first size byte
	stLongSize            // the other 7 bytes of a long size
	stBody                // a data frame's body, passed through
	stCollect             // a frame collected whole before it is checked (commands, a subscriber's messages)
)

// zmtpGuard checks what a peer sends. It is not safe for concurrent use.
type zmtpGuard struct {
	maxFrame, maxMessage uint64
	anonymous            bool

	st   guardState
	gn   int // greeting bytes seen
	mech string
	hdr  [9]byte
	hn   int
	size uint64 // the current frame's size
	left uint64 // bytes of the current frame still to come
	more bool   // the current frame has MORE set
	cmd  bool   // the current frame is a command
	buf  []byte // the frame being collected

	inMsg    bool   // a frame with MORE was the last one completed
	msgBytes uint64 // the current message so far, with frameOverhead per frame
	dropMsg  bool   // the current message is swallowed (a subscriber's non-subscription)

	commands  int    // commands completed
	ready     bool   // the peer has sent its last handshake command (READY or INITIATE)
	peerType  string // the peer's Socket-Type
	emitted   uint64 // bytes handed on by earlier calls of feed
	outStart  int    // len(out) when the current call of feed began
	readyEnd  uint64 // emitted when the last handshake command had been handed on
	pongs     []byte // PONG frames to send
	pingsSeen int
}

func newGuard(lim Limits) *zmtpGuard {
	return &zmtpGuard{maxFrame: lim.MaxFrame, maxMessage: lim.MaxMessage, anonymous: lim.Anonymous}
}

// feed checks in and appends what zmq4 may read to out. After an error the
// connection must be closed: the guard's state is undefined.
func (g *zmtpGuard) feed(out, in []byte) ([]byte, error) {
	g.outStart = len(out)
	defer func() { g.emitted += uint64(len(out) - g.outStart) }()
	for len(in) > 0 {
		switch g.st {
		case stGreeting:
			n := min(len(in), greetingLen-g.gn)
			chunk := in[:n]
			for i, b := range chunk {
				if err := g.greetingByte(g.gn+i, b); err != nil {
					return out, err
				}
			}
			out = append(out, chunk...)
			g.gn += n
			in = in[n:]
			if g.gn == greetingLen {
				if g.mech != "NULL" && g.mech != "PLAIN" {
					return out, protoErr("security mechanism %q not supported", g.mech)
				}
				g.st = stHeader
			}
		case stHeader:
			g.hdr[g.hn] = in[0]
			g.hn++
			in = in[1:]
			if g.hn < 2 {
				continue
			}
			fl := g.hdr[0]
			if fl&^flagsKnown != 0 {
				return out, protoErr("reserved frame flags 0x%02x", fl)
			}
			if fl&flagLong != 0 {
				g.st = stLongSize
				continue
			}
			if err := g.startFrame(uint64(g.hdr[1])); err != nil {
				return out, err
			}
			out = g.afterHeader(out)
		case stLongSize:
			g.hdr[g.hn] = in[0]
			g.hn++
			in = in[1:]
			if g.hn < 9 {
				continue
			}
			if err := g.startFrame(binary.BigEndian.Uint64(g.hdr[1:9])); err != nil {
				return out, err
			}
			out = g.afterHeader(out)
		case stBody:
			n := int(min(uint64(len(in)), g.left))
			out = append(out, in[:n]...)
			in = in[n:]
			g.left -= uint64(n)
			if g.left == 0 {
				g.endDataFrame()
			}
		case stCollect:
			n := int(min(uint64(len(in)), g.left))
			g.buf = append(g.buf, in[:n]...)
			in = in[n:]
			g.left -= uint64(n)
			if g.left == 0 {
				var err error
				if out, err = g.endCollected(out); err != nil {
					return out, err
				}
			}
		}
	}
	return out, nil
}

// passBody accounts for n bytes of a data frame's body that were handed on
// without going through feed.
func (g *zmtpGuard) passBody(n int) {
	g.left -= uint64(n)
	g.emitted += uint64(n)
	if g.left == 0 {
		g.endDataFrame()
	}
}

func (g *zmtpGuard) greetingByte(i int, b byte) error {
	switch {
	case i == 0 && b != 0xFF:
		return protoErr("not a ZMTP greeting (first byte 0x%02x)", b)
	case i == 9 && b != 0x7F:
		return protoErr("not a ZMTP 3 greeting (byte 9 is 0x%02x)", b)
	case i == 10 && b < 3:
		return protoErr("ZMTP version %d.x not supported", b)
	case i >= 12 && i < 32:
		if b == 0 {
			return nil
		}
		if len(g.mech) != i-12 || b < 'A' || b > 'Z' {
			return protoErr("malformed security mechanism in greeting")
		}
		g.mech += string(rune(b))
	}
	return nil
}

// startFrame checks a frame header whose size is known.
func (g *zmtpGuard) startFrame(size uint64) error {
	fl := g.hdr[0]
	g.size, g.left = size, size
	g.more = fl&flagMore != 0
	g.cmd = fl&flagCommand != 0
	if g.cmd {
		switch {
		case g.more:
			return protoErr("command frame with MORE set")
		case g.inMsg:
			return protoErr("command inside a multipart message")
		case size > maxCommand || size > g.maxFrame:
			return protoErr("command of %d bytes, over the limit of %d", size, min(maxCommand, g.maxFrame))
		case size == 0:
			return protoErr("empty command")
		}
		return nil
	}
	if !g.ready {
		return protoErr("message before the end of the handshake")
	}
	if size > g.maxFrame {
		return protoErr("frame of %d bytes, over the limit of %d", size, g.maxFrame)
	}
	if !g.inMsg {
		g.msgBytes = 0
	}
	g.msgBytes += size + frameOverhead
	if g.msgBytes > g.maxMessage {
		return protoErr("message of over %d bytes, over the limit of %d", g.msgBytes, g.maxMessage)
	}
	return nil
}

// subscriber reports whether the peer may send only subscriptions (the
// local socket is a PUB or an XPUB: zmq4 queues anything else in a channel
// no one reads, blocking that connection's reader for good).
func (g *zmtpGuard) subscriber() bool { return g.peerType == "SUB" || g.peerType == "XSUB" }

// afterHeader hands on the header of a data frame, or starts collecting.
func (g *zmtpGuard) afterHeader(out []byte) []byte {
	hdr := g.hdr[:g.hn]
	g.hn = 0
	if g.cmd || g.subscriber() {
		g.st = stCollect
		g.buf = g.buf[:0]
		if g.size == 0 {
			// Only data frames can be empty; handled at once.
			out, _ = g.endCollected(out)
		}
		return out
	}
	out = append(out, hdr...)
	g.st = stBody
	if g.size == 0 {
		g.endDataFrame()
	}
	return out
}

func (g *zmtpGuard) endDataFrame() {
	g.st = stHeader
	g.inMsg = g.more
}

// endCollected checks a frame collected whole and hands on what is left of it.
func (g *zmtpGuard) endCollected(out []byte) ([]byte, error) {
	g.st = stHeader
	body := g.buf
	if !g.cmd {
		// A subscriber's message: pass single-frame subscriptions only.
		first := !g.inMsg
		g.inMsg = g.more
		if first {
			g.dropMsg = g.more || len(body) == 0 || body[0] > 1
		}
		if g.dropMsg {
			return out, nil
		}
		return appendFrame(out, 0, body), nil
	}
	g.commands++
	if len(body) < 1 || int(body[0]) == 0 || int(body[0]) > len(body)-1 {
		return out, protoErr("malformed command")
	}
	name := string(body[1 : 1+int(body[0])])
	data := body[1+int(body[0]):]
	if g.ready {
		// After the handshake zmq4 has no use for commands (it would hand
		// them to the application): answer PINGs, swallow the rest.
		if name == "PING" {
			if len(data) < 2 || len(data) > 2+16 {
				return out, protoErr("malformed PING")
			}
			g.pingsSeen++
			g.pongs = appendFrame(g.pongs, flagCommand, append([]byte("\x04PONG"), data[2:]...))
		}
		return out, nil
	}
	switch name {
	case "READY", "INITIATE":
		meta, err := parseMetadata(data)
		if err != nil {
			return out, err
		}
		g.peerType = meta.socketType
		if g.anonymous {
			meta.identity = nil
		}
		out = appendFrame(out, flagCommand, appendCommand(nil, name, meta.marshal()))
		g.ready = true
		g.readyEnd = g.emitted + uint64(len(out)-g.outStart)
		return out, nil
	case "HELLO":
		if _, _, err := parseHello(data); err != nil {
			return out, err
		}
	case "WELCOME":
	case "ERROR":
		if len(data) < 1 || int(data[0]) != len(data)-1 {
			return out, protoErr("malformed ERROR")
		}
	default:
		return out, protoErr("unexpected command %q during the handshake", name)
	}
	return appendFrame(out, flagCommand, body), nil
}

// appendFrame appends a frame with the given flags (MORE, COMMAND) and body.
func appendFrame(out []byte, flags byte, body []byte) []byte {
	if len(body) > 255 {
		out = append(out, flags|flagLong)
		out = binary.BigEndian.AppendUint64(out, uint64(len(body)))
	} else {
		out = append(out, flags, byte(len(body)))
	}
	return append(out, body...)
}

func appendCommand(out []byte, name string, data []byte) []byte {
	out = append(out, byte(len(name)))
	out = append(out, name...)
	return append(out, data...)
}

// metadata is what zmq4 needs of a peer's READY or INITIATE.
type metadata struct {
	socketType string
	identity   []byte
}

// parseMetadata reads ZMTP properties: name-size (1 byte, >0), name,
// value-size (4 bytes), value. Names are case-insensitive. It requires a
// Socket-Type zmq4 knows and an identity of at most 255 bytes.
func parseMetadata(b []byte) (metadata, error) {
	var m metadata
	for len(b) > 0 {
		n := int(b[0])
		if n == 0 || len(b) < 1+n+4 {
			return m, protoErr("malformed metadata")
		}
		name := string(b[1 : 1+n])
		vlen := binary.BigEndian.Uint32(b[1+n:])
		b = b[1+n+4:]
		if uint64(vlen) > uint64(len(b)) {
			return m, protoErr("malformed metadata")
		}
		value := b[:vlen]
		b = b[vlen:]
		switch {
		case strings.EqualFold(name, "Socket-Type"):
			m.socketType = string(value)
		case strings.EqualFold(name, "Identity"):
			if len(value) > 255 {
				return m, protoErr("identity of %d bytes, over the limit of 255", len(value))
			}
			m.identity = value
		}
	}
	if !knownSocketTypes[m.socketType] {
		return m, protoErr("unknown socket type %q", m.socketType)
	}
	return m, nil
}

// marshal encodes m with the property names zmq4 looks up.
func (m metadata) marshal() []byte {
	var b []byte
	prop := func(name string, value []byte) {
		b = append(b, byte(len(name)))
		b = append(b, name...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(value)))
		b = append(b, value...)
	}
	prop("Socket-Type", []byte(m.socketType))
	if len(m.identity) > 0 {
		prop("Identity", m.identity)
	}
	return b
}

// parseHello reads the body of a PLAIN HELLO: user-size, user,
// password-size, password, nothing after.
func parseHello(b []byte) (user, pass []byte, err error) {
	if len(b) < 1 || len(b) < 1+int(b[0])+1 {
		return nil, nil, protoErr("malformed HELLO")
	}
	user = b[1 : 1+int(b[0])]
	b = b[1+int(b[0]):]
	if len(b) != 1+int(b[0]) {
		return nil, nil, protoErr("malformed HELLO")
	}
	return user, b[1:], nil
}

// outTracker follows the frames zmq4 writes, to know where a message ends:
// a PONG may only go between two messages.
type outTracker struct {
	gn       int
	hdr      [9]byte
	hn       int
	left     uint64
	more     bool
	boundary bool // between two messages (after the greeting)
}

func (t *outTracker) feed(p []byte) {
	for len(p) > 0 {
		switch {
		case t.gn < greetingLen:
			n := min(len(p), greetingLen-t.gn)
			t.gn += n
			p = p[n:]
			t.boundary = t.gn == greetingLen
		case t.left > 0:
			n := min(uint64(len(p)), t.left)
			t.left -= n
			p = p[n:]
			if t.left == 0 {
				t.boundary = !t.more
			}
		default:
			t.hdr[t.hn] = p[0]
			t.hn++
			p = p[1:]
			t.boundary = false
			if t.hn < 2 || (t.hdr[0]&flagLong != 0 && t.hn < 9) {
				continue
			}
			size := uint64(t.hdr[1])
			if t.hdr[0]&flagLong != 0 {
				size = binary.BigEndian.Uint64(t.hdr[1:9])
			}
			t.more = t.hdr[0]&flagMore != 0
			t.hn = 0
			t.left = size
			if size == 0 {
				t.boundary = !t.more
			}
		}
	}
}
