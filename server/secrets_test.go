package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/internal/cluster"
	"chat/internal/testutil"
	"chat/server"
	"chat/wire"
)

// A subscriber that connects to the pubsub and subscribes to everything sees
// that direct messages happen, but not their text, sender, recipient or
// whose mailbox they go to. Channel messages stay public.
func TestDirectMessagesArePrivateOnTheBus(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Servers: 1})
	c.WaitLeader(10 * time.Second)

	spy := zmq4.NewSub(context.Background())
	defer spy.Close()
	if err := spy.Dial(c.Subscribe); err != nil {
		t.Fatal(err)
	}
	spy.SetOption(zmq4.OptionSubscribe, "")
	var mu sync.Mutex
	var seen []string
	go func() {
		for {
			m, err := spy.Recv()
			if err != nil {
				return
			}
			mu.Lock()
			seen = append(seen, string(bytes.Join(m.Frames, []byte(" | "))))
			mu.Unlock()
		}
	}()

	ana, bob := newRaw(t, c.Frontend), newRaw(t, c.Frontend)
	ana.signIn("anabela", "pw-anabela")
	bobLogin := bob.signIn("bob", "pw-bob")
	if bobLogin.Key == "" || strings.Contains(bobLogin.Topic, "bob") {
		t.Fatalf("login gave mailbox topic %q and key %q: want a secret topic and a key", bobLogin.Topic, bobLogin.Key)
	}
	mustOK(t, ana.do(wire.Create, wire.CreateRequest{Channel: "lobby"}), nil)
	// Channel posts show the spy is receiving; DMs are what it must not read.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mustOK(t, ana.do(wire.DM, wire.DMRequest{To: "bob", Text: "the vault code is 4711"}), nil)
		mustOK(t, ana.do(wire.Post, wire.PostRequest{Channel: "lobby", Text: "public hello"}), nil)
		mu.Lock()
		all := strings.Join(seen, "\n")
		mu.Unlock()
		if strings.Contains(all, "public hello") && strings.Contains(all, `"type":"dm"`) {
			if strings.Contains(all, "4711") || strings.Contains(all, "vault") {
				t.Fatalf("a subscriber to everything read a direct message:\n%s", all)
			}
			for _, line := range strings.Split(all, "\n") {
				if !strings.HasPrefix(line, "channel/") && (strings.Contains(line, "anabela") || strings.Contains(line, "bob")) {
					t.Fatalf("a direct-message publication names its users: %s", line)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the spy saw no publications:\n%s", all)
		}
	}
	// Bob reads his DM through the request path, as himself.
	var h wire.HistoryReply
	mustOK(t, bob.do(wire.History, wire.HistoryRequest{Direct: true}), &h)
	if len(h.Messages) == 0 || h.Messages[0].Text != "the vault code is 4711" {
		t.Fatalf("bob's direct messages: %+v", h.Messages)
	}
	// And Ana cannot read Bob's mailbox with her token.
	var ah wire.HistoryReply
	mustOK(t, ana.do(wire.History, wire.HistoryRequest{Direct: true}), &ah)
	for _, m := range ah.Messages {
		if m.From != "anabela" && m.To != "anabela" {
			t.Fatalf("ana's history holds someone else's DM: %+v", m)
		}
	}
}

// No password, hash, token or key reaches a reply, a log line or a stored
// message; no password or token reaches the data directory.
func TestSecretsStaySecret(t *testing.T) {
	logs := &testutil.Buffer{}
	c := cluster.Start(t, cluster.Options{Servers: 2, Log: logs})
	c.WaitLeader(10 * time.Second)
	const password = "hunter2-very-secret"
	ana := newRaw(t, c.Frontend)
	mustOK(t, ana.do(wire.Register, wire.Credentials{User: "ana", Password: password}), nil)
	bad := ana.do(wire.Login, wire.Credentials{User: "ana", Password: "wrong-" + password})
	if bad.OK || bad.Error.Code != wire.CodeBadCredentials || strings.Contains(bad.Error.Message, password) {
		t.Fatalf("wrong password: %+v", bad)
	}
	var login wire.LoginReply
	rep := ana.do(wire.Login, wire.Credentials{User: "ana", Password: password})
	mustOK(t, rep, &login)
	ana.token = login.Token
	var replies []string
	for _, r := range []*wire.Reply{
		ana.do(wire.Create, wire.CreateRequest{Channel: "general"}),
		ana.do(wire.Post, wire.PostRequest{Channel: "general", Text: "hi"}),
		ana.do(wire.Users, nil),
		ana.do(wire.Channels, nil),
		ana.do(wire.History, wire.HistoryRequest{Channel: "general"}),
		ana.do(wire.Status, nil),
	} {
		b, _ := json.Marshal(r)
		replies = append(replies, string(b))
	}
	all := strings.Join(replies, "\n")
	for _, secret := range []string{password, login.Token, "argon2", "$argon2id$", c.Config(1).Secret} {
		if strings.Contains(all, secret) {
			t.Errorf("a reply contains %.20q...", secret)
		}
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the logs contain %.20q...", secret)
		}
	}
	if !strings.Contains(logs.String(), "leading") {
		t.Fatalf("the log capture is empty; the check above proves nothing:\n%s", logs.String())
	}
	err := filepath.WalkDir(c.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, secret := range []string{password, login.Token} {
			if bytes.Contains(b, []byte(secret)) {
				t.Errorf("%s contains %.20q...", path, secret)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Guessing passwords at speed is slowed down, for the user and the client,
// without locking the real user out for long; a flood of posts is refused
// with a clear error while other users keep posting.
func TestLimits(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Servers: 1, Tune: func(cfg *server.Config) {
		cfg.PostRate, cfg.PostBurst = 1, 5
	}})
	c.WaitLeader(10 * time.Second)
	ana, eve := newRaw(t, c.Frontend), newRaw(t, c.Frontend)
	mustOK(t, ana.do(wire.Register, wire.Credentials{User: "ana", Password: "right-one"}), nil)
	var limited *wire.Reply
	for i := range 20 {
		r := eve.do(wire.Login, wire.Credentials{User: "ana", Password: fmt.Sprintf("guess-%d", i)})
		if !r.OK && r.Error.Code == wire.CodeRateLimited {
			limited = r
			break
		}
		if r.OK || r.Error.Code != wire.CodeBadCredentials {
			t.Fatalf("guess %d: %+v", i, r)
		}
	}
	if limited == nil || !strings.Contains(limited.Error.Message, "wait") {
		t.Fatalf("20 wrong passwords in a row were never slowed down: %+v", limited)
	}
	// Even the right password must wait now: the lock is on the user.
	if r := ana.do(wire.Login, wire.Credentials{User: "ana", Password: "right-one"}); r.OK || r.Error.Code != wire.CodeRateLimited {
		t.Fatalf("login during the lockout: %+v", r)
	}

	bob := newRaw(t, c.Frontend)
	bob.signIn("bob", "bobs-pass")
	mustOK(t, bob.do(wire.Create, wire.CreateRequest{Channel: "flood"}), nil)
	refused := 0
	for i := range 30 {
		r := bob.do(wire.Post, wire.PostRequest{Channel: "flood", Text: fmt.Sprint("spam ", i)})
		if !r.OK {
			if r.Error.Code != wire.CodeRateLimited {
				t.Fatalf("post %d: %+v", i, r)
			}
			refused++
		}
	}
	if refused == 0 {
		t.Fatal("30 posts at once with a burst of 5 were all accepted")
	}
	var h wire.HistoryReply
	mustOK(t, bob.do(wire.History, wire.HistoryRequest{Channel: "flood", Limit: 100}), &h)
	if len(h.Messages) != 30-refused {
		t.Fatalf("history holds %d posts, want the %d accepted", len(h.Messages), 30-refused)
	}
}

// Replaying another client's id and request number, with one's own token,
// does not hand over that client's stored answer (here: Ana's direct
// message to Bob); it is a request of its own.
func TestReplayedRequestIDsGiveNothingAway(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Servers: 1})
	c.WaitLeader(10 * time.Second)
	ana, eve, bob := newRaw(t, c.Frontend), newRaw(t, c.Frontend), newRaw(t, c.Frontend)
	ana.signIn("ana", "pw-ana")
	eve.signIn("eve", "pw-eve")
	bob.signIn("bob", "pw-bob")
	mustOK(t, ana.do(wire.DM, wire.DMRequest{To: "bob", Text: "meet at 6, the code is 4711"}), nil)

	eve.id = ana.id // Eve learned Ana's client id and guesses her request number
	rep := eve.send(ana.req, wire.DM, wire.DMRequest{To: "bob", Text: "hello"})
	var got wire.MessageReply
	mustOK(t, rep, &got)
	if strings.Contains(got.Message.Text, "4711") || got.Message.From != "eve" {
		t.Fatalf("a replayed request id returned another user's answer: %+v", got.Message)
	}
}

// Centralized mutual exclusion: 50 clients race to create one channel;
// the leader serializes them: exactly one succeeds, the others are told it
// exists.
func TestCreateRaceHasOneWinner(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Servers: 3})
	c.WaitLeader(10 * time.Second)
	const n = 50
	clients := make([]*rawClient, n)
	for i := range clients {
		clients[i] = newRaw(t, c.Frontend)
		user := fmt.Sprint("racer", i)
		clients[i].signIn(user, "password")
	}
	results := make(chan *wire.Reply, n)
	start := make(chan struct{})
	for _, cl := range clients {
		go func() {
			<-start
			results <- cl.do(wire.Create, wire.CreateRequest{Channel: "contested"})
		}()
	}
	close(start)
	won, exists := 0, 0
	for range n {
		r := <-results
		switch {
		case r.OK:
			won++
		case r.Error.Code == wire.CodeExists:
			exists++
		default:
			t.Errorf("create failed otherwise: %+v", r.Error)
		}
	}
	if won != 1 || exists != n-1 {
		t.Fatalf("%d created the channel and %d were told it exists; want 1 and %d", won, exists, n-1)
	}
}

// Logout ends every session of the user so far, on every server (it is in
// the replicated state); a new login works again.
func TestLogoutRevokesTokens(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Servers: 2})
	leader, epoch := c.WaitLeader(10 * time.Second)
	ana := newRaw(t, c.Frontend)
	ana.signIn("ana", "secret")
	mustOK(t, ana.do(wire.Channels, nil), nil)
	mustOK(t, ana.do(wire.Logout, nil), nil)
	c.Kill(leader) // the revocation must hold on the next leader too
	c.WaitNewLeader(epoch, 10*time.Second)
	r := ana.do(wire.Channels, nil)
	if r.OK || r.Error.Code != wire.CodeUnauthorized || !strings.Contains(r.Error.Message, "logout") {
		t.Fatalf("a logged-out token after a failover: %+v", r)
	}
	var l wire.LoginReply
	mustOK(t, ana.do(wire.Login, wire.Credentials{User: "ana", Password: "secret"}), &l)
	ana.token = l.Token
	mustOK(t, ana.do(wire.Channels, nil), nil)
	ana.token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbmEiLCJpc3MiOiJjaGF0In0."
	if r := ana.do(wire.Channels, nil); r.OK || r.Error.Code != wire.CodeUnauthorized {
		t.Fatalf("an alg-none token: %+v", r)
	}
}
