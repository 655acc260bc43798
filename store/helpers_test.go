package store

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"chat/wire"
)

// t0 is the time of the first command a harness applies; each later one is a second later.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

const testHash = "$argon2id$v=19$m=65536,t=1,p=2$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"

// harness applies commands to a machine at consecutive indexes, filling in
// Time and Lamport when a command leaves them zero.
type harness struct {
	t *testing.T
	m *Machine
}

func newHarness(t *testing.T, setup ...Command) *harness {
	t.Helper()
	h := &harness{t: t, m: New()}
	for _, c := range setup {
		h.must(c)
	}
	return h
}

func (h *harness) apply(c Command) Result {
	h.t.Helper()
	i := h.m.Index() + 1
	if c.Time.IsZero() {
		c.Time = t0.Add(time.Duration(i) * time.Second)
	}
	if c.Lamport == 0 {
		c.Lamport = h.m.Lamport() + 1
	}
	return h.m.Apply(i, &c)
}

// must applies c and fails the test if it failed.
func (h *harness) must(c Command) Result {
	h.t.Helper()
	r := h.apply(c)
	if r.Err != nil {
		h.t.Fatalf("%s %+v: %s: %s", c.Op, c, r.Err.Code, r.Err.Message)
	}
	return r
}

// snapshot returns the machine's snapshot bytes.
func snapshot(t testing.TB, m *Machine) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := m.Snapshot(&b); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	return b.Bytes()
}

// show renders a result, events included, for comparing results.
func show(r Result) string {
	b, err := json.Marshal(struct {
		R Result
		E []Event
	}{r, r.Events})
	if err != nil {
		panic(err)
	}
	return string(b)
}

func decodeData[T any](t *testing.T, r Result) T {
	t.Helper()
	var v T
	if r.Err != nil {
		t.Fatalf("unexpected error %s: %s", r.Err.Code, r.Err.Message)
	}
	if err := json.Unmarshal(r.Data, &v); err != nil {
		t.Fatalf("decode data %s: %v", r.Data, err)
	}
	return v
}

func register(user string) Command {
	return Command{Op: wire.Register, User: user, Hash: testHash}
}

func create(user, name, desc string) Command {
	return Command{Op: wire.Create, User: user, Name: name, Description: desc}
}

func join(user, name string) Command  { return Command{Op: wire.Join, User: user, Name: name} }
func leave(user, name string) Command { return Command{Op: wire.Leave, User: user, Name: name} }
func logout(user string) Command      { return Command{Op: wire.Logout, User: user} }

func post(user, name, text string) Command {
	return Command{Op: wire.Post, User: user, Name: name, Text: text}
}

func dm(user, to, text string) Command {
	return Command{Op: wire.DM, User: user, To: to, Text: text}
}

// with sets a command's dedupe key.
func with(c Command, client string, req uint64) Command {
	c.Client, c.Req = client, req
	return c
}

// chooser picks among n choices; *rand.Rand is one, fuzz input is another.
type chooser interface{ IntN(n int) int }

// byteChooser draws choices from fuzz input, then zeros once it runs out.
type byteChooser struct{ b []byte }

func (c *byteChooser) IntN(n int) int {
	if len(c.b) == 0 {
		return 0
	}
	v := int(c.b[0]) % n
	c.b = c.b[1:]
	return v
}

// generator makes random commands over a small world of names, valid and not,
// so that random sequences hit every path.
type generator struct {
	ch      chooser
	now     time.Time
	lamport uint64
}

var (
	genOps      = []string{wire.Register, wire.Create, wire.Join, wire.Leave, wire.Post, wire.Post, wire.Post, wire.DM, wire.DM, wire.Logout, "bogus", ""}
	genUsers    = []string{"ana", "Ana", "bob", "carl", "", "bad name", "dee"}
	genChannels = []string{"general", "General", "x", "ana", "", "no/slash"}
	genTexts    = []string{"hi", "hello world", "", "  \n", "tab\there", "bad\x01", "é ünïcode ✓", strings.Repeat("x", wire.MaxTextLen+1), "\xff", "<b>&</b>"}
	genClients  = []string{"", "c1", "c2", "c3", "c4"}
	genSteps    = []time.Duration{0, time.Second, time.Minute, time.Hour, 25 * time.Hour, -time.Hour}
)

func (g *generator) next() Command {
	pick := func(s []string) string { return s[g.ch.IntN(len(s))] }
	g.now = g.now.Add(genSteps[g.ch.IntN(len(genSteps))])
	g.lamport += uint64(g.ch.IntN(3))
	c := Command{
		Op:      pick(genOps),
		User:    pick(genUsers),
		Client:  pick(genClients),
		Req:     uint64(g.ch.IntN(5)),
		Lamport: g.lamport,
		Time:    g.now,
		Name:    pick(genChannels),
		To:      pick(genUsers),
		Text:    pick(genTexts),
	}
	switch c.Op {
	case wire.Register:
		c.Hash = []string{testHash, ""}[g.ch.IntN(2)]
	case wire.Create:
		c.Description = []string{"", "about things", strings.Repeat("d", wire.MaxDescLen+1)}[g.ch.IntN(3)]
	}
	return c
}
