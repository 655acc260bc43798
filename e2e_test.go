package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"chat/wire"
)

// TestEndToEnd drives two users through `chat client --json` processes
// against a real broker, pubsub and three servers: accounts, channels, posts,
// direct messages, history and lists; names that differ only in case; bad
// input that leaves the client going; then a restart of every server, after
// which everything is still there and a client that logs in again is
// resubscribed to its channels. Every role exits cleanly on SIGTERM.
func TestEndToEnd(t *testing.T) {
	s := newSystem(t, systemOptions{})
	checkThreeServers(t, s)

	ana := s.client("client-ana")
	bob := s.client("client-bob")

	ana.ok("/register Ana pw-ana-1")
	bob.ok("/register BoB pw-bob-1")
	lr := ana.ok("/login Ana pw-ana-1")
	if lr.str("user") != "Ana" {
		t.Errorf("login reply names user %q, want Ana: %s", lr.str("user"), lr.Text)
	}
	if _, ok := lr.JSON["token"]; ok {
		t.Errorf("the client printed the session token: %s", lr.Text)
	}
	bob.ok("/login BoB pw-bob-1")

	// Names keep their case: rust-fans and Rust-fans are two channels.
	ana.ok("/create rust-fans the lower-case twin")
	cr := ana.ok("/create Rust-fans all things rust")
	ch := firstChannel(t, cr)
	if ch["name"] != "Rust-fans" || ch["description"] != "all things rust" || ch["owner"] != "Ana" ||
		ch["joined"] != true || ch["topic"] != "channel/Rust-fans/" {
		t.Errorf("create reply: %s", cr.Text)
	}
	jr := bob.ok("/join Rust-fans")
	if ch := firstChannel(t, jr); ch["name"] != "Rust-fans" || ch["members"] != float64(2) {
		t.Errorf("join reply: %s", jr.Text)
	}

	// A channel message reaches the other member as a JSON event.
	pr := ana.ok("hello from Ana")
	if m := message(t, pr); m["channel"] != "Rust-fans" || m["seq"] != float64(1) || m["from"] != "Ana" {
		t.Errorf("post reply: %s", pr.Text)
	}
	ev := bob.waitEvent(func(l logLine) bool { return l.str("text") == "hello from Ana" })
	checkEvent(t, ev, "message", map[string]any{"channel": "Rust-fans", "from": "Ana", "seq": float64(1)},
		"channel", "from", "text", "seq", "lamport", "time")

	// A direct message, each way.
	ana.ok("/msg BoB psst, BoB: lunch?")
	dm := bob.waitEvent(func(l logLine) bool { return l.str("type") == "dm" && l.str("text") == "psst, BoB: lunch?" })
	checkEvent(t, dm, "dm", map[string]any{"from": "Ana", "to": "BoB"}, "from", "to", "text", "lamport", "time")
	bob.ok("/msg Ana yes, at noon")
	ana.waitEvent(func(l logLine) bool {
		return l.str("type") == "dm" && l.str("text") == "yes, at noon" && l.str("from") == "BoB"
	})

	// History, lists, time.
	hr := bob.ok("/history Rust-fans")
	if got := texts(t, hr); !slices.Equal(got, []string{"hello from Ana"}) {
		t.Errorf("history of Rust-fans: %q", got)
	}
	if got := texts(t, bob.ok("/history @")); !slices.Equal(got, []string{"psst, BoB: lunch?", "yes, at noon"}) {
		t.Errorf("bob's direct messages: %q", got)
	}
	if got := channelNames(t, ana.ok("/channels")); !slices.Contains(got, "Rust-fans") || !slices.Contains(got, "rust-fans") {
		t.Errorf("channels: %q", got)
	}
	checkUsers(t, ana.ok("/users"), "Ana", "BoB")
	if tr := ana.ok("/time"); tr.str("server_time") == "" {
		t.Errorf("time reply without server_time: %s", tr.Text)
	}

	// A missing or bad argument prints an error; the client keeps going.
	for _, line := range []string{"/join", "/msg", "/msg BoB", "/create", "/history Rust-fans lots", "/frobnicate", "/register Zed"} {
		if l := ana.do(line); l.str("type") != "error" || l.str("error") == "" {
			t.Errorf("%q printed %s, want a local error", line, l.Text)
		}
	}
	for line, code := range map[string]string{
		"/join no-such-channel":                             wire.CodeNotFound,
		"/create bad!name":                                  wire.CodeBadRequest,
		"/msg nobody-here hello":                            wire.CodeNotFound,
		"/register Ana pw-another":                          wire.CodeExists,
		"/create " + strings.Repeat("x", wire.MaxNameLen+1): wire.CodeBadRequest,
	} {
		l := ana.do(line)
		if l.str("type") != "reply" || l.JSON["ok"] != false || l.str("code") != code || l.str("error") == "" {
			t.Errorf("%q printed %s, want a failed reply with code %s and a sentence", line, l.Text, code)
		}
	}
	// The same answer for an unknown user ("ana" is not "Ana") and a wrong password.
	eve := s.client("client-eve")
	unknown, wrong := eve.do("/login ana pw-ana-1"), eve.do("/login Ana wrong-password")
	if unknown.str("code") != wire.CodeBadCredentials || wrong.str("code") != wire.CodeBadCredentials || unknown.str("error") != wrong.str("error") {
		t.Errorf("unknown user and wrong password answered differently:\n%s\n%s", unknown.Text, wrong.Text)
	}
	eve.quit()
	if m := message(t, ana.ok("still here")); m["seq"] != float64(2) {
		t.Errorf("post after errors: seq %v, want 2", m["seq"])
	}
	bob.waitEvent(func(l logLine) bool { return l.str("text") == "still here" })

	// Stop every server (clean exits), start them again on the same data.
	ana.quit()
	for _, id := range s.serverIDs() {
		s.server(id).term()
	}
	for _, id := range s.serverIDs() {
		s.launchServer(id)
	}
	for _, id := range s.serverIDs() {
		s.server(id).waitReady()
	}
	checkThreeServers(t, s)

	// A client that logs in again is a member of its channels, subscribed
	// without /join; bob's client rode through the restart.
	ana2 := s.client("client-ana-2")
	lr = ana2.ok("/login Ana pw-ana-1")
	if got := stringList(lr.JSON["channels"]); !slices.Contains(got, "Rust-fans") || !slices.Contains(got, "rust-fans") {
		t.Errorf("login after the restart lists channels %q: %s", got, lr.Text)
	}
	bob.ok("after the restart")
	ev = ana2.waitEvent(func(l logLine) bool { return l.str("text") == "after the restart" })
	if ev.str("channel") != "Rust-fans" || ev.num("seq") != 3 || ev.str("from") != "BoB" {
		t.Errorf("event after the restart: %s", ev.Text)
	}
	if got := texts(t, ana2.ok("/history Rust-fans")); !slices.Equal(got, []string{"hello from Ana", "still here", "after the restart"}) {
		t.Errorf("history after the restart: %q", got)
	}
	if got := texts(t, ana2.ok("/history @")); !slices.Equal(got, []string{"psst, BoB: lunch?", "yes, at noon"}) {
		t.Errorf("ana's direct messages after the restart: %q", got)
	}
	for _, c := range channelList(t, ana2.ok("/channels")) {
		if (c["name"] == "Rust-fans" || c["name"] == "rust-fans") && c["joined"] != true {
			t.Errorf("membership lost in the restart: %v", c)
		}
	}
	checkUsers(t, ana2.ok("/users"), "Ana", "BoB")
	if ch := firstChannel(t, bob.ok("/join rust-fans")); ch["members"] != float64(2) {
		t.Errorf("rust-fans after the restart: %v", ch)
	}

	// Every role exits cleanly on SIGTERM.
	ana2.quit()
	bob.term()
	for _, id := range s.serverIDs() {
		s.server(id).term()
	}
	s.broker.term()
	s.pubsub.term()
}

// checkThreeServers waits until `chat status --json` shows three servers,
// exactly one of them the leader, the others followers.
func checkThreeServers(t *testing.T, s *system) {
	t.Helper()
	s.waitStatus(leadTimeout, func(st *wire.StatusReply) error {
		if len(st.Servers) != 3 {
			return fmt.Errorf("%d servers, want 3", len(st.Servers))
		}
		leaders := 0
		for _, sv := range st.Servers {
			switch sv.Role {
			case wire.RoleLeader:
				leaders++
				if sv.ID != st.Leader {
					return fmt.Errorf("server %d says it leads, the status names %d", sv.ID, st.Leader)
				}
			case wire.RoleFollower:
			default:
				return fmt.Errorf("server %d is %s", sv.ID, sv.Role)
			}
		}
		if leaders != 1 {
			return fmt.Errorf("%d leaders, want 1", leaders)
		}
		return nil
	})
}

func checkEvent(t *testing.T, ev logLine, typ string, want map[string]any, fields ...string) {
	t.Helper()
	if ev.str("type") != typ {
		t.Errorf("event type %q, want %q: %s", ev.str("type"), typ, ev.Text)
	}
	for _, f := range fields {
		if _, ok := ev.JSON[f]; !ok {
			t.Errorf("event without %q: %s", f, ev.Text)
		}
	}
	for k, v := range want {
		if ev.JSON[k] != v {
			t.Errorf("event %s = %v, want %v: %s", k, ev.JSON[k], v, ev.Text)
		}
	}
	if ev.num("lamport") == 0 {
		t.Errorf("event without a Lamport time: %s", ev.Text)
	}
	if _, err := time.Parse(time.RFC3339Nano, ev.str("time")); err != nil {
		t.Errorf("event time: %v: %s", err, ev.Text)
	}
}

func checkUsers(t *testing.T, l logLine, want ...string) {
	t.Helper()
	users, _ := l.JSON["users"].([]any)
	var names []string
	for _, u := range users {
		m, _ := u.(map[string]any)
		for k := range m {
			if k != "name" && k != "online" && k != "last_seen" {
				t.Errorf("/users shows a user's %q: %s", k, l.Text)
			}
		}
		if n, ok := m["name"].(string); ok {
			names = append(names, n)
		}
	}
	for _, w := range want {
		if !slices.Contains(names, w) {
			t.Errorf("/users lacks %s: %s", w, l.Text)
		}
	}
}

func channelList(t *testing.T, l logLine) []map[string]any {
	t.Helper()
	list, _ := l.JSON["channels"].([]any)
	var out []map[string]any
	for _, c := range list {
		m, _ := c.(map[string]any)
		out = append(out, m)
	}
	return out
}

func firstChannel(t *testing.T, l logLine) map[string]any {
	t.Helper()
	list := channelList(t, l)
	if len(list) != 1 {
		t.Fatalf("reply lists %d channels, want 1: %s", len(list), l.Text)
	}
	return list[0]
}

func channelNames(t *testing.T, l logLine) []string {
	var names []string
	for _, c := range channelList(t, l) {
		if n, ok := c["name"].(string); ok {
			names = append(names, n)
		}
	}
	return names
}

func message(t *testing.T, l logLine) map[string]any {
	t.Helper()
	m, ok := l.JSON["message"].(map[string]any)
	if !ok {
		t.Fatalf("reply without a message: %s", l.Text)
	}
	return m
}

func texts(t *testing.T, l logLine) []string {
	t.Helper()
	msgs, ok := l.JSON["messages"].([]any)
	if !ok {
		t.Fatalf("reply without messages: %s", l.Text)
	}
	var out []string
	for _, m := range msgs {
		mm, _ := m.(map[string]any)
		s, _ := mm["text"].(string)
		out = append(out, s)
	}
	return out
}

func stringList(v any) []string {
	list, _ := v.([]any)
	var out []string
	for _, x := range list {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}
