package store

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"chat/wire"
)

// world is the state most error cases start from: ana owns "general", bob
// is registered but no member of it.
var world = []Command{register("ana"), register("bob"), create("ana", "general", "talk")}

func TestApplyErrors(t *testing.T) {
	tests := []struct {
		name string
		cmd  Command
		code string
		msg  string // a part of the message
	}{
		{"unknown op", Command{Op: "delete", User: "ana"}, wire.CodeBadRequest, `unknown command "delete"`},
		{"empty op", Command{User: "ana"}, wire.CodeBadRequest, "unknown command"},
		{"register empty name", register(""), wire.CodeBadRequest, "user name is empty"},
		{"register bad name", register("ana smith"), wire.CodeBadRequest, "user name"},
		{"register name starting with dot", register(".ana"), wire.CodeBadRequest, "user name"},
		{"register long name", register(strings.Repeat("a", wire.MaxNameLen+1)), wire.CodeBadRequest, "longer than 32"},
		{"register taken", register("ana"), wire.CodeExists, `user name "ana" is taken`},
		{"register no hash", Command{Op: wire.Register, User: "carl"}, wire.CodeBadRequest, "password hash"},
		{"register huge hash", Command{Op: wire.Register, User: "carl", Hash: strings.Repeat("h", MaxHashLen+1)}, wire.CodeBadRequest, "password hash"},
		{"create not logged in", create("", "x", ""), wire.CodeUnauthorized, "log in first"},
		{"create unknown user", create("zed", "x", ""), wire.CodeUnauthorized, `user "zed" does not exist`},
		{"create other case user", create("ANA", "x", ""), wire.CodeUnauthorized, `"ANA"`},
		{"create bad name", create("ana", "a/b", ""), wire.CodeBadRequest, "channel name"},
		{"create empty name", create("ana", "", ""), wire.CodeBadRequest, "channel name is empty"},
		{"create long description", create("ana", "x", strings.Repeat("d", wire.MaxDescLen+1)), wire.CodeTooLarge, "description"},
		{"create control in description", create("ana", "x", "a\x07b"), wire.CodeBadRequest, "control character"},
		{"create taken", create("bob", "general", ""), wire.CodeExists, `channel name "general" is taken`},
		{"join unknown channel", join("bob", "nope"), wire.CodeNotFound, `channel "nope" does not exist`},
		{"join other case channel", join("bob", "General"), wire.CodeNotFound, `channel "General" does not exist`},
		{"join bad name", join("bob", "a b"), wire.CodeBadRequest, "channel name"},
		{"join unknown user", join("zed", "general"), wire.CodeUnauthorized, "zed"},
		{"leave unknown channel", leave("bob", "nope"), wire.CodeNotFound, "does not exist"},
		{"leave not member", leave("bob", "general"), wire.CodeNotMember, `not a member of channel "general"`},
		{"post unknown channel", post("ana", "nope", "hi"), wire.CodeNotFound, `channel "nope" does not exist`},
		{"post not member", post("bob", "general", "hi"), wire.CodeNotMember, `join channel "general" before posting`},
		{"post empty", post("ana", "general", ""), wire.CodeBadRequest, "message is blank"},
		{"post blank", post("ana", "general", " \n\t "), wire.CodeBadRequest, "message is blank"},
		{"post too long", post("ana", "general", strings.Repeat("x", wire.MaxTextLen+1)), wire.CodeTooLarge, "over the limit of 4000"},
		{"post bad utf8", post("ana", "general", "a\xffb"), wire.CodeBadRequest, "UTF-8"},
		{"post control", post("ana", "general", "a\x00b"), wire.CodeBadRequest, "control character"},
		{"post unknown user", post("zed", "general", "hi"), wire.CodeUnauthorized, "zed"},
		{"dm unknown recipient", dm("ana", "zed", "hi"), wire.CodeNotFound, `user "zed" does not exist`},
		{"dm other case recipient", dm("ana", "Bob", "hi"), wire.CodeNotFound, `user "Bob" does not exist`},
		{"dm a channel name", dm("ana", "general", "hi"), wire.CodeNotFound, `user "general"`},
		{"dm bad recipient", dm("ana", "", "hi"), wire.CodeBadRequest, "user name is empty"},
		{"dm blank", dm("ana", "bob", "   "), wire.CodeBadRequest, "message is blank"},
		{"dm too long", dm("ana", "bob", strings.Repeat("é", wire.MaxTextLen/2+1)), wire.CodeTooLarge, "message"},
		{"dm unknown sender", dm("zed", "bob", "hi"), wire.CodeUnauthorized, "zed"},
		{"logout unknown user", logout("zed"), wire.CodeUnauthorized, "zed"},
		{"time after 9999", Command{Op: wire.Register, User: "carl", Hash: testHash, Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, wire.CodeBadRequest, "time"},
		{"time before year 0", Command{Op: wire.Register, User: "carl", Hash: testHash, Time: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)}, wire.CodeBadRequest, "time"},
		{"client id too long", with(register("carl"), strings.Repeat("c", MaxClientLen+1), 1), wire.CodeBadRequest, "client id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, world...)
			before := snapshot(t, h.m)
			c := tt.cmd
			if c.Time.IsZero() {
				c.Time = t0.Add(time.Hour)
			}
			// Same index, no Lamport: a failed command must leave the state byte for byte as it was.
			r := h.m.Apply(h.m.Index(), &c)
			if r.Err == nil {
				t.Fatalf("succeeded with %s, want %s", r.Data, tt.code)
			}
			if r.Err.Code != tt.code || !strings.Contains(r.Err.Message, tt.msg) {
				t.Errorf("got %s %q, want %s containing %q", r.Err.Code, r.Err.Message, tt.code, tt.msg)
			}
			if r.Data != nil || r.Events != nil {
				t.Errorf("failed command returned data %s and %d events", r.Data, len(r.Events))
			}
			if after := snapshot(t, h.m); !bytes.Equal(before, after) {
				t.Errorf("a failed command changed the state")
			}
		})
	}
}

func TestApplyNil(t *testing.T) {
	m := New()
	r := m.Apply(7, nil)
	if r.Err == nil || r.Err.Code != wire.CodeBadRequest {
		t.Fatalf("Apply(nil) = %+v, want bad_request", r)
	}
	if m.Index() != 7 {
		t.Errorf("index = %d, want 7", m.Index())
	}
}

func TestRegister(t *testing.T) {
	h := newHarness(t)
	r := h.must(register("Ana.B-1_x"))
	if got, want := string(r.Data), `{"user":"Ana.B-1_x"}`; got != want {
		t.Errorf("data = %s, want %s", got, want)
	}
	hash, revoked, ok := h.m.UserAuth("Ana.B-1_x")
	if !ok || hash != testHash || !revoked.IsZero() {
		t.Errorf("UserAuth = %q, %v, %v; want the hash, zero time, true", hash, revoked, ok)
	}
	if _, _, ok := h.m.UserAuth("ana.b-1_x"); ok {
		t.Errorf("UserAuth matched a name of another case")
	}
	if !h.m.HasUser("Ana.B-1_x") || h.m.HasUser("nobody") {
		t.Errorf("HasUser is wrong")
	}
}

func TestChannelLifecycle(t *testing.T) {
	h := newHarness(t, register("ana"), register("bob"))
	created := t0.Add(3 * time.Second) // the third command

	r := h.must(create("ana", "general", "all things"))
	want := wire.ChannelInfo{Name: "general", Description: "all things", Owner: "ana", Created: created,
		Members: 1, Seq: 0, Joined: true, Topic: "channel/general/"}
	if got := decodeData[wire.ChannelsReply](t, r); len(got.Channels) != 1 || got.Channels[0] != want {
		t.Fatalf("create = %+v, want %+v", got, want)
	}
	if len(r.Events) != 0 {
		t.Errorf("create published %d events", len(r.Events))
	}

	r = h.must(join("bob", "general"))
	want.Members, want.Joined = 2, true
	if got := decodeData[wire.ChannelsReply](t, r); len(got.Channels) != 1 || got.Channels[0] != want {
		t.Fatalf("join = %+v, want %+v", got, want)
	}
	again := h.must(join("bob", "general"))
	if !bytes.Equal(again.Data, r.Data) {
		t.Errorf("joining again = %s, want the same as the first join %s", again.Data, r.Data)
	}

	h.must(post("ana", "general", "one"))
	h.must(post("bob", "general", "two"))
	want.Seq = 2
	if got := decodeData[wire.ChannelsReply](t, h.must(join("bob", "general"))); got.Channels[0] != want {
		t.Errorf("join after posts = %+v, want %+v", got.Channels[0], want)
	}
	if got := h.m.Memberships("bob"); !slices.Equal(got, []string{"general"}) {
		t.Errorf("Memberships(bob) = %q", got)
	}

	r = h.must(leave("bob", "general"))
	want.Members, want.Joined = 1, false
	if got := decodeData[wire.ChannelsReply](t, r); got.Channels[0] != want {
		t.Errorf("leave = %+v, want %+v", got.Channels[0], want)
	}
	if got := h.m.Memberships("bob"); len(got) != 0 {
		t.Errorf("Memberships(bob) after leave = %q", got)
	}
	if r := h.apply(leave("bob", "general")); r.Err == nil || r.Err.Code != wire.CodeNotMember {
		t.Errorf("leaving twice = %+v, want not_member", r)
	}
	if r := h.apply(post("bob", "general", "three")); r.Err == nil || r.Err.Code != wire.CodeNotMember {
		t.Errorf("posting after leaving = %+v, want not_member", r)
	}
	// The owner may leave; the channel stays, with its owner.
	h.must(leave("ana", "general"))
	info, ok := h.m.Channel("general", "ana")
	if !ok || info.Members != 0 || info.Owner != "ana" || info.Joined || info.Seq != 2 {
		t.Errorf("Channel after everyone left = %+v, %v", info, ok)
	}
}

func TestPost(t *testing.T) {
	h := newHarness(t, register("ana"), register("bob"), create("ana", "general", ""), join("bob", "general"))
	at := t0.Add(time.Hour)
	r := h.must(Command{Op: wire.Post, User: "bob", Name: "general", Text: "hello <world> & \"all\"", Lamport: 42, Time: at})
	want := wire.Message{Channel: "general", From: "bob", Text: "hello <world> & \"all\"", Seq: 1, Lamport: 42, Time: at}
	if got := decodeData[wire.MessageReply](t, r); got.Message != want {
		t.Errorf("post = %+v, want %+v", got.Message, want)
	}
	wantEvents := []Event{{Topic: "channel/general/", Pub: wire.Publication{Type: wire.EventMessage, Epoch: 0, Message: want}}}
	if !slices.Equal(r.Events, wantEvents) {
		t.Errorf("events = %+v, want %+v", r.Events, wantEvents)
	}
	if h.m.Lamport() != 42 {
		t.Errorf("Lamport = %d, want 42", h.m.Lamport())
	}
}

func TestSeqsContiguous(t *testing.T) {
	h := newHarness(t, register("ana"), register("bob"), create("ana", "a", ""), create("ana", "b", ""), join("bob", "b"))
	next := map[string]uint64{}
	for i := range 3000 { // crosses stream blocks
		ch := []string{"a", "b", "b"}[i%3]
		user := []string{"ana", "bob"}[i%2]
		if ch == "a" {
			user = "ana"
		}
		r := h.must(post(user, ch, fmt.Sprintf("m%d", i)))
		next[ch]++
		if got := decodeData[wire.MessageReply](t, r).Message.Seq; got != next[ch] {
			t.Fatalf("post %d in %s has seq %d, want %d", i, ch, got, next[ch])
		}
	}
	for _, ch := range []string{"a", "b"} {
		all, after := []wire.Message{}, uint64(0)
		for {
			hr, e := h.m.History("ana", wire.HistoryRequest{Channel: ch, After: after, Before: after + 501, Limit: wire.MaxHistory})
			if e != nil {
				t.Fatal(e)
			}
			if len(hr.Messages) == 0 {
				break
			}
			all = append(all, hr.Messages...)
			after = hr.Messages[len(hr.Messages)-1].Seq
		}
		if uint64(len(all)) != next[ch] {
			t.Fatalf("%s holds %d messages, want %d", ch, len(all), next[ch])
		}
		for i, msg := range all {
			if msg.Seq != uint64(i+1) || msg.Channel != ch {
				t.Fatalf("%s message %d = %+v", ch, i, msg)
			}
		}
	}
}

func TestDM(t *testing.T) {
	h := newHarness(t, register("ana"), register("bob"))
	type want struct {
		seq    uint64   // of the sender's copy, in the reply
		topics []string // of the events, with the seq of each copy
		seqs   []uint64
	}
	steps := []struct {
		cmd Command
		want
	}{
		{dm("ana", "bob", "hi bob"), want{1, []string{"dm/bob/", "dm/ana/"}, []uint64{1, 1}}},
		{dm("bob", "ana", "hi ana"), want{2, []string{"dm/ana/", "dm/bob/"}, []uint64{2, 2}}},
		{dm("ana", "ana", "note to self"), want{3, []string{"dm/ana/"}, []uint64{3}}},
		{dm("ana", "bob", "again"), want{4, []string{"dm/bob/", "dm/ana/"}, []uint64{3, 4}}},
	}
	for i, s := range steps {
		r := h.must(s.cmd)
		got := decodeData[wire.MessageReply](t, r).Message
		if got.Seq != s.seq || got.From != s.cmd.User || got.To != s.cmd.To || got.Text != s.cmd.Text || got.Channel != "" {
			t.Errorf("step %d: reply %+v", i, got)
		}
		if len(r.Events) != len(s.topics) {
			t.Fatalf("step %d: %d events, want %d", i, len(r.Events), len(s.topics))
		}
		for j, ev := range r.Events {
			if ev.Topic != s.topics[j] || ev.Pub.Type != wire.EventDM || ev.Pub.Seq != s.seqs[j] || ev.Pub.Text != s.cmd.Text || ev.Pub.Epoch != 0 {
				t.Errorf("step %d: event %d = %+v, want topic %s seq %d", i, j, ev, s.topics[j], s.seqs[j])
			}
		}
	}
	if a, b := h.m.MailboxSeq("ana"), h.m.MailboxSeq("bob"); a != 4 || b != 3 {
		t.Errorf("MailboxSeq ana, bob = %d, %d; want 4, 3", a, b)
	}
	hr, e := h.m.History("bob", wire.HistoryRequest{Direct: true})
	if e != nil {
		t.Fatal(e)
	}
	var texts []string
	for i, msg := range hr.Messages {
		if msg.Seq != uint64(i+1) {
			t.Errorf("bob's mailbox message %d has seq %d", i, msg.Seq)
		}
		texts = append(texts, msg.Text)
	}
	if !slices.Equal(texts, []string{"hi bob", "hi ana", "again"}) || hr.Seq != 3 {
		t.Errorf("bob's mailbox = %q, seq %d", texts, hr.Seq)
	}
}

func TestNamesKeepCase(t *testing.T) {
	h := newHarness(t, register("ana"), register("Ana"), create("ana", "general", "lower"), create("Ana", "General", "upper"))
	if got := h.m.Users(); !slices.Equal(got, []string{"Ana", "ana"}) {
		t.Errorf("Users = %q", got)
	}
	h.must(dm("ana", "Ana", "to the capital one"))
	if a, A := h.m.MailboxSeq("ana"), h.m.MailboxSeq("Ana"); a != 1 || A != 1 {
		t.Errorf("mailboxes ana, Ana = %d, %d; want 1, 1", a, A)
	}
	h.must(post("Ana", "General", "upper only"))
	if info, _ := h.m.Channel("general", "ana"); info.Seq != 0 || info.Description != "lower" || !info.Joined {
		t.Errorf("general = %+v", info)
	}
	if info, _ := h.m.Channel("General", "ana"); info.Seq != 1 || info.Owner != "Ana" || info.Joined {
		t.Errorf("General = %+v", info)
	}
	if got := h.m.Memberships("Ana"); !slices.Equal(got, []string{"General"}) {
		t.Errorf("Memberships(Ana) = %q", got)
	}
}

func TestNamespacesSeparate(t *testing.T) {
	h := newHarness(t, register("general"), register("bob"))
	h.must(create("bob", "general", ""))
	h.must(create("general", "bob", ""))
	h.must(dm("bob", "general", "to the user"))
	h.must(post("bob", "general", "to the channel"))
	if got := h.m.MailboxSeq("general"); got != 1 {
		t.Errorf("user general's mailbox seq = %d, want 1", got)
	}
	if info, _ := h.m.Channel("general", "bob"); info.Seq != 1 || info.Owner != "bob" {
		t.Errorf("channel general = %+v", info)
	}
	if r := h.apply(register("bob")); r.Err == nil || r.Err.Code != wire.CodeExists {
		t.Errorf("register bob again = %+v", r)
	}
}

func TestLogout(t *testing.T) {
	h := newHarness(t, register("ana"))
	at := t0.Add(2 * time.Hour)
	r := h.must(Command{Op: wire.Logout, User: "ana", Time: at.In(time.FixedZone("X", 3600))})
	if string(r.Data) != `{"user":"ana"}` {
		t.Errorf("data = %s", r.Data)
	}
	_, revoked, _ := h.m.UserAuth("ana")
	if revoked != at {
		t.Errorf("revoked before %v, want %v in UTC", revoked, at)
	}
	// A later command stamped with an earlier time (another leader's clock) does not un-revoke.
	h.must(Command{Op: wire.Logout, User: "ana", Time: at.Add(-time.Minute)})
	if _, revoked, _ = h.m.UserAuth("ana"); revoked != at {
		t.Errorf("an earlier logout moved revocation to %v", revoked)
	}
	h.must(Command{Op: wire.Logout, User: "ana", Time: at.Add(time.Minute)})
	if _, revoked, _ = h.m.UserAuth("ana"); revoked != at.Add(time.Minute) {
		t.Errorf("a later logout left revocation at %v", revoked)
	}
}

func TestLamportAndIndex(t *testing.T) {
	m := New()
	steps := []struct {
		index, lamport, want uint64
		cmd                  Command
	}{
		{1, 5, 5, register("ana")},
		{2, 3, 5, register("bob")},
		{3, 0, 5, Command{Op: "bogus"}}, // failed commands count
		{9, 11, 11, register("ana")},    // so do failures with a clock
		{10, 7, 11, with(register("c"), "c1", 1)},
		{11, 20, 20, with(register("c"), "c1", 1)}, // a duplicate moves the clock too
		{12, 30, 30, with(register("d"), "c1", 0)},
	}
	for _, s := range steps {
		c := s.cmd
		c.Lamport, c.Time = s.lamport, t0
		m.Apply(s.index, &c)
		if m.Index() != s.index || m.Lamport() != s.want {
			t.Errorf("after %s at %d with lamport %d: index %d lamport %d, want %d %d", c.Op, s.index, s.lamport, m.Index(), m.Lamport(), s.index, s.want)
		}
	}
}

func TestQueries(t *testing.T) {
	h := newHarness(t, register("bob"), register("carl"), register("Ana"), register("ana"),
		create("carl", "zeta", ""), create("ana", "alpha", "first"), create("bob", "Beta", ""), join("ana", "zeta"))
	if got := h.m.Users(); !slices.Equal(got, []string{"Ana", "ana", "bob", "carl"}) {
		t.Errorf("Users = %q", got)
	}
	users := h.m.Users()
	users[0] = "mutated"
	if h.m.Users()[0] != "Ana" {
		t.Errorf("Users shares its slice with the machine")
	}
	var names []string
	var joined []bool
	for _, c := range h.m.Channels("ana") {
		names = append(names, c.Name)
		joined = append(joined, c.Joined)
	}
	if !slices.Equal(names, []string{"Beta", "alpha", "zeta"}) || !slices.Equal(joined, []bool{false, true, true}) {
		t.Errorf("Channels(ana) = %q %v", names, joined)
	}
	if got := h.m.Channels("nobody"); len(got) != 3 || got[0].Joined || got[2].Members != 2 {
		t.Errorf("Channels(nobody) = %+v", got)
	}
	if got := New().Channels("x"); got == nil || len(got) != 0 {
		t.Errorf("Channels of an empty machine = %#v, want empty, not nil", got)
	}
	if _, ok := h.m.Channel("ALPHA", "ana"); ok {
		t.Errorf("Channel matched a name of another case")
	}
	if got := h.m.Memberships("ana"); !slices.Equal(got, []string{"alpha", "zeta"}) {
		t.Errorf("Memberships(ana) = %q", got)
	}
	if got := h.m.Memberships("nobody"); got != nil {
		t.Errorf("Memberships(nobody) = %q", got)
	}
	if got := h.m.MailboxSeq("nobody"); got != 0 {
		t.Errorf("MailboxSeq(nobody) = %d", got)
	}
}

// TestTimeNormalized: the leader applies the command it built (any zone,
// maybe a monotonic reading) while followers apply the decoded log entry;
// both must reach the same results and state.
func TestTimeNormalized(t *testing.T) {
	zone := time.FixedZone("UTC+5:30", 5*3600+1800)
	cmds := []Command{register("ana"), register("bob"), create("ana", "general", ""), join("bob", "general"),
		post("bob", "general", "hi"), dm("ana", "bob", "psst"), logout("bob")}
	leader, follower := New(), New()
	for i, c := range cmds {
		c.Time = t0.Add(time.Duration(i) * time.Millisecond).In(zone)
		c.Lamport = uint64(i + 1)
		b, err := EncodeCommand(&c)
		if err != nil {
			t.Fatal(err)
		}
		d, err := DecodeCommand(b)
		if err != nil {
			t.Fatal(err)
		}
		rl, rf := leader.Apply(uint64(i+1), &c), follower.Apply(uint64(i+1), d)
		if show(rl) != show(rf) {
			t.Fatalf("command %d: leader %s, follower %s", i, show(rl), show(rf))
		}
		if rl.Err != nil {
			t.Fatalf("command %d failed: %v", i, rl.Err)
		}
	}
	if !bytes.Equal(snapshot(t, leader), snapshot(t, follower)) {
		t.Fatal("leader and follower snapshots differ")
	}
	hr, _ := leader.History("bob", wire.HistoryRequest{Channel: "general"})
	if hr.Messages[0].Time.Location() != time.UTC {
		t.Errorf("stored time is in %v, want UTC", hr.Messages[0].Time.Location())
	}
}
