package console_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"chat/client"
	"chat/client/clienttest"
	"chat/client/console"
)

func dial(t *testing.T, fake *clienttest.Server) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), client.Config{Broker: fake.Broker, PubSub: fake.PubSub, Timeout: time.Second, Retries: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func run(t *testing.T, c *client.Client, opts console.Options, script string) string {
	t.Helper()
	var out bytes.Buffer
	opts.In, opts.Out = strings.NewReader(script), &out
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := console.Run(ctx, c, opts); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Run returned only when its context ended")
	}
	return out.String()
}

func TestScriptedJSON(t *testing.T) {
	fake := clienttest.NewServer(t)
	fake.AddUser("bob", "secret2")
	c := dial(t, fake)
	script := strings.Join([]string{
		"/register ana secret1",
		"/register ana secret1",
		"/login ana",
		"/login ana secret1",
		"",
		"/join",
		"/join nowhere",
		"/create general The general channel",
		"hello world",
		"/msg bob",
		"/msg nobody hi there",
		"/msg bob hi  there",
		"/history general x",
		"/history general 10",
		"/history 5",
		"/history @",
		"/frobnicate now",
		"/leave",
		"after leaving",
		"/time",
		"/status",
		"/help",
	}, "\n") // no newline at the end: the last line still counts
	out := run(t, c, console.Options{JSON: true}, script)

	type line = map[string]any
	var replies []line
	var messages []line
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var m line
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON line: %q: %v", l, err)
		}
		switch m["type"] {
		case "reply", "error":
			replies = append(replies, m)
		case "message", "dm":
			messages = append(messages, m)
		default:
			t.Fatalf("unexpected line %q", l)
		}
	}
	want := []struct {
		typ, command string
		ok           bool
		check        string // substring of the error, or "code=..." of a failed reply
	}{
		{"reply", "register", true, ""},
		{"reply", "register", false, "code=exists"},
		{"error", "login", false, "usage: /login USER PASSWORD (missing argument)"},
		{"reply", "login", true, ""},
		{"error", "join", false, "usage: /join NAME (missing argument)"},
		{"reply", "join", false, "code=not_found"},
		{"reply", "create", true, ""},
		{"reply", "post", true, ""},
		{"error", "msg", false, "usage: /msg USER TEXT..."},
		{"reply", "msg", false, "code=not_found"},
		{"reply", "msg", true, ""},
		{"error", "history", false, `N must be a number, not "x"`},
		{"reply", "history", true, ""},
		{"reply", "history", true, ""},
		{"reply", "history", true, ""},
		{"error", "frobnicate", false, "unknown command /frobnicate"},
		{"reply", "leave", true, ""},
		{"error", "post", false, "not in a channel"},
		{"reply", "time", true, ""},
		{"reply", "status", true, ""},
		{"reply", "help", true, ""},
	}
	if len(replies) != len(want) {
		t.Fatalf("got %d replies and errors, want %d:\n%s", len(replies), len(want), out)
	}
	for i, w := range want {
		r := replies[i]
		if r["type"] != w.typ || r["command"] != w.command {
			t.Fatalf("line %d: got %v, want %s of %s", i+1, r, w.typ, w.command)
		}
		if w.typ == "reply" && r["ok"] != w.ok {
			t.Fatalf("line %d: got %v, want ok=%v", i+1, r, w.ok)
		}
		if code, isCode := strings.CutPrefix(w.check, "code="); isCode {
			if r["code"] != code || r["error"] == "" {
				t.Fatalf("line %d: got %v, want code %s and a sentence", i+1, r, code)
			}
		} else if w.check != "" && !strings.Contains(r["error"].(string), w.check) {
			t.Fatalf("line %d: got %v, want an error containing %q", i+1, r, w.check)
		}
	}
	if _, leaked := replies[3]["token"]; leaked || replies[3]["user"] != "ana" {
		t.Fatalf("login reply %v: want the user and no token", replies[3])
	}
	if ch := replies[6]["channels"].([]any)[0].(line); ch["name"] != "general" || ch["description"] != "The general channel" {
		t.Fatalf("create reply %v", replies[6])
	}
	if m := replies[10]["message"].(line); m["text"] != "hi  there" || m["to"] != "bob" {
		t.Fatalf("dm reply %v: want the text as typed", replies[10])
	}
	for _, i := range []int{12, 13} {
		if msgs := replies[i]["messages"].([]any); len(msgs) != 1 || msgs[0].(line)["text"] != "hello world" {
			t.Fatalf("history reply %v", replies[i])
		}
	}
	if _, ok := replies[18]["offset_ms"].(float64); !ok {
		t.Fatalf("time reply %v", replies[18])
	}
	// ana's post is an event (delivered from its reply, so surely before the
	// end); her copy of the direct message is one too if its publication
	// came in time.
	if len(messages) == 0 || messages[0]["type"] != "message" || messages[0]["channel"] != "general" ||
		messages[0]["from"] != "ana" || messages[0]["text"] != "hello world" || messages[0]["seq"] != 1.0 {
		t.Fatalf("events: got %v, want ana's message first", messages)
	}
	for _, k := range []string{"lamport", "time"} {
		if _, ok := messages[0][k]; !ok {
			t.Fatalf("message event %v has no %q", messages[0], k)
		}
	}
	if len(messages) > 1 {
		if dm := messages[1]; len(messages) > 2 || dm["type"] != "dm" || dm["from"] != "ana" || dm["to"] != "bob" || dm["text"] != "hi  there" {
			t.Fatalf("events: got %v, want ana's message and her copy of the direct message", messages)
		}
	}
}

func TestScriptedText(t *testing.T) {
	fake := clienttest.NewServer(t)
	fake.AddUser("ana", "secret1")
	fake.AddMember("ana", "General")
	c := dial(t, fake)
	out := run(t, c, console.Options{}, "/login ana secret1\nHello, World\n/join\n/quit\n/users\n")
	for _, want := range []string{
		"logged in as ana; member of #General; posting to #General\n",
		" #General ana: Hello, World\n",
		"usage: /join NAME (missing argument)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "(online)") {
		t.Errorf("ran a command after /quit:\n%s", out)
	}
}

func TestInteractive(t *testing.T) {
	fake := clienttest.NewServer(t)
	fake.AddUser("ana", "secret1")
	c := dial(t, fake)
	// A terminal sends carriage returns; the password is read without echo.
	out := run(t, c, console.Options{Interactive: true}, "/login ana\rsecret1\r/create x\r/quit\r")
	for _, want := range []string{"logged in as ana", "created #x: posting there now", "#x> "} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%q", want, out)
		}
	}
	if strings.Contains(out, "secret1") {
		t.Errorf("the password was echoed:\n%q", out)
	}
}
