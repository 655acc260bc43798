package zmqx

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	zplain "github.com/go-zeromq/zmq4/security/plain"
)

const testSecret = "0123456789abcdef-cluster"

func TestCheckSecret(t *testing.T) {
	for _, tc := range []struct {
		secret string
		ok     bool
	}{{"", false}, {"short", false}, {strings.Repeat("s", 16), true}, {strings.Repeat("s", 255), true}, {strings.Repeat("s", 256), false}} {
		if err := CheckSecret(tc.secret); (err == nil) != tc.ok {
			t.Errorf("CheckSecret(%d bytes) = %v", len(tc.secret), err)
		}
	}
	if Cluster("") != nil {
		t.Error("Cluster(\"\") has options: want NULL security")
	}
}

func TestPlain(t *testing.T) {
	addr := echo(t, Endpoint, Cluster(testSecret)...)
	good := mustDealer(t, Endpoint, addr, Cluster(testSecret)...)
	if _, err := good.call([][]byte{[]byte("hi")}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts []zmq4.Option
		auth bool // refused for its credentials (else for its mechanism)
	}{
		{"wrong secret", Cluster(testSecret + "x"), true},
		{"wrong user", []zmq4.Option{zmq4.WithSecurity(Plain("someone", testSecret))}, true},
		{"empty credentials", []zmq4.Option{zmq4.WithSecurity(Plain("", ""))}, true},
		{"no security", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dialDealer(t, Endpoint, addr, tc.opts...)
			if err == nil {
				t.Fatal("the handshake succeeded")
			}
			if errors.Is(err, ErrAuth) != tc.auth {
				t.Fatalf("err %v: ErrAuth %v, want %v", err, errors.Is(err, ErrAuth), tc.auth)
			}
		})
	}
	if _, err := good.call([][]byte{[]byte("still")}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

// restartable runs an echo with the cluster secret on a fixed port.
func restartable(t *testing.T, addr string, sec zmq4.Security) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	r := zmq4.NewRouter(ctx, zmq4.WithLogger(StdLogger(nil)), zmq4.WithSecurity(sec))
	if err := r.Listen(Endpoint("tcp://" + addr)); err != nil {
		t.Fatal(err)
	}
	in := NewInbox(ctx, r, 16)
	go func() {
		for m := range in.C {
			_ = r.Send(m)
		}
	}()
	return func() { cancel(); r.Close(); in.Wait() }
}

// callUntil retries a call until one succeeds.
func callUntil(d *testDealer, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := d.call([][]byte{[]byte("hi")}, 200*time.Millisecond)
		if err == nil || time.Now().After(deadline) {
			return err
		}
	}
}

func TestPlainReconnects(t *testing.T) {
	// zmq4's automatic reconnect runs the handshake again: the client must
	// still have its credentials (zmq4's own PLAIN client forgets them).
	for _, tc := range []struct {
		name   string
		client zmq4.Security
		works  bool
	}{{"ours", Plain(ClusterUser, testSecret), true}, {"zmq4's security/plain", zplain.Security(ClusterUser, testSecret), false}} {
		t.Run(tc.name, func(t *testing.T) {
			l := freeAddr(t)
			stop := restartable(t, l, Plain(ClusterUser, testSecret))
			d := mustDealer(t, Endpoint, l, append(Dialer(nil), zmq4.WithSecurity(tc.client))...)
			if err := callUntil(d, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			stop()
			stop = restartable(t, l, Plain(ClusterUser, testSecret))
			defer stop()
			err := callUntil(d, 2*time.Second)
			if (err == nil) != tc.works {
				t.Fatalf("after the server restarted: %v (want it to work: %v)", err, tc.works)
			}
		})
	}
}

func TestZMQ4PlainServerAcceptsAnyone(t *testing.T) {
	// The measured fact: zmq4's own PLAIN server does not check credentials.
	addr := echo(t, Endpoint, zmq4.WithSecurity(zplain.Security(ClusterUser, testSecret)))
	d, err := dialDealer(t, Endpoint, addr, zmq4.WithSecurity(Plain("anyone", "anything")))
	if err != nil {
		t.Fatalf("zmq4's PLAIN server now refuses wrong credentials (%v): good news", err)
	}
	if _, err := d.call([][]byte{[]byte("hi")}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

// freeAddr returns a 127.0.0.1 address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// --- libzmq ---

const python = "/usr/bin/python3"

func needLibzmq(t *testing.T) {
	t.Helper()
	if err := exec.Command(python, "-c", "import zmq").Run(); err != nil {
		t.Skipf("libzmq interop needs python3-zmq for %s (apt-get install python3-zmq): %v", python, err)
	}
}

func runPy(t *testing.T, args ...string) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, append([]string{"testdata/libzmq.py"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("libzmq.py %v: %v\n%s", args, err, out)
	}
	var res map[string]any
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("libzmq.py %v: %v\n%s", args, err, out)
	}
	return res
}

func TestLibzmqHeartbeats(t *testing.T) {
	// A libzmq peer with ZMTP heartbeats drops a connection whose PINGs get
	// no answer; zmq4 never answers, the guard does.
	needLibzmq(t)
	for _, tc := range []struct {
		name    string
		mapEP   func(string) string
		guarded bool
	}{{"plain tcp", plainTCP, false}, {"guarded", ClientEndpoint, true}} {
		t.Run(tc.name, func(t *testing.T) {
			addr := echo(t, tc.mapEP)
			before := TransportStats().Pongs
			res := runPy(t, "heartbeat", "tcp://"+addr, "1.0")
			t.Logf("%s: %v", tc.name, res)
			if res["replies"] != 2.0 {
				t.Fatalf("replies %v, want 2", res["replies"])
			}
			if !tc.guarded {
				if res["disconnects"] == 0.0 {
					t.Log("libzmq kept a connection whose PINGs went unanswered")
				}
				return
			}
			if res["disconnects"] != 0.0 {
				t.Errorf("libzmq dropped the connection %v times", res["disconnects"])
			}
			if TransportStats().Pongs == before {
				t.Error("no PING answered")
			}
		})
	}
}

func TestLibzmqPlainClient(t *testing.T) {
	needLibzmq(t)
	addr := echo(t, Endpoint, Cluster(testSecret)...)
	res := runPy(t, "plain-client", "tcp://"+addr, ClusterUser, testSecret)
	if res["replies"] != 1.0 || res["handshake_failed"] != false {
		t.Fatalf("with the secret: %v", res)
	}
	// libzmq 4.3.4 reports the ERROR command of a ZMTP 3.0 peer as an
	// unexpected command (a protocol failure), not an authentication one.
	res = runPy(t, "plain-client", "tcp://"+addr, ClusterUser, "wrong-password-123")
	if res["replies"] != 0.0 || res["handshake_failed"] != true {
		t.Fatalf("with a wrong password: %v", res)
	}
}

func TestLibzmqPlainServer(t *testing.T) {
	needLibzmq(t)
	cmd := exec.Command(python, "testdata/libzmq.py", "plain-server", ClusterUser, testSecret)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimPrefix(strings.TrimSpace(line), "tcp://")
	d := mustDealer(t, Endpoint, addr, Cluster(testSecret)...)
	if _, err := d.call([][]byte{[]byte("hi")}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// libzmq 4.3.4 refuses it with an ERROR command it garbles for a ZMTP
	// 3.0 peer ("\x04\x09^RROR\x03400"): the guard calls that malformed.
	if _, err = dialDealer(t, Endpoint, addr, Cluster(testSecret+"x")...); err == nil {
		t.Fatal("libzmq's ZAP handler let a wrong secret in")
	}
}
