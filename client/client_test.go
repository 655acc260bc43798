package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"chat/client"
	"chat/client/clienttest"
	"chat/wire"
)

// newClient dials fake with short timeouts; the client is closed at the end of the test.
func newClient(t *testing.T, fake *clienttest.Server, edit ...func(*client.Config)) *client.Client {
	t.Helper()
	cfg := client.Config{Broker: fake.Broker, PubSub: fake.PubSub, Timeout: 500 * time.Millisecond, Retries: 5}
	for _, e := range edit {
		e(&cfg)
	}
	c, err := client.Dial(context.Background(), cfg)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// loggedIn returns a client logged in as user (created on the fake) and
// subscribed to channel (created and joined), with its subscriptions active.
func loggedIn(t *testing.T, fake *clienttest.Server, user, channel string, edit ...func(*client.Config)) *client.Client {
	t.Helper()
	c := newClient(t, fake, edit...)
	fake.AddUser(user, "secret")
	if _, err := c.Login(ctxT(t), user, "secret"); err != nil {
		t.Fatalf("login: %v", err)
	}
	topics := []string{wire.DMTopic(user)}
	if channel != "" {
		if _, err := c.Join(ctxT(t), channel); err != nil && wire.ErrorCode(err) != wire.CodeNotFound {
			t.Fatalf("join: %v", err)
		} else if err != nil {
			if _, err := c.Create(ctxT(t), channel, ""); err != nil {
				t.Fatalf("create: %v", err)
			}
		}
		topics = append(topics, wire.ChannelTopic(channel))
	}
	fake.WaitSubscribed(topics...)
	return c
}

// next returns the next event, failing the test after 10s.
func next(t *testing.T, c *client.Client) client.Event {
	t.Helper()
	select {
	case ev, ok := <-c.Events():
		if !ok {
			t.Fatal("events closed")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	panic("unreachable")
}

// expectSeqs reads len(want) events and checks their sequence numbers.
func expectSeqs(t *testing.T, c *client.Client, want ...uint64) []client.Event {
	t.Helper()
	var evs []client.Event
	for _, w := range want {
		ev := next(t, c)
		if ev.Seq != w {
			t.Fatalf("event %d: got seq %d (%q), want %d", len(evs)+1, ev.Seq, ev.Text, w)
		}
		evs = append(evs, ev)
	}
	return evs
}

func TestLazyPirateResendsTheSameRequest(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := loggedIn(t, fake, "ana", "general")
	fake.DropReplies(2) // applied, but the replies are lost
	m, err := c.Post(ctxT(t), "general", "hello")
	if err != nil {
		t.Fatalf("post: %v", err)
	}
	posts := fake.RequestsFor(wire.Post)
	if len(posts) < 3 {
		t.Fatalf("fake got %d post requests, want 3 (two lost replies)", len(posts))
	}
	for _, p := range posts {
		if p.Client != c.ID() || p.Req != posts[0].Req || p.Lamport != posts[0].Lamport {
			t.Fatalf("retry differs: %+v vs %+v", p, posts[0])
		}
	}
	if stored := fake.Messages("general"); len(stored) != 1 || m.Seq != 1 {
		t.Fatalf("stored %d messages, reply seq %d: want the post applied once", len(stored), m.Seq)
	}
	ev := next(t, c)
	if ev.Seq != 1 || ev.Text != "hello" || ev.Kind != wire.EventMessage {
		t.Fatalf("event %+v", ev)
	}
}

func TestRetryableRepliesAreRetried(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := newClient(t, fake)
	fake.Unavailable(3)
	if _, err := c.Status(ctxT(t)); err != nil {
		t.Fatalf("status: %v", err)
	}
	reqs := fake.RequestsFor(wire.Status)
	if len(reqs) != 4 {
		t.Fatalf("fake got %d status requests, want 4", len(reqs))
	}
	for _, r := range reqs {
		if r.Req != reqs[0].Req {
			t.Fatalf("retry has req %d, want %d", r.Req, reqs[0].Req)
		}
	}
}

func TestOutOfTries(t *testing.T) {
	t.Run("no broker", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ep := "tcp://" + l.Addr().String()
		_ = l.Close() // nothing listens there now
		c, err := client.Dial(context.Background(), client.Config{Broker: ep, PubSub: ep, Timeout: 100 * time.Millisecond, Retries: 3})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		err = c.Ping(ctxT(t))
		want := fmt.Sprintf(`ping: could not connect to the chat broker at %s after 3 tries (`, ep)
		if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.HasSuffix(err.Error(), `is "chat up" running?`) {
			t.Fatalf("got %v, want %s...", err, want)
		}
		var ue *client.UnreachableError
		if !errors.As(err, &ue) || ue.Tries != 3 {
			t.Fatalf("got %#v, want an *UnreachableError after 3 tries", err)
		}
	})
	t.Run("no reply", func(t *testing.T) {
		fake := clienttest.NewServer(t)
		c := newClient(t, fake, func(cfg *client.Config) { cfg.Timeout, cfg.Retries = 200*time.Millisecond, 3 })
		fake.DropReplies(100)
		err := c.Ping(ctxT(t))
		want := fmt.Sprintf(`ping: no reply from the chat servers at %s after 3 tries (`, fake.Broker)
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Fatalf("got %v, want %s...", err, want)
		}
		if n := len(fake.RequestsFor(wire.Ping)); n < 1 || n > 3 {
			t.Fatalf("fake got %d pings, want 1 to 3", n)
		}
	})
	t.Run("no leader", func(t *testing.T) {
		fake := clienttest.NewServer(t)
		c := newClient(t, fake, func(cfg *client.Config) { cfg.Retries = 2 })
		fake.Unavailable(100)
		err := c.Ping(ctxT(t))
		if wire.ErrorCode(err) != wire.CodeUnavailable || !strings.Contains(err.Error(), "try again in a moment") {
			t.Fatalf("got %v (code %q), want unavailable after 2 tries", err, wire.ErrorCode(err))
		}
	})
}

func TestRefusalIsAWireError(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := loggedIn(t, fake, "ana", "")
	_, err := c.Join(ctxT(t), "nowhere")
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.CodeNotFound {
		t.Fatalf("got %v, want a *wire.Error not_found", err)
	}
	if len(fake.RequestsFor(wire.Join)) != 1 {
		t.Fatal("a refused request was retried")
	}
	if got := c.Joined(); len(got) != 0 {
		t.Fatalf("still subscribed to %v after a refused join", got)
	}
}

func TestGapIsFetchedFromHistory(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := loggedIn(t, fake, "ana", "general")
	var ms []wire.Message
	for i := 1; i <= 5; i++ {
		ms = append(ms, fake.Store("general", "bob", fmt.Sprintf("m%d", i)))
	}
	topic := wire.ChannelTopic("general")
	for _, i := range []int{0, 1, 4} { // 3 and 4 are lost
		fake.Publish(topic, wire.EventMessage, fake.Epoch(), ms[i])
	}
	evs := expectSeqs(t, c, 1, 2, 3, 4, 5)
	for i, ev := range evs {
		if ev.Text != ms[i].Text || ev.Channel != "general" {
			t.Fatalf("event %d: %+v", i+1, ev)
		}
		if rec := i == 2 || i == 3; ev.Recovered != rec {
			t.Fatalf("event %d: recovered=%v, want %v", i+1, ev.Recovered, rec)
		}
	}
	fake.Post("general", "bob", "m6")
	expectSeqs(t, c, 6) // nothing delivered twice in between
}

func TestGapLongerThanOneHistoryPage(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := loggedIn(t, fake, "ana", "general")
	n := wire.MaxHistory + 20
	for i := 1; i < n; i++ {
		fake.Store("general", "bob", fmt.Sprint(i))
	}
	fake.Post("general", "bob", fmt.Sprint(n))
	for i := 1; i <= n; i++ {
		if ev := next(t, c); ev.Seq != uint64(i) {
			t.Fatalf("got seq %d, want %d", ev.Seq, i)
		}
	}
}

func TestDuplicatesAreDropped(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := loggedIn(t, fake, "ana", "general")
	m1 := fake.Store("general", "bob", "one")
	m2 := fake.Store("general", "bob", "two")
	topic := wire.ChannelTopic("general")
	for _, m := range []wire.Message{m1, m1, m2, m1, m2} {
		fake.Publish(topic, wire.EventMessage, fake.Epoch(), m)
	}
	fake.Post("general", "bob", "three")
	expectSeqs(t, c, 1, 2, 3)
}

func TestOwnPostIsDeliveredOnce(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := loggedIn(t, fake, "ana", "general")
	for i := 1; i <= 3; i++ {
		if _, err := c.Post(ctxT(t), "general", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	expectSeqs(t, c, 1, 2, 3)
	fake.Post("general", "bob", "4")
	expectSeqs(t, c, 4)
}

func TestOldEpochPublicationIsIgnored(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := loggedIn(t, fake, "ana", "general")
	fake.SetEpoch(5)
	if err := c.Ping(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if c.Epoch() != 5 {
		t.Fatalf("epoch %d after a reply of epoch 5", c.Epoch())
	}
	topic := wire.ChannelTopic("general")
	fake.Publish(topic, wire.EventMessage, 4, wire.Message{Channel: "general", From: "old", Text: "stale", Seq: 1})
	fake.Post("general", "bob", "fresh")
	ev := next(t, c)
	if ev.Seq != 1 || ev.Text != "fresh" || ev.Epoch != 5 {
		t.Fatalf("got %+v, want seq 1 \"fresh\" of epoch 5", ev)
	}
}

func TestLoginSubscribesToMemberships(t *testing.T) {
	fake := clienttest.NewServer(t)
	fake.AddUser("ana", "secret")
	fake.AddMember("ana", "general")
	fake.AddMember("ana", "random")
	fake.Post("random", "ana", "before") // older than the login: not an event
	c := newClient(t, fake)
	r, err := c.Login(ctxT(t), "ana", "secret")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Joined(), ","); got != "general,random" || c.User() != "ana" || r.Token == "" {
		t.Fatalf("joined %q as %q", got, c.User())
	}
	fake.WaitSubscribed(wire.ChannelTopic("general"), wire.ChannelTopic("random"), wire.DMTopic("ana"))
	fake.Post("random", "bob", "after")
	if ev := next(t, c); ev.Channel != "random" || ev.Seq != 2 || ev.Text != "after" {
		t.Fatalf("got %+v", ev)
	}

	bob := loggedIn(t, fake, "bob", "")
	if _, err := bob.DM(ctxT(t), "ana", "psst"); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, c); ev.Kind != wire.EventDM || ev.From != "bob" || ev.To != "ana" || ev.Seq != 1 {
		t.Fatalf("got %+v", ev)
	}
	if ev := next(t, bob); ev.Kind != wire.EventDM || ev.From != "bob" || ev.Seq != 1 {
		t.Fatalf("sender's copy: got %+v", ev)
	}

	if err := c.Logout(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if len(c.Joined()) != 0 || c.User() != "" {
		t.Fatalf("after logout: joined %v as %q", c.Joined(), c.User())
	}
	if err := c.Ping(ctxT(t)); wire.ErrorCode(err) != wire.CodeUnauthorized {
		t.Fatalf("ping after logout: %v", err)
	}
}

func TestNewEpochResyncsStreams(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := loggedIn(t, fake, "ana", "general")
	// The old leader's last message was stored but never published, and
	// nothing after it reveals the gap: only the new epoch does.
	fake.Store("general", "bob", "last words")
	fake.SetEpoch(fake.Epoch() + 1)
	if err := c.Ping(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	ev := next(t, c)
	if ev.Seq != 1 || ev.Text != "last words" || !ev.Recovered {
		t.Fatalf("got %+v", ev)
	}
}

func TestPeriodicResync(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := loggedIn(t, fake, "ana", "general", func(cfg *client.Config) { cfg.ResyncEvery = 50 * time.Millisecond })
	fake.Store("general", "bob", "unpublished")
	if ev := next(t, c); ev.Seq != 1 || !ev.Recovered {
		t.Fatalf("got %+v", ev)
	}
}

func TestSubscriberSurvivesPubSubRestart(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := loggedIn(t, fake, "ana", "general", func(cfg *client.Config) { cfg.ResyncEvery = time.Hour })
	fake.RestartPubSub()
	fake.WaitSubscribed(wire.ChannelTopic("general"), wire.DMTopic("ana"))
	fake.Post("general", "bob", "still here")
	if ev := next(t, c); ev.Seq != 1 || ev.Recovered {
		t.Fatalf("got %+v, want seq 1 received live", ev)
	}
}

func TestRequestsSurviveBrokerRestart(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := loggedIn(t, fake, "ana", "")
	fake.RestartBroker()
	if err := c.Ping(ctxT(t)); err != nil {
		t.Fatalf("ping after a broker restart: %v", err)
	}
}

func TestTimeEstimatesTheOffset(t *testing.T) {
	fake := clienttest.NewServer(t)
	fake.SetClockSkew(3 * time.Second)
	c := newClient(t, fake, func(cfg *client.Config) { cfg.Skew = -time.Second })
	ti, err := c.Time(ctxT(t), 5)
	if err != nil {
		t.Fatal(err)
	}
	want := 4 * time.Second
	if d := (ti.Offset - want).Abs(); d > ti.Error+50*time.Millisecond {
		t.Fatalf("offset %s, want %s within %s", ti.Offset, want, ti.Error)
	}
	if ti.Samples != 5 || ti.Error != ti.RTT/2 || c.Offset() != ti.Offset {
		t.Fatalf("got %+v, Offset() %s", ti, c.Offset())
	}
	if d := c.Now().Sub(time.Now().Add(3 * time.Second)).Abs(); d > time.Second/2 {
		t.Fatalf("Now is %s off the servers' clock", d)
	}
}

func TestLamportAdvances(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := loggedIn(t, fake, "ana", "general")
	before := c.Lamport()
	m, err := c.Post(ctxT(t), "general", "x")
	if err != nil {
		t.Fatal(err)
	}
	if c.Lamport() <= m.Lamport || m.Lamport <= before {
		t.Fatalf("lamport before %d, message %d, after %d", before, m.Lamport, c.Lamport())
	}
	reqs := fake.Requests()
	for i := 1; i < len(reqs); i++ {
		if reqs[i].Lamport <= reqs[i-1].Lamport || reqs[i].Req <= reqs[i-1].Req {
			t.Fatalf("request %d: lamport %d req %d after lamport %d req %d", i, reqs[i].Lamport, reqs[i].Req, reqs[i-1].Lamport, reqs[i-1].Req)
		}
	}
}

func TestCloseInterruptsARequest(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := newClient(t, fake, func(cfg *client.Config) { cfg.Timeout = 10 * time.Second })
	fake.DropReplies(100)
	errc := make(chan error, 1)
	go func() { errc <- c.Ping(context.Background()) }()
	for len(fake.RequestsFor(wire.Ping)) == 0 {
		time.Sleep(5 * time.Millisecond) // polling until the request is in flight
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, client.ErrClosed) {
		t.Fatalf("got %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-c.Events(); ok {
		t.Fatal("events still open after Close")
	}
	if err := c.Ping(context.Background()); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("got %v, want ErrClosed", err)
	}
}

func TestContextEndsARequest(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := newClient(t, fake, func(cfg *client.Config) { cfg.Timeout = 10 * time.Second })
	fake.DelayReplies(1, 300*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := c.Ping(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a deadline error", err)
	}
	// The late reply of the abandoned ping arrives while status waits: it
	// must not be taken for the status reply.
	fake.DelayReplies(1, 500*time.Millisecond)
	st, err := c.Status(ctxT(t))
	if err != nil || st.Leader != 1 {
		t.Fatalf("status: %+v, %v", st, err)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []client.Config{
		{Broker: "localhost:5555"},
		{Retries: -1},
		{Timeout: -time.Second},
	} {
		if _, err := client.Dial(context.Background(), cfg); err == nil {
			t.Errorf("Dial(%+v) succeeded", cfg)
		}
	}
}

func TestConcurrentPostsAreDeliveredOnceInOrder(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := loggedIn(t, fake, "ana", "general")
	other := loggedIn(t, fake, "bob", "general")
	const workers, each = 4, 20
	errc := make(chan error, 2*workers)
	for w := range 2 * workers {
		poster := c
		if w%2 == 1 {
			poster = other // publications c did not cause, interleaved with its own replies
		}
		go func() {
			for i := range each {
				if _, err := poster.Post(ctxT(t), "general", fmt.Sprintf("%d/%d", w, i)); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for range 2 * workers {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 2*workers*each; i++ {
		if ev := next(t, c); ev.Seq != uint64(i) {
			t.Fatalf("got seq %d, want %d", ev.Seq, i)
		}
	}
	fake.Post("general", "carol", "last")
	expectSeqs(t, c, 2*workers*each+1)
}

func TestIdleLoggedInClientPings(t *testing.T) {
	fake := clienttest.NewServer(t)
	c := loggedIn(t, fake, "ana", "", func(cfg *client.Config) { cfg.PingEvery = 50 * time.Millisecond })
	deadline := time.Now().Add(10 * time.Second)
	for len(fake.RequestsFor(wire.Ping)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no ping within 10s")
		}
		time.Sleep(10 * time.Millisecond) // polling
	}
	if p := fake.RequestsFor(wire.Ping)[0]; p.Token == "" || p.Client != c.ID() {
		t.Fatalf("ping %+v: want the session's token and client id", p)
	}
}
