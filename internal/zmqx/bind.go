package zmqx

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/go-zeromq/zmq4"
)

// Bind makes sock listen on endpoint, a "tcp://" one through the hardened
// transport with ClusterLimits (see Endpoint). Its error names the endpoint
// and the cause without zmq4's layers of wrapping ("listen tcp://*:5555:
// address already in use"); the cause stays reachable with errors.Is (for
// example syscall.EADDRINUSE).
func Bind(sock zmq4.Socket, endpoint string) error {
	return bind(sock, endpoint, Endpoint(endpoint))
}

// BindClients is Bind for a port that clients connect to: the hardened
// transport with ClientLimits (see ClientEndpoint).
func BindClients(sock zmq4.Socket, endpoint string) error {
	return bind(sock, endpoint, ClientEndpoint(endpoint))
}

func bind(sock zmq4.Socket, endpoint, mapped string) error {
	err := sock.Listen(mapped)
	if err == nil {
		return nil
	}
	cause := err
	var se *os.SyscallError
	if errors.As(err, &se) {
		cause = se.Err
	}
	return fmt.Errorf("listen %s: %w", endpoint, cause)
}

// BoundEndpoint returns the endpoint sock really listens on, with the port the
// system chose when endpoint asked for port 0: "tcp://127.0.0.1:0" becomes
// "tcp://127.0.0.1:40123". It returns endpoint if sock does not listen.
func BoundEndpoint(sock zmq4.Socket, endpoint string) string {
	addr := sock.Addr()
	if addr == nil {
		return endpoint
	}
	scheme, _, ok := strings.Cut(endpoint, "://")
	if !ok {
		return endpoint
	}
	return scheme + "://" + addr.String()
}
