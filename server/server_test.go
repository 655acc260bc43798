package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/internal/cluster"
	"chat/wire"
)

// rawClient speaks the protocol with a bare zmq4 DEALER, as PROTOCOL.md says.
type rawClient struct {
	t     *testing.T
	addr  string
	sock  zmq4.Socket
	id    string
	req   uint64
	token string
}

func newRaw(t *testing.T, addr string) *rawClient {
	c := &rawClient{t: t, addr: addr, id: fmt.Sprintf("raw-%d", time.Now().UnixNano())}
	c.open()
	t.Cleanup(func() { c.sock.Close() })
	return c
}

func (c *rawClient) open() {
	if c.sock != nil {
		c.sock.Close()
	}
	c.sock = zmq4.NewDealer(context.Background(), zmq4.WithID(zmq4.SocketIdentity(fmt.Sprintf("%s-%d", c.id, time.Now().UnixNano()))))
	if err := c.sock.Dial(c.addr); err != nil {
		c.t.Fatal(err)
	}
}

// do sends one request (retrying on timeouts and retryable errors, as a
// client must) and returns the reply.
func (c *rawClient) do(service string, data any) *wire.Reply {
	c.t.Helper()
	c.req++
	return c.send(c.req, service, data)
}

func (c *rawClient) send(req uint64, service string, data any) *wire.Reply {
	c.t.Helper()
	r := wire.Request{Service: service, Token: c.token, Client: c.id, Req: req}
	if data != nil {
		r.Data = wire.Encode(data)
	}
	for try := 0; try < 40; try++ {
		if err := c.sock.Send(zmq4.NewMsgFrom(nil, wire.Encode(r))); err != nil {
			c.t.Fatal(err)
		}
		got := make(chan zmq4.Msg, 1)
		go func() {
			m, err := c.sock.Recv()
			if err == nil {
				got <- m
			}
		}()
		select {
		case m := <-got:
			var rep wire.Reply
			if err := json.Unmarshal(m.Frames[len(m.Frames)-1], &rep); err != nil {
				c.t.Fatalf("reply is not JSON: %v", err)
			}
			if rep.Req != req {
				continue
			}
			if !rep.OK && wire.Retryable(rep.Error.Code) {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return &rep
		case <-time.After(2 * time.Second):
			c.open() // Lazy Pirate: a fresh socket, the same request
		}
	}
	c.t.Fatalf("%s: no reply", service)
	return nil
}

func mustOK(t *testing.T, rep *wire.Reply, v any) {
	t.Helper()
	if !rep.OK {
		t.Fatalf("%s failed: %s (%s)", rep.Service, rep.Error.Message, rep.Error.Code)
	}
	if v != nil {
		if err := json.Unmarshal(rep.Data, v); err != nil {
			t.Fatalf("%s data: %v", rep.Service, err)
		}
	}
}

// signIn registers user with password and logs this client in as that user.
func (c *rawClient) signIn(user, password string) wire.LoginReply {
	c.t.Helper()
	mustOK(c.t, c.do(wire.Register, wire.Credentials{User: user, Password: password}), nil)
	var l wire.LoginReply
	mustOK(c.t, c.do(wire.Login, wire.Credentials{User: user, Password: password}), &l)
	c.token = l.Token
	return l
}

func TestChatAndFailover(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Servers: 3})
	leader, epoch := c.WaitLeader(10 * time.Second)

	ana := newRaw(t, c.Frontend)
	ana.signIn("Ana", "secret1")

	sub := zmq4.NewSub(context.Background())
	defer sub.Close()
	if err := sub.Dial(c.Subscribe); err != nil {
		t.Fatal(err)
	}
	sub.SetOption(zmq4.OptionSubscribe, wire.ChannelTopic("general"))

	mustOK(t, ana.do(wire.Create, wire.CreateRequest{Channel: "general", Description: "all"}), nil)
	// The subscription may take a moment to reach the pubsub: post until one arrives.
	pubs := make(chan wire.Publication, 100)
	go func() {
		for {
			m, err := sub.Recv()
			if err != nil {
				return
			}
			var p wire.Publication
			if len(m.Frames) == 2 && json.Unmarshal(m.Frames[1], &p) == nil {
				pubs <- p
			}
		}
	}()
	var first wire.MessageReply
	mustOK(t, ana.do(wire.Post, wire.PostRequest{Channel: "general", Text: "hello"}), &first)
	if first.Message.Seq != 1 || first.Message.From != "Ana" {
		t.Fatalf("first message: %+v", first.Message)
	}

	// A retry of the same request is answered again and not applied twice.
	again := ana.send(ana.req, wire.Post, wire.PostRequest{Channel: "general", Text: "hello"})
	var dup wire.MessageReply
	mustOK(t, again, &dup)
	if dup.Message.Seq != 1 {
		t.Fatalf("retried post got seq %d, want the original 1", dup.Message.Seq)
	}

	c.Kill(leader)
	newLeader, newEpoch := c.WaitNewLeader(epoch, 10*time.Second)
	if newLeader == leader || newEpoch <= epoch {
		t.Fatalf("leader %d epoch %d after killing %d (epoch %d)", newLeader, newEpoch, leader, epoch)
	}
	var second wire.MessageReply
	mustOK(t, ana.do(wire.Post, wire.PostRequest{Channel: "general", Text: "still here"}), &second)
	if second.Message.Seq != 2 {
		t.Fatalf("after failover: seq %d, want 2", second.Message.Seq)
	}
	if second.Message.Lamport <= first.Message.Lamport {
		t.Fatalf("lamport went backwards across failover: %d then %d", first.Message.Lamport, second.Message.Lamport)
	}
	var h wire.HistoryReply
	mustOK(t, ana.do(wire.History, wire.HistoryRequest{Channel: "general"}), &h)
	if len(h.Messages) != 2 || h.Messages[0].Text != "hello" || h.Messages[1].Text != "still here" {
		t.Fatalf("history after failover: %+v", h.Messages)
	}
	// The old leader comes back as a follower.
	c.StartServer(leader)
	var st wire.StatusReply
	deadline := time.Now().Add(10 * time.Second)
	for {
		mustOK(t, ana.do(wire.Status, nil), &st)
		ok := st.Leader == newLeader
		for _, s := range st.Servers {
			if s.ID == leader && s.Role != wire.RoleFollower {
				ok = false
			}
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted server did not rejoin as follower: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A leader stopped cleanly (SIGTERM, docker stop) hands over: a follower
// leads in a new epoch, and writes go on, nothing lost.
func TestCleanStopHandsOver(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Servers: 3})
	leader, epoch := c.WaitLeader(10 * time.Second)
	ana := newRaw(t, c.Frontend)
	ana.signIn("ana", "secret")
	mustOK(t, ana.do(wire.Create, wire.CreateRequest{Channel: "general"}), nil)
	mustOK(t, ana.do(wire.Post, wire.PostRequest{Channel: "general", Text: "before"}), nil)
	c.Stop(leader)
	next, nextEpoch := c.WaitNewLeader(epoch, 10*time.Second)
	if next == leader {
		t.Fatalf("server %d still leads after its clean stop", leader)
	}
	var m wire.MessageReply
	mustOK(t, ana.do(wire.Post, wire.PostRequest{Channel: "general", Text: "after"}), &m)
	if m.Message.Seq != 2 {
		t.Fatalf("post after the handover got seq %d, want 2", m.Message.Seq)
	}
	t.Logf("server %d took over in epoch %d", next, nextEpoch)
}
