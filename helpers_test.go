package main

// A harness for tests of the real binary: TestMain builds `chat` once; a
// system runs a broker, a pubsub and N servers as processes on 127.0.0.1,
// waits for each one's msg=ready line, keeps every line each one writes (in
// memory, parsed, and in a log file that is kept and shown when the test
// fails), and stops them with SIGTERM at the end, requiring a clean exit.
// Tests kill, pause and resume them on demand.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/wire"
)

// chatBin is the binary under test, built once by TestMain.
var chatBin string

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "chat-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "make a directory for the binary:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	chatBin = filepath.Join(dir, "chat")
	build := exec.Command("go", "build", "-o", chatBin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "CGO_ENABLED=0 go build -o %s .: %v\n%s", chatBin, err, out)
		return 1
	}
	return m.Run()
}

// Deadlines of the harness. They bound waits for things that normally take
// milliseconds; only a broken system (or a starved machine) reaches them.
const (
	readyTimeout = 30 * time.Second // a role's msg=ready line
	stopTimeout  = 15 * time.Second // exit after SIGTERM (the roles allow themselves 5s)
	leadTimeout  = 20 * time.Second // a leader after a start or a failover
	replyTimeout = 30 * time.Second // a scripted client's reply (its own retries included)
)

// waitFor polls cond until it returns nil, failing the test with cond's last
// error when timeout passes.
func waitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	if err := poll(timeout, cond); err != nil {
		t.Fatalf("waited %v: %v", timeout, err)
	}
}

// poll is waitFor that returns the last error instead of failing (for goroutines).
func poll(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		<-tick.C
	}
}

func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// freeAddr returns a 127.0.0.1 port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// --- processes ---

// logLine is one line a process wrote, with its JSON fields when it is a
// JSON object (every role logs JSON here; clients print JSON on stdout).
type logLine struct {
	At   time.Time
	Text string
	JSON map[string]any
}

func (l logLine) str(k string) string {
	v, _ := l.JSON[k].(string)
	return v
}

func (l logLine) num(k string) uint64 {
	v, _ := l.JSON[k].(float64)
	return uint64(v)
}

func (l logLine) msg() string { return l.str("msg") }

// proc is one running role.
type proc struct {
	t       testing.TB
	name    string
	args    []string
	cmd     *exec.Cmd
	logPath string
	stdin   io.WriteCloser // scripted clients only

	mu      sync.Mutex
	logf    *os.File
	lines   []logLine // stderr: the role's log
	out     []logLine // stdout: a client's JSON lines, a status report
	changed chan struct{}
	exited  chan struct{} // closed once the process is gone and its output read
	state   *os.ProcessState
	paused  bool
	killed  bool // stopped on purpose without a clean exit
	termed  bool // already stopped with SIGTERM by the test
}

type procOptions struct {
	stdin bool     // give the process a stdin pipe (else /dev/null)
	env   []string // added to the environment
}

// startProc runs chat with args, logging to dir/name.log. It is stopped with
// SIGTERM when the test ends and must then exit with status 0.
func startProc(t testing.TB, dir, name string, args []string, opt procOptions) *proc {
	t.Helper()
	p := &proc{t: t, name: name, args: args, changed: make(chan struct{}), exited: make(chan struct{})}
	p.logPath = filepath.Join(dir, name+".log")
	for i := 2; ; i++ { // a restarted role gets a new log file
		if _, err := os.Stat(p.logPath); errors.Is(err, os.ErrNotExist) {
			break
		}
		p.logPath = filepath.Join(dir, fmt.Sprintf("%s.%d.log", name, i))
	}
	f, err := os.Create(p.logPath)
	if err != nil {
		t.Fatalf("%s: log file: %v", name, err)
	}
	p.logf = f
	fmt.Fprintf(f, "# %s %s\n", chatBin, strings.Join(args, " "))
	p.cmd = exec.Command(chatBin, args...)
	p.cmd.Env = append(cleanEnv(), opt.env...)
	// If the test binary dies, its roles die with it.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if opt.stdin {
		if p.stdin, err = p.cmd.StdinPipe(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	var readers sync.WaitGroup
	readers.Go(func() { p.read(stderr, false) })
	readers.Go(func() { p.read(stdout, true) })
	go func() {
		readers.Wait()
		err := p.cmd.Wait()
		p.mu.Lock()
		p.state = p.cmd.ProcessState
		if p.state == nil {
			fmt.Fprintf(p.logf, "# wait: %v\n", err)
		} else {
			fmt.Fprintf(p.logf, "# exited: %s\n", p.state)
		}
		p.logf.Close()
		p.mu.Unlock()
		close(p.exited)
	}()
	t.Cleanup(p.cleanup)
	return p
}

// cleanEnv is the test's environment without CHAT_ variables, so that a
// developer's settings don't leak into the roles.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CHAT_") {
			env = append(env, kv)
		}
	}
	return env
}

func (p *proc) read(r io.Reader, stdout bool) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		l := logLine{At: time.Now(), Text: sc.Text()}
		if strings.HasPrefix(l.Text, "{") {
			var m map[string]any
			if json.Unmarshal([]byte(l.Text), &m) == nil {
				l.JSON = m
			}
		}
		p.mu.Lock()
		if stdout {
			p.out = append(p.out, l)
			fmt.Fprintf(p.logf, "stdout| %s\n", l.Text)
		} else {
			p.lines = append(p.lines, l)
			fmt.Fprintln(p.logf, l.Text)
		}
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}
}

// find waits until a line of the log (or stdout) at index >= from matches, and
// returns it with its index. It fails when the process exits first.
func (p *proc) find(stdout bool, from int, timeout time.Duration, match func(logLine) bool) (int, logLine, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	gone := false
	for {
		p.mu.Lock()
		lines := p.lines
		if stdout {
			lines = p.out
		}
		for i := from; i < len(lines); i++ {
			if match(lines[i]) {
				p.mu.Unlock()
				return i, lines[i], nil
			}
		}
		from = max(from, len(lines))
		ch := p.changed
		p.mu.Unlock()
		if gone {
			return 0, logLine{}, fmt.Errorf("%s exited (%s) before the line awaited", p.name, p.exitStatus())
		}
		select {
		case <-ch:
		case <-p.exited:
			gone = true // look once more at the last lines
		case <-deadline.C:
			return 0, logLine{}, fmt.Errorf("%s: no such line within %v", p.name, timeout)
		}
	}
}

// waitLog waits for a log line that matches.
func (p *proc) waitLog(timeout time.Duration, match func(logLine) bool) logLine {
	p.t.Helper()
	_, l, err := p.find(false, 0, timeout, match)
	if err != nil {
		p.t.Fatal(err)
	}
	return l
}

// waitReady waits for the role's msg=ready line and returns it.
func (p *proc) waitReady() logLine {
	p.t.Helper()
	return p.waitReadyWithin(readyTimeout)
}

func (p *proc) waitReadyWithin(timeout time.Duration) logLine {
	p.t.Helper()
	_, l, err := p.find(false, 0, timeout, func(l logLine) bool { return l.msg() == "ready" })
	if err != nil {
		p.t.Fatalf("%v\n%s", err, p.tail(20))
	}
	return l
}

// logs returns a copy of the log lines so far.
func (p *proc) logs() []logLine {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.lines)
}

// stdoutLines returns a copy of the stdout lines so far.
func (p *proc) stdoutLines() []logLine {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.out)
}

func (p *proc) exitStatus() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		return "running"
	}
	return p.state.String()
}

func (p *proc) done() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("%s: signal %v: %v", p.name, sig, err)
	}
}

// sigkill sends SIGKILL and returns at once.
func (p *proc) sigkill() {
	p.t.Helper()
	p.mu.Lock()
	p.killed = true
	p.mu.Unlock()
	p.signal(syscall.SIGKILL)
}

// sigterm sends SIGTERM and returns at once; wait on exited, then cleanExit.
func (p *proc) sigterm() {
	p.t.Helper()
	p.mu.Lock()
	p.termed = true
	p.mu.Unlock()
	p.signal(syscall.SIGTERM)
}

// kill sends SIGKILL and waits until the process is gone.
func (p *proc) kill() {
	p.t.Helper()
	p.sigkill()
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		p.t.Fatalf("%s still running %v after SIGKILL", p.name, stopTimeout)
	}
}

// pause sends SIGSTOP.
func (p *proc) pause() {
	p.t.Helper()
	p.signal(syscall.SIGSTOP)
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

// resume sends SIGCONT.
func (p *proc) resume() {
	p.t.Helper()
	p.signal(syscall.SIGCONT)
	p.mu.Lock()
	p.paused = false
	p.mu.Unlock()
}

// stop sends SIGTERM (after SIGCONT if paused) and waits for the process to
// exit; it returns an error unless it exits with status 0 in time.
func (p *proc) stop() error {
	if p.done() {
		return p.cleanExit()
	}
	p.mu.Lock()
	paused := p.paused
	p.termed = true
	p.mu.Unlock()
	if paused {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !p.done() {
		return fmt.Errorf("%s: SIGTERM: %w", p.name, err)
	}
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("%s did not exit within %v of SIGTERM: killed", p.name, stopTimeout)
	}
	return p.cleanExit()
}

// term is stop that fails the test.
func (p *proc) term() {
	p.t.Helper()
	if err := p.stop(); err != nil {
		p.t.Fatalf("%v\n%s", err, p.tail(20))
	}
}

func (p *proc) cleanExit() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil || !p.state.Exited() || p.state.ExitCode() != 0 {
		return fmt.Errorf("%s: exit %v, want a clean exit with status 0", p.name, p.state)
	}
	return nil
}

// cleanup stops the process at the end of the test: a process still running
// must exit cleanly on SIGTERM; one that ended by itself must have exited with
// status 0 (unless the test killed it).
func (p *proc) cleanup() {
	p.mu.Lock()
	killed, termed := p.killed, p.termed
	p.mu.Unlock()
	if killed || termed {
		return
	}
	if err := p.stop(); err != nil {
		p.t.Errorf("%v\n%s", err, p.tail(20))
	}
}

// tail returns the last n lines of the log, for failure messages.
func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- %s (last %d lines of %s) ---\n%s", p.name, len(lines), p.logPath, strings.Join(lines, "\n"))
}

// --- a system of processes ---

// system is a broker, a pubsub and servers, each a process of the binary.
type system struct {
	t       *testing.T
	dir     string // logs and data: kept when the test fails
	data    string // the servers' shared data directory
	secret  string // CHAT_JWT_SECRET of the servers
	cluster string // CHAT_CLUSTER_SECRET of the broker, the pubsub and the servers

	Frontend, Subscribe string // what clients connect to
	backend, publish    string // what servers connect to
	peers               map[int]string
	peersFlag           string
	serverEnv           []string
	ready               time.Duration // how long a server may take to start

	broker, pubsub *proc

	mu      sync.Mutex
	servers map[int]*proc // the current process of each server id
	procs   []*proc       // every process started, in order
}

type systemOptions struct {
	servers   int
	fixed     bool          // bind the broker and the pubsub on fixed free ports, so they can be restarted
	ready     time.Duration // how long a server may take to start (default readyTimeout)
	data      string        // an existing data directory (default: a new one)
	serverEnv []string      // extra environment of the servers
}

// newSystem starts a broker, a pubsub and the servers, and waits until one
// leads. Everything is stopped with SIGTERM when the test ends.
func newSystem(t *testing.T, opt systemOptions) *system {
	t.Helper()
	if opt.servers == 0 {
		opt.servers = 3
	}
	dir, err := os.MkdirTemp("", "chat-"+strings.NewReplacer("/", "-", " ", "_").Replace(t.Name())+"-")
	if err != nil {
		t.Fatal(err)
	}
	s := &system{t: t, dir: dir, data: filepath.Join(dir, "data"), secret: "test-secret-" + randomID(16), cluster: "cluster-" + randomID(16),
		peers: map[int]string{}, servers: map[int]*proc{}, serverEnv: opt.serverEnv, ready: opt.ready}
	if s.ready == 0 {
		s.ready = readyTimeout
	}
	if opt.data != "" {
		s.data = opt.data
	}
	// Registered first, so it runs last: after every process has stopped.
	t.Cleanup(func() {
		if os.Getenv("CHAT_KEEP") != "" {
			t.Logf("CHAT_KEEP: logs and data kept in %s", dir)
			return
		}
		if t.Failed() {
			s.mu.Lock()
			for _, p := range s.procs {
				t.Log(p.tail(40))
			}
			s.mu.Unlock()
			t.Logf("logs and data kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})

	// The broker and the pubsub bind port 0 and say in their ready line
	// which ports they got; with opt.fixed they bind ports chosen here,
	// so that they can be restarted on the same ones.
	s.Frontend, s.backend, s.publish, s.Subscribe = "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0"
	if opt.fixed {
		s.Frontend, s.backend, s.publish, s.Subscribe = "tcp://"+freeAddr(t), "tcp://"+freeAddr(t), "tcp://"+freeAddr(t), "tcp://"+freeAddr(t)
	}
	s.startBroker()
	s.startPubSub()

	var pf []string
	for id := 1; id <= opt.servers; id++ {
		s.peers[id] = "tcp://" + freeAddr(t)
		pf = append(pf, fmt.Sprintf("%d=%s", id, s.peers[id]))
	}
	s.peersFlag = strings.Join(pf, ",")
	var started []*proc
	for id := opt.servers; id >= 1; id-- {
		started = append(started, s.launchServer(id))
	}
	for _, p := range started {
		p.waitReadyWithin(s.ready)
	}
	s.waitStatus(leadTimeout, func(st *wire.StatusReply) error {
		if st.Leader == 0 {
			return errors.New("no leader yet")
		}
		return nil
	})
	return s
}

// startBroker starts the broker (again) and learns its endpoints.
func (s *system) startBroker() {
	s.t.Helper()
	s.broker = s.start("broker", []string{"broker", "--frontend", s.Frontend, "--backend", s.backend},
		procOptions{env: []string{"CHAT_CLUSTER_SECRET=" + s.cluster}})
	b := s.broker.waitReady()
	s.Frontend, s.backend = b.str("frontend"), b.str("backend")
	if s.Frontend == "" || s.backend == "" {
		s.t.Fatalf("broker ready line without endpoints: %s", b.Text)
	}
}

// startPubSub starts the pubsub (again) and learns its endpoints.
func (s *system) startPubSub() {
	s.t.Helper()
	s.pubsub = s.start("pubsub", []string{"pubsub", "--frontend", s.publish, "--backend", s.Subscribe},
		procOptions{env: []string{"CHAT_CLUSTER_SECRET=" + s.cluster}})
	p := s.pubsub.waitReady()
	s.publish, s.Subscribe = p.str("frontend"), p.str("backend")
	if s.publish == "" || s.Subscribe == "" {
		s.t.Fatalf("pubsub ready line without endpoints: %s", p.Text)
	}
}

// start runs a process of the system (logged in the system's directory).
func (s *system) start(name string, args []string, opt procOptions) *proc {
	s.t.Helper()
	args = append([]string{"--log-format", "json", "--log-level", "info"}, args...)
	p := startProc(s.t, s.dir, name, args, opt)
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p
}

// launchServer starts server id without waiting for it.
func (s *system) launchServer(id int) *proc {
	s.t.Helper()
	args := []string{"server", "--id", strconv.Itoa(id), "--broker", s.backend, "--pubsub", s.publish,
		"--listen", s.peers[id], "--peers", s.peersFlag, "--data", s.data}
	p := s.start(fmt.Sprintf("server-%d", id), args, procOptions{env: append([]string{"CHAT_JWT_SECRET=" + s.secret, "CHAT_CLUSTER_SECRET=" + s.cluster}, s.serverEnv...)})
	s.mu.Lock()
	s.servers[id] = p
	s.mu.Unlock()
	return p
}

// startServer starts server id (again) and waits for its ready line.
func (s *system) startServer(id int) *proc {
	s.t.Helper()
	p := s.launchServer(id)
	p.waitReadyWithin(s.ready)
	return p
}

// server returns the current process of server id.
func (s *system) server(id int) *proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.servers[id]
}

// serverIDs returns the ids of the servers, sorted.
func (s *system) serverIDs() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []int
	for id := range s.servers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// proc returns the last process started with this name.
func (s *system) proc(name string) *proc {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.procs) - 1; i >= 0; i-- {
		if s.procs[i].name == name {
			return s.procs[i]
		}
	}
	s.t.Fatalf("no process %s", name)
	return nil
}

// allProcs returns every process started so far.
func (s *system) allProcs() []*proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.procs)
}

// status runs `chat status --json` and returns its report.
func (s *system) status() (*wire.StatusReply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chatBin, "--log-level", "error", "status", "--json",
		"--broker", s.Frontend, "--pubsub", s.Subscribe, "--timeout", "1s", "--retries", "3")
	cmd.Env = cleanEnv()
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("chat status: %v: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("chat status: %w", err)
	}
	var st wire.StatusReply
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("chat status --json printed %q: %w", out, err)
	}
	return &st, nil
}

// waitStatus polls `chat status --json` until cond accepts a report.
func (s *system) waitStatus(timeout time.Duration, cond func(*wire.StatusReply) error) *wire.StatusReply {
	s.t.Helper()
	var last *wire.StatusReply
	waitFor(s.t, timeout, func() error {
		st, err := s.status()
		if err != nil {
			return err
		}
		if err := cond(st); err != nil {
			return fmt.Errorf("%w (status: %s)", err, fmtStatus(st))
		}
		last = st
		return nil
	})
	return last
}

// waitNewLeader waits for a leader other than old in an epoch above epoch.
func (s *system) waitNewLeader(old int, epoch uint64) *wire.StatusReply {
	s.t.Helper()
	return s.waitStatus(leadTimeout, func(st *wire.StatusReply) error {
		if st.Leader == 0 || st.Leader == old || st.Epoch <= epoch {
			return fmt.Errorf("no leader but %d in an epoch above %d yet", old, epoch)
		}
		return nil
	})
}

// waitFollower waits until server id follows leader and has caught up.
func (s *system) waitFollower(id, leader int) *wire.StatusReply {
	s.t.Helper()
	return s.waitStatus(leadTimeout, func(st *wire.StatusReply) error {
		if st.Leader != leader {
			return fmt.Errorf("leader is %d, want %d", st.Leader, leader)
		}
		for _, sv := range st.Servers {
			if sv.ID == id {
				if sv.Role != wire.RoleFollower || sv.Lag != 0 {
					return fmt.Errorf("server %d is %s with lag %d, want a follower with lag 0", id, sv.Role, sv.Lag)
				}
				return nil
			}
		}
		return fmt.Errorf("server %d missing from the status", id)
	})
}

func fmtStatus(st *wire.StatusReply) string {
	var b strings.Builder
	fmt.Fprintf(&b, "leader %d epoch %d index %d;", st.Leader, st.Epoch, st.Index)
	for _, sv := range st.Servers {
		fmt.Fprintf(&b, " %d:%s/e%d/i%d/lag%d", sv.ID, sv.Role, sv.Epoch, sv.Index, sv.Lag)
	}
	return b.String()
}

// leaders returns, from every server log of the system (restarted processes
// included), which server ids logged "leading" in each epoch.
func (s *system) leaders() map[uint64][]int {
	out := map[uint64][]int{}
	for _, p := range s.allProcs() {
		if !strings.HasPrefix(p.name, "server-") {
			continue
		}
		id, _ := strconv.Atoi(strings.TrimPrefix(p.name, "server-"))
		for _, l := range p.logs() {
			if l.msg() == "leading" {
				ep := l.num("epoch")
				if !slices.Contains(out[ep], id) {
					out[ep] = append(out[ep], id)
				}
			}
		}
	}
	return out
}

// checkOneLeaderPerEpoch fails the test if two servers logged "leading" in one
// epoch, and returns the leader of each epoch.
func (s *system) checkOneLeaderPerEpoch() map[uint64]int {
	s.t.Helper()
	one := map[uint64]int{}
	for ep, ids := range s.leaders() {
		if len(ids) != 1 {
			s.t.Errorf("epoch %d was led by servers %v: want exactly one", ep, ids)
		}
		one[ep] = ids[0]
	}
	return one
}

// --- scripted clients (`chat client --json`) ---

// cliProc is a `chat client --json` process driven line by line.
type cliProc struct {
	*proc
	next int // stdout index after the last reply consumed
}

// client starts `chat client --json` with a stdin pipe.
func (s *system) client(name string, extra ...string) *cliProc {
	s.t.Helper()
	args := append([]string{"client", "--json", "--broker", s.Frontend, "--pubsub", s.Subscribe}, extra...)
	return &cliProc{proc: s.start(name, args, procOptions{stdin: true})}
}

// do sends one line and returns the JSON line that answers it (a "reply" or
// an "error").
func (c *cliProc) do(line string) logLine {
	c.t.Helper()
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		c.t.Fatalf("%s: write %q: %v", c.name, line, err)
	}
	i, l, err := c.find(true, c.next, replyTimeout, func(l logLine) bool {
		typ := l.str("type")
		return typ == "reply" || typ == "error"
	})
	if err != nil {
		c.t.Fatalf("%s: %q: %v\n%s", c.name, line, err, c.tail(20))
	}
	c.next = i + 1
	return l
}

// ok runs a line that must succeed and returns its reply.
func (c *cliProc) ok(line string) logLine {
	c.t.Helper()
	l := c.do(line)
	if l.str("type") != "reply" || l.JSON["ok"] != true {
		c.t.Fatalf("%s: %q answered %s, want an ok reply", c.name, line, l.Text)
	}
	return l
}

// waitEvent waits for an event line (a "message" or "dm") that matches.
func (c *cliProc) waitEvent(match func(logLine) bool) logLine {
	c.t.Helper()
	_, l, err := c.find(true, 0, replyTimeout, func(l logLine) bool {
		typ := l.str("type")
		return (typ == "message" || typ == "dm") && match(l)
	})
	if err != nil {
		c.t.Fatalf("%s: awaited event: %v\n%s", c.name, err, c.tail(30))
	}
	return l
}

// quit ends the input; the client must then exit with status 0.
func (c *cliProc) quit() {
	c.t.Helper()
	c.stdin.Close()
	select {
	case <-c.exited:
	case <-time.After(stopTimeout):
		c.t.Fatalf("%s did not exit at the end of its input", c.name)
	}
	if err := c.cleanExit(); err != nil {
		c.t.Fatalf("%v\n%s", err, c.tail(20))
	}
}

// --- a raw protocol client (a DEALER, as PROTOCOL.md describes) ---

// rawReply is a reply as it arrived.
type rawReply struct {
	wire.Reply
	At    time.Time
	Used  bool // the reply the client took as the answer to its request
	index int
}

// rawClient speaks PROTOCOL.md over a bare zmq4 DEALER with Lazy Pirate
// retries (same client id and request number; a fresh socket after a
// timeout), and records every reply it receives, stale ones included, so
// tests can see which server answered in which epoch.
type rawClient struct {
	broker  string
	id      string
	timeout time.Duration
	req     uint64
	token   string

	sock  zmq4.Socket
	in    chan zmq4.Msg
	rdone chan struct{}
	n     int

	mu      sync.Mutex
	replies []rawReply
}

func newRawClient(t testing.TB, broker string) *rawClient {
	c := &rawClient{broker: broker, id: "raw-" + randomID(6), timeout: time.Second}
	t.Cleanup(c.close)
	return c
}

func (c *rawClient) open() error {
	c.close()
	c.n++
	sock := zmq4.NewDealer(context.Background(), zmq4.WithID(zmq4.SocketIdentity(fmt.Sprintf("%s-%d", c.id, c.n))),
		zmq4.WithTimeout(time.Second))
	if err := sock.Dial(c.broker); err != nil {
		sock.Close()
		return err
	}
	c.sock, c.in, c.rdone = sock, make(chan zmq4.Msg, 64), make(chan struct{})
	in, done := c.in, c.rdone
	go func() {
		defer close(done)
		for {
			m, err := sock.Recv()
			if err != nil {
				return
			}
			select {
			case in <- m:
			default: // nobody waits for it: a stale reply
			}
		}
	}()
	return nil
}

func (c *rawClient) close() {
	if c.sock != nil {
		c.sock.Close()
		<-c.rdone
		c.sock = nil
	}
}

// do sends a new request and returns its reply, retrying timeouts and
// retryable errors until ctx ends. A non-nil reply may be a refusal (!OK).
func (c *rawClient) do(ctx context.Context, service string, data any) (*rawReply, error) {
	c.req++
	r := wire.Request{Service: service, Token: c.token, Client: c.id, Req: c.req}
	if data != nil {
		r.Data = wire.Encode(data)
	}
	return c.send(ctx, r)
}

func (c *rawClient) send(ctx context.Context, r wire.Request) (*rawReply, error) {
	body := wire.Encode(r)
	var last error
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("%s: %w (last: %v)", r.Service, err, last)
		}
		if c.sock == nil {
			if err := c.open(); err != nil {
				last = err
				pause(ctx, 50*time.Millisecond)
				continue
			}
		}
		if err := c.sock.Send(zmq4.NewMsgFrom([]byte{}, body)); err != nil {
			last = err
			c.close()
			continue
		}
		rep, err := c.wait(ctx, r.Req)
		switch {
		case err != nil:
			last = err
			c.close() // Lazy Pirate: a fresh socket, the same request
		case !rep.OK && rep.Error != nil && wire.Retryable(rep.Error.Code):
			last = rep.Error
			pause(ctx, 20*time.Millisecond)
		case !rep.OK && rep.Error != nil && rep.Error.Code == wire.CodeRateLimited:
			last = rep.Error // not applied: the same request may go again
			pause(ctx, 100*time.Millisecond)
		default:
			c.mu.Lock()
			c.replies[rep.index].Used = true
			c.mu.Unlock()
			rep.Used = true
			return rep, nil
		}
	}
}

// wait waits for the reply numbered req.
func (c *rawClient) wait(ctx context.Context, req uint64) (*rawReply, error) {
	timer := time.NewTimer(c.timeout)
	defer timer.Stop()
	for {
		select {
		case m := <-c.in:
			var rep rawReply
			if len(m.Frames) == 0 || json.Unmarshal(m.Frames[len(m.Frames)-1], &rep.Reply) != nil {
				continue
			}
			rep.At = time.Now()
			c.mu.Lock()
			rep.index = len(c.replies)
			c.replies = append(c.replies, rep)
			c.mu.Unlock()
			if rep.Req == req || (rep.Req == 0 && !rep.OK) {
				return &rep, nil
			}
		case <-timer.C:
			return nil, errors.New("no reply")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// allReplies returns every reply received so far.
func (c *rawClient) allReplies() []rawReply {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.replies)
}

// must runs a request that has to succeed and decodes its data into out.
func (c *rawClient) must(t testing.TB, service string, data, out any) *rawReply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), replyTimeout)
	defer cancel()
	rep, err := c.do(ctx, service, data)
	if err != nil {
		t.Fatalf("%s: %v", service, err)
	}
	if !rep.OK {
		t.Fatalf("%s refused: %s (%s)", service, rep.Error.Message, rep.Error.Code)
	}
	if out != nil {
		if err := json.Unmarshal(rep.Data, out); err != nil {
			t.Fatalf("%s data %s: %v", service, rep.Data, err)
		}
	}
	return rep
}

// login registers user (if new) and logs in.
func (c *rawClient) login(t testing.TB, user, password string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), replyTimeout)
	defer cancel()
	rep, err := c.do(ctx, wire.Register, wire.Credentials{User: user, Password: password})
	if err != nil || (!rep.OK && rep.Error.Code != wire.CodeExists) {
		t.Fatalf("register %s: %v %+v", user, err, rep)
	}
	var lr wire.LoginReply
	c.must(t, wire.Login, wire.Credentials{User: user, Password: password}, &lr)
	c.token = lr.Token
}

// join creates channel (if new) and joins it.
func (c *rawClient) join(t testing.TB, channel string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), replyTimeout)
	defer cancel()
	rep, err := c.do(ctx, wire.Create, wire.CreateRequest{Channel: channel})
	if err != nil || (!rep.OK && rep.Error.Code != wire.CodeExists) {
		t.Fatalf("create %s: %v %+v", channel, err, rep)
	}
	c.must(t, wire.Join, wire.NameRequest{Channel: channel}, nil)
}

// history returns a channel's whole history, oldest first, page by page.
func (c *rawClient) history(t testing.TB, channel string) []wire.Message {
	t.Helper()
	var all []wire.Message
	for {
		after := uint64(len(all))
		var h wire.HistoryReply
		c.must(t, wire.History, wire.HistoryRequest{Channel: channel, After: after, Before: after + wire.MaxHistory + 1, Limit: wire.MaxHistory}, &h)
		all = append(all, h.Messages...)
		if len(h.Messages) == 0 || uint64(len(all)) >= h.Seq {
			if uint64(len(all)) != h.Seq {
				t.Errorf("history of %s: %d messages, but the channel's seq is %d", channel, len(all), h.Seq)
			}
			return all
		}
		if all[len(all)-1].Seq != uint64(len(all)) {
			t.Fatalf("history of %s: message %d has seq %d", channel, len(all), all[len(all)-1].Seq)
		}
	}
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// --- posting numbered messages, and checking what was stored ---

// ack is a post the servers acknowledged.
type ack struct {
	Text   string
	Seq    uint64
	Epoch  uint64
	Server int
	At     time.Time
}

// poster posts numbered messages ("PREFIX #N") to a channel over a rawClient,
// one at a time, each retried until acknowledged (or the poster is stopped:
// then its outcome is unknown).
type poster struct {
	c       *rawClient
	channel string
	prefix  string
	every   time.Duration

	stopc chan struct{}
	done  chan struct{}

	mu        sync.Mutex
	acked     []ack
	uncertain []string
	refused   []string // refused with a non-retryable error: a bug in these tests
	changed   chan struct{}
}

// startPoster starts posting; the client must be logged in and a member.
func startPoster(c *rawClient, channel, prefix string, every time.Duration) *poster {
	p := &poster{c: c, channel: channel, prefix: prefix, every: every,
		stopc: make(chan struct{}), done: make(chan struct{}), changed: make(chan struct{})}
	go p.run()
	return p
}

func (p *poster) run() {
	defer close(p.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-p.stopc:
			cancel()
		case <-ctx.Done():
		}
	}()
	tick := time.NewTicker(max(p.every, time.Millisecond))
	defer tick.Stop()
	for n := 1; ctx.Err() == nil; n++ {
		text := fmt.Sprintf("%s #%d", p.prefix, n)
		rep, err := p.c.do(ctx, wire.Post, wire.PostRequest{Channel: p.channel, Text: text})
		p.mu.Lock()
		switch {
		case err != nil:
			p.uncertain = append(p.uncertain, text)
		case !rep.OK:
			p.refused = append(p.refused, fmt.Sprintf("%s: %s (%s)", text, rep.Error.Message, rep.Error.Code))
		default:
			var mr wire.MessageReply
			if json.Unmarshal(rep.Data, &mr) != nil || mr.Message.Text != text {
				p.refused = append(p.refused, fmt.Sprintf("%s: odd reply %s", text, rep.Data))
			} else {
				p.acked = append(p.acked, ack{Text: text, Seq: mr.Message.Seq, Epoch: rep.Epoch, Server: rep.Server, At: rep.At})
			}
		}
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
		if p.every > 0 {
			select {
			case <-tick.C:
			case <-ctx.Done():
			}
		}
	}
}

// stop stops posting and waits for the poster.
func (p *poster) stop() {
	select {
	case <-p.stopc:
	default:
		close(p.stopc)
	}
	<-p.done
}

// acks returns the acknowledged posts so far.
func (p *poster) acks() []ack {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.acked)
}

// waitAcks waits until the poster has n acknowledgements satisfying match.
func (p *poster) waitAcks(t testing.TB, n int, timeout time.Duration, match func(ack) bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		got := 0
		for _, a := range p.acked {
			if match == nil || match(a) {
				got++
			}
		}
		ch := p.changed
		p.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-p.done:
			t.Fatalf("poster %s stopped with %d of %d acknowledgements", p.prefix, got, n)
		case <-deadline.C:
			t.Fatalf("poster %s: %d of %d acknowledgements within %v", p.prefix, got, n, timeout)
		}
	}
}

// checkStored checks a channel's history against what was acknowledged:
// sequence numbers 1..N with no gap, no text twice, Lamport times growing
// with seq, every acknowledged message exactly once and at the sequence
// number its acknowledgement gave, messages whose outcome is unknown at most
// once, and nothing else of the poster's ("PREFIX #N"; no such check when
// prefix is empty).
func checkStored(t testing.TB, channel string, hist []wire.Message, prefix string, acked []ack, uncertain []string) {
	t.Helper()
	bySeq := map[uint64]wire.Message{}
	count := map[string]int{}
	for i, m := range hist {
		if m.Seq != uint64(i+1) {
			t.Errorf("%s: message %d has seq %d: sequence not contiguous", channel, i+1, m.Seq)
		}
		if i > 0 && m.Lamport <= hist[i-1].Lamport {
			t.Errorf("%s: lamport went backwards: seq %d has %d, seq %d has %d", channel, m.Seq-1, hist[i-1].Lamport, m.Seq, m.Lamport)
		}
		bySeq[m.Seq] = m
		count[m.Text]++
	}
	for text, n := range count {
		if n > 1 {
			t.Errorf("%s: %q stored %d times", channel, text, n)
		}
	}
	known := map[string]bool{}
	lost := 0
	for _, a := range acked {
		known[a.Text] = true
		m, ok := bySeq[a.Seq]
		switch {
		case count[a.Text] == 0:
			lost++
			t.Errorf("%s: acknowledged %q (seq %d, epoch %d, server %d) is missing", channel, a.Text, a.Seq, a.Epoch, a.Server)
		case !ok || m.Text != a.Text:
			t.Errorf("%s: acknowledged %q at seq %d, but seq %d holds %q", channel, a.Text, a.Seq, a.Seq, m.Text)
		}
	}
	for _, u := range uncertain {
		known[u] = true
	}
	for _, m := range hist {
		if prefix != "" && strings.HasPrefix(m.Text, prefix+" #") && !known[m.Text] {
			t.Errorf("%s: %q was stored but never sent", channel, m.Text)
		}
	}
	t.Logf("%s: %d stored, %d acknowledged (%d lost), %d of unknown outcome", channel, len(hist), len(acked), lost, len(uncertain))
}

// checkReplies checks the replies a raw client received: in each epoch only
// one server answered anything, and that server is the one that logged
// "leading" in that epoch; the answers a client takes never go back to an
// older epoch. It returns the number of epochs seen.
func checkReplies(t testing.TB, replies []rawReply, leaders map[uint64]int) int {
	t.Helper()
	by := map[uint64]int{}
	var last uint64
	for _, r := range replies {
		if !r.OK || r.Epoch == 0 {
			continue
		}
		if s, ok := by[r.Epoch]; ok && s != r.Server {
			t.Errorf("epoch %d: acknowledgements from server %d and server %d", r.Epoch, s, r.Server)
		}
		by[r.Epoch] = r.Server
		if l, ok := leaders[r.Epoch]; ok && l != r.Server {
			t.Errorf("epoch %d: server %d acknowledged, but server %d logged leading it", r.Epoch, r.Server, l)
		} else if !ok && leaders != nil {
			t.Errorf("epoch %d: server %d acknowledged, but no server logged leading it", r.Epoch, r.Server)
		}
		if r.Used && r.Epoch < last {
			t.Errorf("a request was answered in epoch %d after one in epoch %d (server %d, req %d)", r.Epoch, last, r.Server, r.Req)
		}
		if r.Used {
			last = max(last, r.Epoch)
		}
	}
	return len(by)
}

// --- publications ---

// pubRecorder subscribes to topics at the pubsub and keeps every publication.
type pubRecorder struct {
	sock zmq4.Socket
	done chan struct{}

	mu   sync.Mutex
	pubs []recordedPub
}

type recordedPub struct {
	Topic string
	wire.Publication
	At time.Time
}

func (s *system) recordPublications(topics ...string) *pubRecorder {
	s.t.Helper()
	r := &pubRecorder{sock: zmq4.NewSub(context.Background()), done: make(chan struct{})}
	if err := r.sock.Dial(s.Subscribe); err != nil {
		s.t.Fatalf("subscribe: %v", err)
	}
	for _, topic := range topics {
		if err := r.sock.SetOption(zmq4.OptionSubscribe, topic); err != nil {
			s.t.Fatal(err)
		}
	}
	go func() {
		defer close(r.done)
		for {
			m, err := r.sock.Recv()
			if err != nil {
				return
			}
			if len(m.Frames) != 2 {
				continue
			}
			rp := recordedPub{Topic: string(m.Frames[0]), At: time.Now()}
			if json.Unmarshal(m.Frames[1], &rp.Publication) != nil {
				continue
			}
			r.mu.Lock()
			r.pubs = append(r.pubs, rp)
			r.mu.Unlock()
		}
	}()
	s.t.Cleanup(func() { r.sock.Close(); <-r.done })
	return r
}

func (r *pubRecorder) all() []recordedPub {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.pubs)
}

// checkPublications checks that every publication of a channel is a message
// the history holds (same seq, text and author): a stale leader that
// published what it could not commit would contradict it. It also checks
// that publications carry epochs that some server led.
func checkPublications(t testing.TB, channel string, pubs []recordedPub, hist []wire.Message, leaders map[uint64]int) {
	t.Helper()
	n := 0
	for _, p := range pubs {
		if p.Channel != channel {
			continue
		}
		n++
		if p.Type != wire.EventMessage {
			t.Errorf("%s: publication of type %q", channel, p.Type)
		}
		if p.Seq == 0 || p.Seq > uint64(len(hist)) {
			t.Errorf("%s: published seq %d (%q, epoch %d) is not in the history of %d messages", channel, p.Seq, p.Text, p.Epoch, len(hist))
			continue
		}
		h := hist[p.Seq-1]
		if h.Text != p.Text || h.From != p.From || h.Lamport != p.Lamport {
			t.Errorf("%s: published seq %d is %q by %s (epoch %d), but history holds %q by %s", channel, p.Seq, p.Text, p.From, p.Epoch, h.Text, h.From)
		}
		if _, ok := leaders[p.Epoch]; !ok && leaders != nil {
			t.Errorf("%s: publication of seq %d in epoch %d, which no server logged leading", channel, p.Seq, p.Epoch)
		}
	}
	t.Logf("%s: %d publications received", channel, n)
}

// checkPostReplies checks every successful post reply a raw client received,
// the ones it ignored (late, stale) included: each must name a message the
// history holds at that seq. An acknowledgement of something that was not
// committed (a stale leader's) would not.
func checkPostReplies(t testing.TB, channel string, hist []wire.Message, replies []rawReply) {
	t.Helper()
	for _, r := range replies {
		if !r.OK || r.Service != wire.Post {
			continue
		}
		var mr wire.MessageReply
		if err := json.Unmarshal(r.Data, &mr); err != nil {
			t.Errorf("post reply data %s: %v", r.Data, err)
			continue
		}
		m := mr.Message
		if m.Channel != channel {
			continue
		}
		if m.Seq == 0 || m.Seq > uint64(len(hist)) || hist[m.Seq-1].Text != m.Text {
			t.Errorf("%s: server %d acknowledged %q at seq %d in epoch %d (req %d, used %v), which the history contradicts",
				channel, r.Server, m.Text, m.Seq, r.Epoch, r.Req, r.Used)
		}
	}
}
