package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"chat/wire"
)

// TestCrashAllServers SIGKILLs every server at once while a client posts (a
// power cut: batches may be half written), then starts them again on the same
// data. Everything that was acknowledged was durable: it is all there, once,
// with contiguous seqs, and the system serves again.
func TestCrashAllServers(t *testing.T) {
	s := newSystem(t, systemOptions{})
	c := newRawClient(t, s.Frontend)
	c.login(t, "Crasher", "pw-crasher")
	c.join(t, "crash")
	p := startPoster(c, "crash", "crash", postEvery)
	t.Cleanup(p.stop)
	p.waitAcks(t, 10, leadTimeout, nil)

	ids := s.serverIDs()
	for _, id := range ids {
		s.server(id).sigkill()
	}
	for _, id := range ids {
		<-s.server(id).exited
	}
	crashed := len(p.acks())
	for _, id := range ids {
		s.launchServer(id)
	}
	for _, id := range ids {
		s.server(id).waitReady()
	}
	checkThreeServers(t, s)
	p.waitAcks(t, crashed+10, leadTimeout, nil)
	p.stop()
	for _, r := range p.refused {
		t.Errorf("post refused: %s", r)
	}
	hist := c.history(t, "crash")
	leaders := s.checkOneLeaderPerEpoch()
	checkStored(t, "crash", hist, "crash", p.acks(), p.uncertain)
	checkReplies(t, c.allReplies(), leaders)
	checkPostReplies(t, "crash", hist, c.allReplies())
}

// TestBrokerAndPubSubRestart SIGKILLs the broker, then the pubsub, and
// starts each again on its ports while a raw client, a `chat bot` and a
// watching client.Client carry on: requests flow through the new broker (the
// servers reconnect), publications through the new pubsub (subscribers
// reconnect), the bot keeps posting, nothing acknowledged is lost, and the
// watcher is shown every message once, in order.
func TestBrokerAndPubSubRestart(t *testing.T) {
	s := newSystem(t, systemOptions{fixed: true})
	c := newRawClient(t, s.Frontend)
	c.login(t, "Relay", "pw-relay")
	c.join(t, "relay")
	watcher := dialClient(t, s, "watcher")
	loginClient(t, watcher, "RelayWatcher", "pw-watcher")
	if _, err := watcher.Join(t.Context(), "relay"); err != nil {
		t.Fatal(err)
	}
	seen := newEventLog(watcher)
	bot := s.start("bot", []string{"bot", "--broker", s.Frontend, "--pubsub", s.Subscribe, "--name", "relaybot",
		"--channel", "relay", "--rate", "10"}, procOptions{})
	bot.waitLog(leadTimeout, func(l logLine) bool { return l.msg() == "bot ready" })
	p := startPoster(c, "relay", "relay", postEvery)
	t.Cleanup(p.stop)
	p.waitAcks(t, 5, leadTimeout, nil)
	reader := newRawClient(t, s.Frontend) // c is the poster's: one request at a time
	reader.login(t, "RelayReader", "pw-reader")
	reader.join(t, "relay")
	botPosts := func() int {
		n := 0
		for _, a := range reader.history(t, "relay") {
			if strings.HasPrefix(a.Text, "relaybot #") {
				n++
			}
		}
		return n
	}

	// The broker dies and comes back on the same ports.
	s.broker.kill()
	s.startBroker()
	n := len(p.acks())
	p.waitAcks(t, n+5, leadTimeout, nil)
	before := botPosts()
	waitFor(t, leadTimeout, func() error {
		if got := botPosts(); got < before+5 {
			return fmt.Errorf("the bot posted %d messages since the broker came back, want 5", got-before)
		}
		return nil
	})

	// The pubsub dies and comes back on the same ports: live publications
	// reach the watcher again (not only what it fetches from history).
	s.pubsub.kill()
	restartedAt := time.Now()
	s.startPubSub()
	waitFor(t, leadTimeout, func() error {
		seen.mu.Lock()
		defer seen.mu.Unlock()
		for _, ev := range seen.byChan["relay"] {
			if !ev.Recovered && ev.Time.After(restartedAt) {
				return nil
			}
		}
		return fmt.Errorf("no live publication since the pubsub came back")
	})
	n = len(p.acks())
	p.waitAcks(t, n+5, leadTimeout, nil)

	p.stop()
	bot.term()
	for _, r := range p.refused {
		t.Errorf("post refused: %s", r)
	}
	hist := c.history(t, "relay")
	checkStored(t, "relay", hist, "relay", p.acks(), p.uncertain)
	checkPostReplies(t, "relay", hist, c.allReplies())
	seen.check(t, "relay", hist)
	st := s.waitStatus(leadTimeout, func(st *wire.StatusReply) error {
		if st.Leader == 0 {
			return fmt.Errorf("no leader")
		}
		return nil
	})
	t.Logf("after both restarts: %s", fmtStatus(st))
}
