package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"chat/proxy"
)

func TestListenErrors(t *testing.T) {
	p, _ := startProxy(t, "", "")
	front, back := p.Addr()
	if !strings.HasPrefix(front, "tcp://127.0.0.1:") || strings.HasSuffix(back, ":0") || front == back {
		t.Fatalf("Addr() = %q, %q: want real loopback endpoints", front, back)
	}
	_, err := proxy.Listen(context.Background(), proxy.Config{Frontend: "tcp://127.0.0.1:0", Backend: back})
	want := "proxy: listen " + back + ": address already in use"
	if err == nil || err.Error() != want {
		t.Fatalf("Listen on a used port: %v, want %q", err, want)
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("error %v is not EADDRINUSE", err)
	}
	if _, err := proxy.Listen(context.Background(), proxy.Config{Backend: "tcp://127.0.0.1:0"}); err == nil {
		t.Error("Listen with no frontend: no error")
	}
}

func TestServeAndClose(t *testing.T) {
	p, err := proxy.Listen(context.Background(), proxy.Config{Frontend: "tcp://127.0.0.1:0", Backend: "tcp://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve after cancel: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := p.Serve(context.Background()); err == nil {
		t.Error("second Serve: no error")
	}
}

// TestTopicsAreFiltered: each subscriber gets exactly the publications of its
// own prefixes, "channel/ana/" not "channel/anabela/".
func TestTopicsAreFiltered(t *testing.T) {
	p, _ := startProxy(t, "", "")
	front, back := p.Addr()
	pub := newPub(t, front, false)
	ana := newSub(t, back, false, "channel/ana/")
	anabela := newSub(t, back, false, "channel/anabela/")
	all := newSub(t, back, false, "channel/")
	syncSub(t, pub, ana, "channel/ana/")
	syncSub(t, pub, anabela, "channel/anabela/")
	syncSub(t, pub, all, "channel/")
	for _, s := range []*endpoint{ana, anabela} { // drain the probes of "channel/"
		for {
			if _, _, ok := s.next(20 * time.Millisecond); !ok {
				break
			}
		}
	}

	const n = 100
	for i := range n {
		pub.publish("channel/ana/", fmt.Sprintf("ana %d", i))
		pub.publish("channel/anabela/", fmt.Sprintf("anabela %d", i))
		pub.publish("dm/ana/", fmt.Sprintf("dm %d", i))
	}
	pub.publish("channel/ana/", "end")
	pub.publish("channel/anabela/", "end")

	check := func(name string, s *endpoint, topic, prefix string) {
		t.Helper()
		for i := 0; ; i++ {
			gotTopic, payload, ok := s.next(5 * time.Second)
			if !ok {
				t.Fatalf("%s: publication %d missing", name, i)
			}
			if gotTopic != topic {
				t.Fatalf("%s: got %q on topic %q", name, payload, gotTopic)
			}
			if payload == "end" {
				if i != n {
					t.Fatalf("%s: got %d publications, want %d", name, i, n)
				}
				return
			}
			if want := fmt.Sprintf("%s %d", prefix, i); payload != want {
				t.Fatalf("%s: got %q, want %q", name, payload, want)
			}
		}
	}
	check("ana", ana, "channel/ana/", "ana")
	check("anabela", anabela, "channel/anabela/", "anabela")
	got := map[string]int{}
	for range 2*n + 2 {
		topic, _, ok := all.next(5 * time.Second)
		if !ok {
			break
		}
		got[topic]++
	}
	if got["channel/ana/"] != n+1 || got["channel/anabela/"] != n+1 || len(got) != 2 {
		t.Errorf("subscriber of channel/ got %v", got)
	}
	if _, payload, ok := all.next(50 * time.Millisecond); ok {
		t.Errorf("subscriber of channel/ got an extra %q", payload)
	}
}

// TestPublisherGoesAway: zmq4's own proxy panics when a publisher leaves;
// this one goes on serving the others, and a publisher that comes back.
func TestPublisherGoesAway(t *testing.T) {
	p, _ := startProxy(t, "", "")
	front, back := p.Addr()
	sub := newSub(t, back, false, "t/")
	pub1 := newPub(t, front, false)
	pub2 := newPub(t, front, false)
	syncSub(t, pub1, sub, "t/")
	syncSub(t, pub2, sub, "t/")

	for i := range 200 { // close in the middle of a burst
		pub1.publish("t/", fmt.Sprintf("1 %d", i))
	}
	pub1.close()
	for i := range 10 {
		pub2.publish("t/", fmt.Sprintf("2 %d", i))
	}
	waitForPayload(t, sub, "2 9")

	// The same publisher comes back on a new socket (a restarted server).
	pub1 = newPub(t, front, false)
	syncSub(t, pub1, sub, "t/")
	pub1.publish("t/", "back")
	waitForPayload(t, sub, "back")
}

// TestSubscriberReconnectsAfterProxyRestart: a subscriber that dials with
// automatic reconnect (zmqx.Dialer) gets publications through a restarted
// proxy. The publisher comes back on a new socket: a zmq4 PUB with automatic
// reconnect can deadlock when the proxy goes away (see the package doc).
func TestSubscriberReconnectsAfterProxyRestart(t *testing.T) {
	p, stop := startProxy(t, "", "")
	front, back := p.Addr()
	sub := newSub(t, back, true, "t/")
	pub := newPub(t, front, false)
	syncSub(t, pub, sub, "t/")

	pub.close()
	stop()
	startProxy(t, front, back)
	pub = newPub(t, front, false)
	syncSub(t, pub, sub, "t/")
	pub.publish("t/", "after")
	waitForPayload(t, sub, "after")
}

// waitForPayload reads sub until payload arrives.
func waitForPayload(t *testing.T, sub *endpoint, payload string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, got, ok := sub.next(time.Until(deadline)); ok && got == payload {
			return
		}
	}
	t.Fatalf("%q never arrived", payload)
}
