package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/internal/benchutil"
	"chat/internal/cluster"
	"chat/server"
	"chat/wire"
)

// BenchmarkPost measures acknowledged posts through the whole request path:
// client -> broker -> leader (append + fdatasync + apply) -> broker -> client,
// with 1 and 8 concurrent clients, against three servers. The baseline in the
// same run is a bare zmq4 DEALER -> ROUTER echo with the same concurrency.
func BenchmarkPost(b *testing.B) {
	for _, clients := range []int{1, 8} {
		b.Run(fmt.Sprintf("clients=%d/chat", clients), func(b *testing.B) { benchPost(b, clients) })
		b.Run(fmt.Sprintf("clients=%d/bare-zmq4", clients), func(b *testing.B) { benchEcho(b, clients) })
	}
}

// benchClient is a minimal synchronous DEALER client.
type benchClient struct {
	sock  zmq4.Socket
	id    string
	req   uint64
	token string
}

func dialBench(b *testing.B, addr, id string) *benchClient {
	sock := zmq4.NewDealer(context.Background(), zmq4.WithID(zmq4.SocketIdentity(id)))
	if err := sock.Dial(addr); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sock.Close() })
	return &benchClient{sock: sock, id: id}
}

func (c *benchClient) call(b *testing.B, service string, data any) *wire.Reply {
	c.req++
	r := wire.Request{Service: service, Token: c.token, Client: c.id, Req: c.req, Data: wire.Encode(data)}
	if err := c.sock.Send(zmq4.NewMsgFrom(nil, wire.Encode(r))); err != nil {
		b.Fatal(err)
	}
	for {
		m, err := c.sock.Recv()
		if err != nil {
			b.Fatal(err)
		}
		var rep wire.Reply
		if err := json.Unmarshal(m.Frames[len(m.Frames)-1], &rep); err != nil {
			b.Fatal(err)
		}
		if rep.Req == c.req {
			if !rep.OK {
				b.Fatalf("%s: %s", service, rep.Error.Message)
			}
			return &rep
		}
	}
}

func benchPost(b *testing.B, clients int) {
	c := cluster.Start(b, cluster.Options{Servers: 3, Tune: func(cfg *server.Config) {
		cfg.PostRate = 1e9 // measure the path, not the limiter
	}})
	c.WaitLeader(10 * time.Second)
	cs := make([]*benchClient, clients)
	for i := range cs {
		name := fmt.Sprintf("bench%d", i)
		cs[i] = dialBench(b, c.Frontend, name+"-client")
		cs[i].call(b, wire.Register, wire.Credentials{User: name, Password: "password"})
		var l wire.LoginReply
		json.Unmarshal(cs[i].call(b, wire.Login, wire.Credentials{User: name, Password: "password"}).Data, &l)
		cs[i].token = l.Token
		if i == 0 {
			cs[i].call(b, wire.Create, wire.CreateRequest{Channel: "bench"})
		} else {
			cs[i].call(b, wire.Join, wire.NameRequest{Channel: "bench"})
		}
	}
	benchutil.RoundTrips(b, clients, func(i int) error {
		cs[i].call(b, wire.Post, wire.PostRequest{Channel: "bench", Text: "a message of about a hundred bytes, which is what people type in a chat line....."})
		return nil
	})
}

func benchEcho(b *testing.B, clients int) {
	echo := benchutil.BareEcho(b)
	cs := make([]zmq4.Socket, clients)
	for i := range cs {
		cs[i] = zmq4.NewDealer(context.Background(), zmq4.WithID(zmq4.SocketIdentity(fmt.Sprint("echo", i))))
		if err := cs[i].Dial(echo); err != nil {
			b.Fatal(err)
		}
		defer cs[i].Close()
	}
	payload := make([]byte, 200)
	benchutil.RoundTrips(b, clients, func(i int) error {
		if err := cs[i].Send(zmq4.NewMsgFrom(nil, payload)); err != nil {
			return err
		}
		_, err := cs[i].Recv()
		return err
	})
}
