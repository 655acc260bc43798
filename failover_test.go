package main

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"chat/wire"
)

// postEvery paces the posters of these tests: under the servers' per-user
// rate limit (20 changes a second).
const postEvery = 60 * time.Millisecond

// botCount is how many posts the `chat bot --count` of a failover test makes
// (at 15 a second: it runs through the failover).
const botCount = 40

// failoverSetup starts a system, a poster posting numbered messages to
// channel while a recorder keeps its publications, and a `chat bot --count`
// posting there too.
func failoverSetup(t *testing.T, channel, prefix string) (*system, *rawClient, *poster, *pubRecorder, *wire.StatusReply) {
	t.Helper()
	s := newSystem(t, systemOptions{})
	st := s.waitStatus(leadTimeout, func(st *wire.StatusReply) error {
		if st.Leader == 0 || len(st.Servers) != 3 {
			return fmt.Errorf("want a leader and three servers")
		}
		return nil
	})
	c := newRawClient(t, s.Frontend)
	c.login(t, "Poster-"+prefix, "pw-"+prefix)
	c.join(t, channel)
	pubs := s.recordPublications(wire.ChannelTopic(channel))
	p := startPoster(c, channel, prefix, postEvery)
	t.Cleanup(p.stop)
	bot := s.start("bot", []string{"bot", "--broker", s.Frontend, "--pubsub", s.Subscribe, "--name", "bot-" + prefix,
		"--channel", channel, "--rate", "15", "--count", strconv.Itoa(botCount)}, procOptions{})
	p.waitAcks(t, 5, leadTimeout, nil)
	bot.waitLog(leadTimeout, func(l logLine) bool { return l.msg() == "bot ready" })
	return s, c, p, pubs, st
}

// verifyPosts stops the poster and checks everything it was told against the
// history, the publications and the servers' logs.
func verifyPosts(t *testing.T, s *system, c *rawClient, p *poster, pubs *pubRecorder) []wire.Message {
	t.Helper()
	p.stop()
	for _, r := range p.refused {
		t.Errorf("post refused: %s", r)
	}
	// The bot finishes its count by itself and exits cleanly.
	bot := s.proc("bot")
	select {
	case <-bot.exited:
	case <-time.After(time.Minute):
		t.Fatalf("the bot did not finish its %d posts\n%s", botCount, bot.tail(20))
	}
	if err := bot.cleanExit(); err != nil {
		t.Errorf("%v\n%s", err, bot.tail(20))
	}
	done := bot.waitLog(time.Second, func(l logLine) bool { return l.msg() == "bot done" })
	hist := c.history(t, p.channel)
	stored := 0
	for _, m := range hist {
		if strings.HasPrefix(m.Text, "bot-"+p.prefix+" #") {
			stored++
		}
	}
	if posted := int(done.num("posted")); posted != botCount || stored < posted || stored > posted+int(done.num("failed")) {
		t.Errorf("the bot posted %d (%d failed), the history holds %d of its messages", posted, done.num("failed"), stored)
	}
	leaders := s.checkOneLeaderPerEpoch()
	checkStored(t, p.channel, hist, p.prefix, p.acks(), p.uncertain)
	epochs := checkReplies(t, c.allReplies(), leaders)
	checkPostReplies(t, p.channel, hist, c.allReplies())
	checkPublications(t, p.channel, pubs.all(), hist, leaders)
	t.Logf("replies came from %d epochs; leaders by epoch: %v", epochs, leaders)
	return hist
}

// TestFailoverKill: SIGKILL the leader (found with `chat status --json`)
// while a client posts numbered messages with retries and a `chat bot
// --count` posts too. Another server leads in a newer epoch and serves;
// nothing acknowledged is lost, nothing is stored twice, the channel's seqs
// stay contiguous, one server answered per epoch, every publication agrees
// with the history; the bot finishes its count; the killed server, restarted,
// rejoins as a follower and the leader stays.
func TestFailoverKill(t *testing.T) {
	s, c, p, pubs, st := failoverSetup(t, "ha", "kill")
	old, epoch := st.Leader, st.Epoch

	s.server(old).kill()
	st2 := s.waitNewLeader(old, epoch)
	p.waitAcks(t, 5, leadTimeout, func(a ack) bool { return a.Epoch > epoch })

	s.startServer(old)
	s.waitFollower(old, st2.Leader)
	n := len(p.acks())
	p.waitAcks(t, n+3, leadTimeout, nil)
	verifyPosts(t, s, c, p, pubs)
}

// TestFailoverPause: SIGSTOP the leader while a client and a bot post. Another server
// leads; when the paused one gets SIGCONT it finds the newer epoch and steps
// down without acknowledging or publishing anything that is not in the
// history, the broker never routes to it again, and it rejoins as a follower.
func TestFailoverPause(t *testing.T) {
	s, c, p, pubs, st := failoverSetup(t, "ha", "pause")
	old, epoch := st.Leader, st.Epoch
	oldProc := s.server(old)

	oldProc.pause()
	st2 := s.waitNewLeader(old, epoch)
	p.waitAcks(t, 5, leadTimeout, func(a ack) bool { return a.Epoch > epoch })

	resumed := time.Now()
	oldProc.resume()
	oldProc.waitLog(leadTimeout, func(l logLine) bool {
		return l.At.After(resumed) && (l.msg() == "stopped leading" || l.msg() == "stepped down")
	})
	s.waitFollower(old, st2.Leader)
	n := len(p.acks())
	p.waitAcks(t, n+5, leadTimeout, nil)
	hist := verifyPosts(t, s, c, p, pubs)

	// Whatever the woken server sent in its old epoch after SIGCONT must be
	// true: a reply for a write it had committed before it was paused. Count
	// those (the reply was on its way when it stopped).
	late := 0
	for _, r := range c.allReplies() {
		if r.Server == old && r.Epoch == epoch && r.At.After(resumed) {
			late++
			t.Logf("after SIGCONT, server %d answered req %d in its old epoch %d (ok %v, used %v)", old, r.Req, epoch, r.OK, r.Used)
		}
	}
	for _, pub := range pubs.all() {
		if pub.Epoch == epoch && pub.At.After(resumed) {
			t.Logf("after SIGCONT, a publication of seq %d in the old epoch %d (in the history: %v)", pub.Seq, epoch,
				pub.Seq <= uint64(len(hist)) && hist[pub.Seq-1].Text == pub.Text)
		}
	}
	// The broker never made the old leader the leader again.
	for _, l := range s.broker.logs() {
		if l.At.After(resumed) && l.msg() == "leader elected" && l.num("epoch") <= epoch {
			t.Errorf("after SIGCONT the broker routed to a leader of epoch %d: %s", l.num("epoch"), l.Text)
		}
	}
	// The old leader never led again in its old epoch after waking up.
	for _, l := range oldProc.logs() {
		if l.At.After(resumed) && l.msg() == "leading" {
			t.Errorf("the woken server logged leading: %s", l.Text)
		}
	}
	t.Logf("%d replies of the old epoch arrived after SIGCONT", late)
}

// TestFailoverTerm: SIGTERM the leader (what docker stop sends) while a
// client and a bot post. It exits cleanly (status 0), handing over: another
// server leads and serves, nothing is lost; restarted, it rejoins as a
// follower.
func TestFailoverTerm(t *testing.T) {
	s, c, p, pubs, st := failoverSetup(t, "ha", "term")
	old, epoch := st.Leader, st.Epoch
	oldProc := s.server(old)

	oldProc.term()
	for _, want := range []string{"stopped leading", "leader lock released"} {
		oldProc.waitLog(time.Second, func(l logLine) bool { return l.msg() == want })
	}
	st2 := s.waitNewLeader(old, epoch)
	p.waitAcks(t, 5, leadTimeout, func(a ack) bool { return a.Epoch > epoch })

	s.startServer(old)
	s.waitFollower(old, st2.Leader)
	n := len(p.acks())
	p.waitAcks(t, n+3, leadTimeout, nil)
	verifyPosts(t, s, c, p, pubs)
}
