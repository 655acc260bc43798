package main

// The hostile-client suite: peers that break ZMTP, stop reading, send what
// no client should, or pretend to be servers, against an in-process system
// (chat/internal/cluster). Each gets a clear error or is cut off; every role
// stays up (a crash would end this test binary); the stored data does not
// change; well-behaved clients keep being served meanwhile.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/internal/cluster"
	"chat/internal/zmqx"
	"chat/wire"
)

const hostileSecret = "hostile-test-cluster-secret-0123456789"

// hostileSystem runs a broker, a pubsub and one server, with cluster
// authentication when secret is set, and waits for the leader.
func hostileSystem(t *testing.T, secret string) *cluster.Cluster {
	t.Helper()
	c := cluster.StartSecure(t, cluster.Options{Servers: 1}, secret)
	c.WaitLeader(10 * time.Second)
	return c
}

func hostileHostPort(endpoint string) string { return strings.TrimPrefix(endpoint, "tcp://") }

// --- a well-behaved client, speaking the protocol on a DEALER ---

type hostileClient struct {
	t     testing.TB
	sock  zmq4.Socket
	in    *zmqx.Inbox
	id    string
	req   uint64
	token string
}

func hostileDial(t testing.TB, frontend string) *hostileClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var b [8]byte
	rand.Read(b[:])
	c := &hostileClient{t: t, id: "hostile-" + hex.EncodeToString(b[:]),
		sock: zmq4.NewDealer(ctx, zmq4.WithLogger(zmqx.StdLogger(nil)), zmq4.WithTimeout(5*time.Second))}
	t.Cleanup(func() { cancel(); c.sock.Close() })
	if err := c.sock.Dial(zmqx.Endpoint(frontend)); err != nil {
		t.Fatalf("dial %s: %v", frontend, err)
	}
	c.in = zmqx.NewInbox(ctx, c.sock, 64)
	return c
}

// send sends raw frames and waits for one reply.
func (c *hostileClient) send(timeout time.Duration, frames ...[]byte) (*wire.Reply, error) {
	if err := c.sock.Send(zmq4.NewMsgFrom(frames...)); err != nil {
		return nil, err
	}
	return c.recv(timeout)
}

func (c *hostileClient) recv(timeout time.Duration) (*wire.Reply, error) {
	select {
	case m, ok := <-c.in.C:
		if !ok {
			return nil, errors.New("socket closed")
		}
		if len(m.Frames) != 2 || len(m.Frames[0]) != 0 {
			return nil, fmt.Errorf("a reply of %d frames", len(m.Frames))
		}
		var r wire.Reply
		if err := json.Unmarshal(m.Frames[1], &r); err != nil {
			return nil, fmt.Errorf("reply is not JSON: %v", err)
		}
		return &r, nil
	case <-time.After(timeout):
		return nil, fmt.Errorf("no reply within %v", timeout)
	}
}

// do makes one request and returns its reply (retrying while no leader).
func (c *hostileClient) do(service string, data any) (*wire.Reply, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return nil, err
	}
	for try := 0; ; try++ {
		c.req++
		rep, err := c.send(10*time.Second, nil, wire.Encode(wire.Request{Service: service, Data: raw, Token: c.token, Client: c.id, Req: c.req}))
		if err != nil || rep.OK || rep.Error == nil || !wire.Retryable(rep.Error.Code) || try == 20 {
			return rep, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// must makes a request that must succeed, and decodes its data into out.
func (c *hostileClient) must(service string, data, out any) {
	c.t.Helper()
	rep, err := c.do(service, data)
	if err != nil {
		c.t.Fatalf("%s: %v", service, err)
	}
	if !rep.OK {
		c.t.Fatalf("%s: %+v", service, rep.Error)
	}
	if out != nil {
		if err := json.Unmarshal(rep.Data, out); err != nil {
			c.t.Fatalf("%s: decode %s: %v", service, rep.Data, err)
		}
	}
}

// user registers and logs in a new user, and joins (creating) channel.
func (c *hostileClient) user(name, channel string) {
	c.t.Helper()
	creds := wire.Credentials{User: name, Password: "password-" + name}
	c.must(wire.Register, creds, nil)
	var lr wire.LoginReply
	c.must(wire.Login, creds, &lr)
	c.token = lr.Token
	if channel == "" {
		return
	}
	if rep, err := c.do(wire.Create, wire.CreateRequest{Channel: channel}); err != nil || (!rep.OK && rep.Error.Code != wire.CodeExists) {
		c.t.Fatalf("create %s: %v %+v", channel, err, rep)
	}
	c.must(wire.Join, wire.NameRequest{Channel: channel}, nil)
}

// hostileSnapshot is what must not change: the channels, the users, a
// channel's history, and the log index.
type hostileSnapshot struct {
	Channels []string
	Users    []string
	History  []wire.Message
	Index    uint64
}

func (c *hostileClient) snapshot(channel string) hostileSnapshot {
	c.t.Helper()
	var s hostileSnapshot
	var chans []wire.ChannelInfo
	var raw json.RawMessage
	c.must(wire.Channels, struct{}{}, &raw)
	if err := json.Unmarshal(raw, &struct {
		Channels *[]wire.ChannelInfo `json:"channels"`
	}{&chans}); err != nil {
		c.t.Fatalf("channels: %v", err)
	}
	for _, ch := range chans {
		s.Channels = append(s.Channels, fmt.Sprintf("%s/%d/%d", ch.Name, ch.Members, ch.Seq))
	}
	var users struct {
		Users []wire.UserInfo `json:"users"`
	}
	c.must(wire.Users, struct{}{}, &users)
	for _, u := range users.Users {
		s.Users = append(s.Users, u.Name)
	}
	var hist wire.HistoryReply
	c.must(wire.History, wire.HistoryRequest{Channel: channel, Limit: wire.MaxHistory}, &hist)
	s.History = hist.Messages
	var st wire.StatusReply
	c.must(wire.Status, struct{}{}, &st)
	s.Index = st.Index
	return s
}

func hostileSameData(t *testing.T, before, after hostileSnapshot) {
	t.Helper()
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("the stored data changed:\nbefore %+v\nafter  %+v", before, after)
	}
}

// --- a raw ZMTP peer: a TCP connection that speaks ZMTP by hand ---

type hostileRaw struct {
	net.Conn
	r *bufio.Reader
}

func hostileZMTPGreeting(mech string) []byte {
	g := make([]byte, 64)
	g[0], g[9], g[10] = 0xFF, 0x7F, 3
	copy(g[12:], mech)
	return g
}

func hostileFrame(flags byte, body []byte) []byte {
	if len(body) > 255 {
		return append(binary.BigEndian.AppendUint64([]byte{flags | 0x02}, uint64(len(body))), body...)
	}
	return append([]byte{flags, byte(len(body))}, body...)
}

func hostileReady(socketType string) []byte {
	body := append([]byte{5}, "READY"...)
	body = append(body, 11)
	body = append(body, "Socket-Type"...)
	body = binary.BigEndian.AppendUint32(body, uint32(len(socketType)))
	return hostileFrame(0x04, append(body, socketType...))
}

// hostileRawDial connects and does a NULL handshake as socketType.
func hostileRawDial(t testing.TB, endpoint, socketType string) *hostileRaw {
	t.Helper()
	conn, err := net.Dial("tcp", hostileHostPort(endpoint))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h := &hostileRaw{Conn: conn, r: bufio.NewReaderSize(conn, 1<<20)}
	if _, err := conn.Write(append(hostileZMTPGreeting("NULL"), hostileReady(socketType)...)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	if _, err := io.ReadFull(h.r, make([]byte, 64)); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	if _, _, err := h.frame(); err != nil {
		t.Fatalf("READY: %v", err)
	}
	return h
}

// send writes one message.
func (h *hostileRaw) send(frames ...[]byte) error {
	var b []byte
	for i, f := range frames {
		var more byte
		if i < len(frames)-1 {
			more = 1
		}
		b = append(b, hostileFrame(more, f)...)
	}
	_, err := h.Write(b)
	return err
}

func (h *hostileRaw) frame() (flags byte, body []byte, err error) {
	var hdr [9]byte
	if _, err := io.ReadFull(h.r, hdr[:2]); err != nil {
		return 0, nil, err
	}
	size := uint64(hdr[1])
	if hdr[0]&0x02 != 0 {
		if _, err := io.ReadFull(h.r, hdr[2:9]); err != nil {
			return 0, nil, err
		}
		size = binary.BigEndian.Uint64(hdr[1:9])
	}
	body = make([]byte, size)
	_, err = io.ReadFull(h.r, body)
	return hdr[0], body, err
}

// recv reads one message, skipping commands.
func (h *hostileRaw) recv(timeout time.Duration) ([][]byte, error) {
	h.SetReadDeadline(time.Now().Add(timeout))
	defer h.SetReadDeadline(time.Time{})
	var msg [][]byte
	for {
		fl, body, err := h.frame()
		if err != nil {
			return nil, err
		}
		if fl&0x04 != 0 {
			continue
		}
		msg = append(msg, body)
		if fl&0x01 == 0 {
			return msg, nil
		}
	}
}

// cutOff reports whether the other side closed the connection within timeout.
func (h *hostileRaw) cutOff(timeout time.Duration) bool {
	h.SetReadDeadline(time.Now().Add(timeout))
	defer h.SetReadDeadline(time.Time{})
	_, err := io.Copy(io.Discard, h.r)
	var ne net.Error
	return err == nil || !(errors.As(err, &ne) && ne.Timeout())
}

// --- subscribers ---

func hostileSubscribe(t testing.TB, endpoint string, topics ...string) *zmqx.Inbox {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sub := zmq4.NewSub(ctx, zmq4.WithLogger(zmqx.StdLogger(nil)))
	t.Cleanup(func() { cancel(); sub.Close() })
	for _, topic := range topics {
		if err := sub.SetOption(zmq4.OptionSubscribe, topic); err != nil {
			t.Fatal(err)
		}
	}
	if err := sub.Dial(zmqx.Endpoint(endpoint)); err != nil {
		t.Fatal(err)
	}
	return zmqx.NewInbox(ctx, sub, 4096)
}

// hostilePublisher publishes to the pubsub's frontend as a server would.
func hostilePublisher(t testing.TB, endpoint string, opts ...zmq4.Option) (zmq4.Socket, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pub := zmq4.NewPub(ctx, append([]zmq4.Option{zmq4.WithLogger(zmqx.StdLogger(nil))}, opts...)...)
	t.Cleanup(func() { cancel(); pub.Close() })
	return pub, pub.Dial(zmqx.Endpoint(endpoint))
}

// hostileWaitSubscribed publishes probes on topic until sub receives one.
func hostileWaitSubscribed(t testing.TB, pub zmq4.Socket, sub *zmqx.Inbox, topic string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_ = pub.Send(zmq4.NewMsgFrom([]byte(topic), []byte(`{"type":"probe"}`)))
		select {
		case <-sub.C:
			// Drain the other probes.
			for {
				select {
				case <-sub.C:
				case <-time.After(100 * time.Millisecond):
					return
				}
			}
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the subscriber never got a publication")
		}
	}
}

// --- the tests ---

func TestHostileGreetinglessPeers(t *testing.T) {
	// zmq4 handshakes inside its accept loop: one peer that connects and
	// says nothing used to freeze the port for everyone.
	c := hostileSystem(t, "")
	var silent []*hostileRaw
	for _, ep := range []string{c.Frontend, c.Frontend, c.Frontend, c.Subscribe, c.Subscribe} {
		conn, err := net.Dial("tcp", hostileHostPort(ep))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		silent = append(silent, &hostileRaw{Conn: conn, r: bufio.NewReader(conn)})
	}
	silent[2].Write(hostileZMTPGreeting("NULL")[:20]) // half a greeting
	start := time.Now()
	good := hostileDial(t, c.Frontend)
	good.user("goodie", "lobby")
	sub := hostileSubscribe(t, c.Subscribe, wire.ChannelTopic("lobby"))
	pub, err := hostilePublisher(t, c.Publish())
	if err != nil {
		t.Fatal(err)
	}
	hostileWaitSubscribed(t, pub, sub, wire.ChannelTopic("lobby"))
	good.must(wire.Post, wire.PostRequest{Channel: "lobby", Text: "through"}, nil)
	select {
	case m := <-sub.C:
		if !bytes.Contains(m.Frames[1], []byte("through")) {
			t.Fatalf("publication %q", m.Frames[1])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the post was not published")
	}
	t.Logf("served a client and a subscriber in %v while %d peers sat silent", time.Since(start).Round(time.Millisecond), len(silent))
}

func TestHostileRequesterNeverReads(t *testing.T) {
	// A requester whose TCP window fills up: zmq4's ROUTER holds one lock
	// while it writes to any peer, so it used to stall every other client.
	c := hostileSystem(t, "")
	good := hostileDial(t, c.Frontend)
	good.user("writer", "big")
	text := strings.Repeat("x", wire.MaxTextLen)
	for range 30 {
		good.must(wire.Post, wire.PostRequest{Channel: "big", Text: text}, nil)
	}

	// The bad client logs in like anyone, then asks for big history pages
	// (about 125 KB each) and never reads a reply.
	bad := hostileRawDial(t, c.Frontend, "DEALER")
	req := func(n uint64, service string, data any, token string) []byte {
		raw, _ := json.Marshal(data)
		return wire.Encode(wire.Request{Service: service, Data: raw, Token: token, Client: "bad", Req: n})
	}
	bad.send(nil, req(1, wire.Login, wire.Credentials{User: "writer", Password: "password-writer"}, ""))
	rep, err := bad.recv(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var login struct {
		Data wire.LoginReply `json:"data"`
	}
	json.Unmarshal(rep[1], &login)
	before := good.snapshot("big")
	stalledBefore := zmqx.TransportStats().Stalled
	flooded := make(chan int, 1)
	go func() {
		n := 0
		for ; n < 400; n++ {
			if bad.send(nil, req(uint64(n+2), wire.History, wire.HistoryRequest{Channel: "big", Limit: 30}, login.Data.Token)) != nil {
				break
			}
		}
		flooded <- n
	}()

	var worst, total time.Duration
	const calls = 200
	for i := range calls {
		start := time.Now()
		rep, err := good.do(wire.Ping, struct{}{})
		if err != nil || !rep.OK {
			t.Fatalf("good request %d: %v %+v", i, err, rep)
		}
		took := time.Since(start)
		worst, total = max(worst, took), total+took
	}
	t.Logf("good client: %d requests, mean %v, worst %v, while a requester did not read", calls,
		(total / calls).Round(time.Microsecond), worst.Round(time.Microsecond))
	if !bad.cutOff(20 * time.Second) {
		t.Fatal("the requester that does not read was never cut off")
	}
	t.Logf("the bad requester was cut off after sending %d requests (transport stalls: %d)",
		<-flooded, zmqx.TransportStats().Stalled-stalledBefore)
	hostileSameData(t, before, good.snapshot("big"))
}

func TestHostileSubscriberNeverReads(t *testing.T) {
	c := hostileSystem(t, "")
	topic := wire.ChannelTopic("firehose")
	bad := hostileRawDial(t, c.Subscribe, "SUB")
	if err := bad.send([]byte("\x01")); err != nil { // subscribe to everything, then never read
		t.Fatal(err)
	}
	good := hostileSubscribe(t, c.Subscribe, topic)
	pub, err := hostilePublisher(t, c.Publish())
	if err != nil {
		t.Fatal(err)
	}
	hostileWaitSubscribed(t, pub, good, topic)

	stalled := zmqx.TransportStats().Stalled
	const n, size = 2000, 16 << 10
	payload := bytes.Repeat([]byte("p"), size)
	got := make(chan int, 1)
	var worstGap time.Duration
	go func() {
		count, last := 0, time.Now()
		for count < n {
			select {
			case <-good.C:
				count++
				worstGap, last = max(worstGap, time.Since(last)), time.Now()
			case <-time.After(10 * time.Second):
				got <- count
				return
			}
		}
		got <- count
	}()
	for range n {
		if err := pub.Send(zmq4.NewMsgFrom([]byte(topic), payload)); err != nil {
			t.Fatal(err)
		}
	}
	if count := <-got; count < n {
		t.Fatalf("the subscriber that reads got %d of %d publications", count, n)
	}
	t.Logf("the subscriber that reads got all %d publications (%d MB), worst gap %v", n, n*size>>20, worstGap.Round(time.Microsecond))
	// Reading would make it a subscriber that reads: wait for the pubsub's
	// side to give up on it first.
	hostileEventually(t, 20*time.Second, "the pubsub to cut off the subscriber that does not read", func() bool {
		return zmqx.TransportStats().Stalled > stalled
	})
	if !bad.cutOff(5 * time.Second) {
		t.Fatal("the subscriber that does not read was never cut off")
	}
}

func TestHostileForgedFrames(t *testing.T) {
	c := hostileSystem(t, hostileSecret)
	good := hostileDial(t, c.Frontend)
	good.user("watcher", "calm")
	good.must(wire.Post, wire.PostRequest{Channel: "calm", Text: "before"}, nil)
	before := good.snapshot("calm")
	huge := binary.BigEndian.AppendUint64([]byte{0x02}, 1<<62)
	for _, tc := range []struct {
		name, endpoint string
		bytes          []byte
	}{
		{"frontend: a frame of 2^62 bytes", c.Frontend, append(hostileReady("DEALER"), huge...)},
		{"frontend: a frame of 2 MB", c.Frontend, append(hostileReady("DEALER"), binary.BigEndian.AppendUint64([]byte{0x02}, 2<<20)...)},
		{"frontend: metadata cut short", c.Frontend, hostileFrame(0x04, []byte("\x05READY\x02ab"))},
		{"frontend: no socket type", c.Frontend, hostileFrame(0x04, []byte("\x05READY"))},
		{"frontend: a message before the handshake", c.Frontend, hostileFrame(0, []byte("hello"))},
		{"subscribers: a frame of 2^62 bytes", c.Subscribe, append(hostileReady("SUB"), huge...)},
		{"servers' port: a command of 2^62 bytes", c.Backend(), append([]byte{0x06}, huge[1:]...)},
		{"publishers' port: a PLAIN HELLO of 2^62 bytes", c.Publish(), append([]byte{0x06}, huge[1:]...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", hostileHostPort(tc.endpoint))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			mech := "NULL"
			if tc.endpoint == c.Backend() || tc.endpoint == c.Publish() {
				mech = "PLAIN"
			}
			conn.Write(append(hostileZMTPGreeting(mech), tc.bytes...))
			h := &hostileRaw{Conn: conn, r: bufio.NewReader(conn)}
			if !h.cutOff(5 * time.Second) {
				t.Fatal("the connection stayed open")
			}
			if rep, err := good.do(wire.Ping, struct{}{}); err != nil || !rep.OK {
				t.Fatalf("a good client after it: %v %+v", err, rep)
			}
		})
	}
	hostileSameData(t, before, good.snapshot("calm"))
}

func TestHostileMalformedRequests(t *testing.T) {
	c := hostileSystem(t, "")
	good := hostileDial(t, c.Frontend)
	good.user("keeper", "vault")
	good.must(wire.Post, wire.PostRequest{Channel: "vault", Text: "treasure"}, nil)
	before := good.snapshot("vault")

	bad := hostileDial(t, c.Frontend)
	for _, tc := range []struct {
		name   string
		frames [][]byte
		code   string // "" for any error
	}{
		{"no delimiter", [][]byte{[]byte(`{"service":"ping"}`)}, wire.CodeBadRequest},
		{"three frames", [][]byte{nil, []byte(`{"service":"ping"}`), []byte("extra")}, wire.CodeBadRequest},
		{"a delimiter that is not empty", [][]byte{[]byte("x"), []byte(`{"service":"ping"}`)}, wire.CodeBadRequest},
		{"empty request", [][]byte{nil, nil}, wire.CodeBadRequest},
		{"not JSON", [][]byte{nil, []byte("hello?")}, wire.CodeBadRequest},
		{"binary", [][]byte{nil, {0xff, 0xfe, 0, 1, 2}}, wire.CodeBadRequest},
		{"JSON but not an object", [][]byte{nil, []byte(`[1,2,3]`)}, wire.CodeBadRequest},
		{"service of the wrong type", [][]byte{nil, []byte(`{"service":42}`)}, wire.CodeBadRequest},
		{"data of the wrong type", [][]byte{nil, []byte(`{"service":"register","data":"alice"}`)}, wire.CodeBadRequest},
		{"fields of the wrong type", [][]byte{nil, []byte(`{"service":"register","data":{"user":1,"password":[]}}`)}, wire.CodeBadRequest},
		{"req of the wrong type", [][]byte{nil, []byte(`{"service":"ping","req":"one"}`)}, wire.CodeBadRequest},
		{"unknown service", [][]byte{nil, []byte(`{"service":"format_disk"}`)}, wire.CodeUnknownService},
		{"no service", [][]byte{nil, []byte(`{"data":{}}`)}, ""},
		{"a post without a token", [][]byte{nil, []byte(`{"service":"post","data":{"channel":"vault","text":"forged"}}`)}, wire.CodeUnauthorized},
		{"invalid UTF-8", [][]byte{nil, []byte("{\"service\":\"register\",\"data\":{\"user\":\"\xff\xfe\",\"password\":\"pw123456\"}}")}, ""},
		{"100 KB request", [][]byte{nil, []byte(`{"service":"ping","data":"` + strings.Repeat("a", 100<<10) + `"}`)}, wire.CodeTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := bad.send(10*time.Second, tc.frames...)
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK || rep.Error == nil || rep.Error.Message == "" {
				t.Fatalf("reply %+v: want a clear error", rep)
			}
			if tc.code != "" && rep.Error.Code != tc.code {
				t.Fatalf("error %s (%q), want %s", rep.Error.Code, rep.Error.Message, tc.code)
			}
			t.Logf("%s: %q", rep.Error.Code, rep.Error.Message)
		})
	}
	t.Run("10 MB request", func(t *testing.T) {
		// Over the 1 MiB frame limit of the client port: the transport cuts
		// the connection before zmq4 allocates the frame.
		huge := hostileDial(t, c.Frontend)
		before := zmqx.TransportStats().ProtocolErrors
		if err := huge.sock.Send(zmq4.NewMsgFrom(nil, bytes.Repeat([]byte("x"), 10<<20))); err != nil {
			t.Fatal(err)
		}
		hostileEventually(t, 5*time.Second, "the connection to be cut off for its frame size", func() bool {
			return zmqx.TransportStats().ProtocolErrors > before
		})
		if rep, err := huge.recv(100 * time.Millisecond); err == nil {
			t.Fatalf("a reply to 10 MB: %+v", rep)
		}
	})
	if rep, err := good.do(wire.Ping, struct{}{}); err != nil || !rep.OK {
		t.Fatalf("the good client after: %v %+v", err, rep)
	}
	hostileSameData(t, before, good.snapshot("vault"))
}

func TestHostileRogueServer(t *testing.T) {
	c := hostileSystem(t, hostileSecret)
	leader, epoch := c.WaitLeader(10 * time.Second)
	good := hostileDial(t, c.Frontend)
	good.user("victim", "news")
	topic := wire.ChannelTopic("news")
	sub := hostileSubscribe(t, c.Subscribe, topic)
	good.must(wire.Post, wire.PostRequest{Channel: "news", Text: "warm-up"}, nil)
	hostileWaitPub(t, sub, "warm-up")

	const rogueID = 99
	rogueHB := wire.Encode(wire.Heartbeat{Type: "heartbeat", ID: rogueID, Epoch: 1 << 40, Role: wire.RoleLeader})
	fake := wire.Encode(wire.Publication{Type: wire.EventMessage, Epoch: 1 << 40,
		Message: wire.Message{Channel: "news", From: "admin", Text: "FAKE: send your password to admin", Seq: 999}})

	for _, tc := range []struct {
		name string
		opts []zmq4.Option
	}{
		{"no secret", nil},
		{"wrong secret", zmqx.Cluster(hostileSecret + "-guess")},
		{"PLAIN with a guess", []zmq4.Option{zmq4.WithSecurity(zmqx.Plain("admin", "admin"))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			dealer := zmq4.NewDealer(ctx, append([]zmq4.Option{zmq4.WithLogger(zmqx.StdLogger(nil)),
				zmq4.WithTimeout(100 * time.Millisecond), zmq4.WithDialerMaxRetries(1)}, tc.opts...)...)
			defer dealer.Close()
			if err := dealer.Dial(zmqx.Endpoint(c.Backend())); err == nil {
				t.Fatal("a process without the secret joined the broker's backend")
			}
			pub, err := hostilePublisher(t, c.Publish(), tc.opts...)
			if err == nil {
				t.Fatal("a process without the secret joined the pubsub's frontend")
			}
			peer := zmq4.NewDealer(ctx, append([]zmq4.Option{zmq4.WithLogger(zmqx.StdLogger(nil)), zmq4.WithDialerMaxRetries(1)}, tc.opts...)...)
			defer peer.Close()
			if err := peer.Dial(zmqx.Endpoint(c.Peer(leader))); err == nil {
				t.Fatal("a process without the secret reached a server's peer port")
			}
			// Try anyway, for a while.
			for range 5 {
				_ = dealer.Send(zmq4.NewMsg(rogueHB))
				_ = pub.Send(zmq4.NewMsgFrom([]byte(topic), fake))
				time.Sleep(20 * time.Millisecond)
			}
			if id, ep, ok := c.Broker.Leader(); !ok || id != leader || ep != epoch {
				t.Fatalf("the broker routes to server %d epoch %d (ok %v), want %d epoch %d", id, ep, ok, leader, epoch)
			}
			for _, s := range c.Broker.Servers() {
				if s.ID == rogueID {
					t.Fatalf("the broker knows the rogue: %+v", s)
				}
			}
			good.must(wire.Post, wire.PostRequest{Channel: "news", Text: "real " + tc.name}, nil)
			hostileWaitPub(t, sub, "real "+tc.name) // and nothing before it was fake
		})
	}

	t.Run("control: with the secret", func(t *testing.T) {
		pub, err := hostilePublisher(t, c.Publish(), zmqx.Cluster(hostileSecret)...)
		if err != nil {
			t.Fatalf("with the secret: %v", err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for done := false; !done; {
			_ = pub.Send(zmq4.NewMsgFrom([]byte(topic), fake))
			select {
			case m := <-sub.C:
				done = bytes.Contains(m.Frames[1], []byte("FAKE"))
			case <-time.After(50 * time.Millisecond):
			}
			if !done && time.Now().After(deadline) {
				t.Fatal("a publisher with the secret got nothing through: the control failed")
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		dealer := zmq4.NewDealer(ctx, zmq4.WithLogger(zmqx.StdLogger(nil)), zmq4.WithTimeout(time.Second), zmq4.WithSecurity(zmqx.Plain(zmqx.ClusterUser, hostileSecret)))
		defer dealer.Close()
		if err := dealer.Dial(zmqx.Endpoint(c.Backend())); err != nil {
			t.Fatalf("with the secret: %v", err)
		}
		for time.Now().Before(deadline) {
			_ = dealer.Send(zmq4.NewMsg(rogueHB))
			if id, _, ok := c.Broker.Leader(); ok && id == rogueID {
				return // the cluster secret is all that stands between a process and the users' requests
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatal("a server with the secret claiming a newer epoch was not elected: the control failed")
	})
}

// hostileEventually polls cond until it holds.
func hostileEventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hostileWaitPub waits for a publication with text, failing on any fake.
func hostileWaitPub(t *testing.T, sub *zmqx.Inbox, text string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-sub.C:
			if bytes.Contains(m.Frames[1], []byte("FAKE")) {
				t.Fatalf("a subscriber got the rogue's publication: %s", m.Frames[1])
			}
			if bytes.Contains(m.Frames[1], []byte(text)) {
				return
			}
		case <-deadline:
			t.Fatalf("no publication of %q", text)
		}
	}
}

// hostileLibzmqClient is a libzmq DEALER with ZMTP heartbeats every 50 ms
// (a peer that gets no PONG within 200 ms is dropped): it pings the broker,
// sits idle a second, pings again.
const hostileLibzmqClient = `
import json, sys, time, zmq
from zmq.utils.monitor import recv_monitor_message
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.HEARTBEAT_IVL, 50)
s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 200)
mon = s.get_monitor_socket()
s.connect(sys.argv[1])
replies = []
for i in range(2):
    s.send_multipart([b"", json.dumps({"service": "ping", "client": "libzmq", "req": i + 1}).encode()])
    if s.poll(5000):
        replies.append(json.loads(s.recv_multipart()[1]))
    if i == 0:
        time.sleep(1.0)
time.sleep(0.1)
events = []
while mon.poll(0):
    events.append(recv_monitor_message(mon)["event"])
print(json.dumps({"replies": replies, "disconnects": events.count(zmq.EVENT_DISCONNECTED)}))
ctx.destroy(linger=0)
`

func TestHostileLibzmqHeartbeats(t *testing.T) {
	const python = "/usr/bin/python3"
	if err := exec.Command(python, "-c", "import zmq").Run(); err != nil {
		t.Skipf("needs python3-zmq for %s (apt-get install python3-zmq): %v", python, err)
	}
	c := hostileSystem(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, "-c", hostileLibzmqClient, c.Frontend).CombinedOutput()
	if err != nil {
		t.Fatalf("libzmq client: %v\n%s", err, out)
	}
	var res struct {
		Replies     []wire.Reply `json:"replies"`
		Disconnects int          `json:"disconnects"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(res.Replies) != 2 || !res.Replies[0].OK || !res.Replies[1].OK {
		t.Fatalf("replies %+v", res.Replies)
	}
	if res.Disconnects != 0 {
		t.Fatalf("libzmq dropped its connection %d times: its PINGs went unanswered", res.Disconnects)
	}
}
