package zmqx

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"

	"github.com/go-zeromq/zmq4"
)

// ZMTP PLAIN (RFC 24) for the connections between the system's roles.
//
// zmq4's own security/plain is not usable for that: its server accepts any
// user name and password (validateHello is a stub), and its client forgets
// its credentials after the first handshake, so a reconnect sends empty ones.
// This one checks them (in constant time), answers ERROR and fails the
// handshake otherwise, and keeps them for every reconnect. It interoperates
// with libzmq's PLAIN (a libzmq server without a ZAP handler accepts anyone,
// like zmq4's). PLAIN sends the password in clear: it keeps out processes
// that don't know the secret, not eavesdroppers on the network between the
// roles.

// ClusterUser is the PLAIN user name of the system's roles.
const ClusterUser = "chat-cluster"

// Secret lengths: PLAIN carries at most 255 bytes.
const (
	MinSecretLen = 16
	MaxSecretLen = 255
)

// ErrAuth is wrapped by the handshake error of a peer whose credentials were
// refused, on either side.
var ErrAuth = errors.New("zmtp PLAIN authentication failed")

// CheckSecret reports a cluster secret that cannot be used.
func CheckSecret(secret string) error {
	switch {
	case len(secret) < MinSecretLen:
		return fmt.Errorf("cluster secret is %d bytes: use at least %d (for example `openssl rand -hex 32`)", len(secret), MinSecretLen)
	case len(secret) > MaxSecretLen:
		return fmt.Errorf("cluster secret is %d bytes: ZMTP PLAIN carries at most %d", len(secret), MaxSecretLen)
	}
	return nil
}

// Cluster returns the options that make a socket authenticate with the
// cluster secret: as the PLAIN server on a socket that listens, as the
// client on one that dials. With no secret there are none (NULL security:
// anyone may connect).
func Cluster(secret string) []zmq4.Option {
	if secret == "" {
		return nil
	}
	return []zmq4.Option{zmq4.WithSecurity(Plain(ClusterUser, secret))}
}

// Plain returns the PLAIN mechanism with these credentials: a listening
// socket accepts only peers that present them, a dialing socket presents them.
func Plain(user, password string) zmq4.Security {
	return &plain{user: []byte(user), pass: []byte(password), digest: credDigest([]byte(user), []byte(password))}
}

type plain struct {
	user, pass []byte
	digest     [32]byte
}

func credDigest(user, pass []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte{byte(len(user))})
	h.Write(user)
	h.Write(pass)
	var d [32]byte
	h.Sum(d[:0])
	return d
}

func (*plain) Type() zmq4.SecurityType { return zmq4.PlainSecurity }

func (*plain) Encrypt(w io.Writer, data []byte) (int, error) { return w.Write(data) }
func (*plain) Decrypt(w io.Writer, data []byte) (int, error) { return w.Write(data) }

// Handshake runs PLAIN's commands after the greeting: the side that accepted
// the connection is the PLAIN server.
func (p *plain) Handshake(conn *zmq4.Conn, server bool) error {
	if server {
		return p.serve(conn)
	}
	return p.join(conn)
}

func (p *plain) serve(conn *zmq4.Conn) error {
	refuse := func(reason string, err error) error {
		_ = conn.SendCmd(zmq4.CmdError, errorBody(reason))
		// zmq4 leaves a connection whose handshake failed open: close it
		// (what is queued, the ERROR, goes first).
		_ = conn.Close()
		return err
	}
	cmd, err := conn.RecvCmd()
	if err != nil {
		return fmt.Errorf("plain: read HELLO: %w", err)
	}
	if cmd.Name != zmq4.CmdHello {
		return refuse("expected HELLO", fmt.Errorf("plain: got %q, want HELLO", cmd.Name))
	}
	user, pass, err := parseHello(cmd.Body)
	if err != nil {
		return refuse("malformed HELLO", fmt.Errorf("plain: %w", err))
	}
	got := credDigest(user, pass)
	if subtle.ConstantTimeCompare(got[:], p.digest[:]) != 1 {
		// "400" is the ZAP status libzmq reports as an authentication
		// failure (ZMQ_EVENT_HANDSHAKE_FAILED_AUTH).
		return refuse(zapDenied, fmt.Errorf("%w: wrong user name or password", ErrAuth))
	}
	if err := conn.SendCmd(zmq4.CmdWelcome, nil); err != nil {
		return fmt.Errorf("plain: send WELCOME: %w", err)
	}
	cmd, err = conn.RecvCmd()
	if err != nil {
		return fmt.Errorf("plain: read INITIATE: %w", err)
	}
	if cmd.Name != zmq4.CmdInitiate {
		return refuse("expected INITIATE", fmt.Errorf("plain: got %q, want INITIATE", cmd.Name))
	}
	if err := peerMetadata(conn, cmd.Body); err != nil {
		return refuse("malformed metadata", err)
	}
	raw, err := conn.Meta.MarshalZMTP()
	if err != nil {
		return fmt.Errorf("plain: encode metadata: %w", err)
	}
	if err := conn.SendCmd(zmq4.CmdReady, raw); err != nil {
		return fmt.Errorf("plain: send READY: %w", err)
	}
	return nil
}

func (p *plain) join(conn *zmq4.Conn) error {
	hello := make([]byte, 0, 2+len(p.user)+len(p.pass))
	hello = append(hello, byte(len(p.user)))
	hello = append(hello, p.user...)
	hello = append(hello, byte(len(p.pass)))
	hello = append(hello, p.pass...)
	if err := conn.SendCmd(zmq4.CmdHello, hello); err != nil {
		return fmt.Errorf("plain: send HELLO: %w", err)
	}
	cmd, err := conn.RecvCmd()
	if err != nil {
		return fmt.Errorf("plain: read WELCOME: %w", err)
	}
	switch cmd.Name {
	case zmq4.CmdWelcome:
	case zmq4.CmdError:
		return fmt.Errorf("%w: the server said %q", ErrAuth, errorReason(cmd.Body))
	default:
		return fmt.Errorf("plain: got %q, want WELCOME", cmd.Name)
	}
	raw, err := conn.Meta.MarshalZMTP()
	if err != nil {
		return fmt.Errorf("plain: encode metadata: %w", err)
	}
	if err := conn.SendCmd(zmq4.CmdInitiate, raw); err != nil {
		return fmt.Errorf("plain: send INITIATE: %w", err)
	}
	cmd, err = conn.RecvCmd()
	if err != nil {
		return fmt.Errorf("plain: read READY: %w", err)
	}
	switch cmd.Name {
	case zmq4.CmdReady:
	case zmq4.CmdError:
		return fmt.Errorf("%w: the server said %q", ErrAuth, errorReason(cmd.Body))
	default:
		return fmt.Errorf("plain: got %q, want READY", cmd.Name)
	}
	return peerMetadata(conn, cmd.Body)
}

// peerMetadata stores the peer's metadata once it is known to be safe for
// zmq4 (which panics on malformed metadata or an unknown socket type), also
// when the connection does not come through the guard.
func peerMetadata(conn *zmq4.Conn, body []byte) error {
	m, err := parseMetadata(body)
	if err != nil {
		return fmt.Errorf("plain: %w", err)
	}
	if err := conn.Peer.Meta.UnmarshalZMTP(m.marshal()); err != nil {
		return fmt.Errorf("plain: peer metadata: %w", err)
	}
	return nil
}

const zapDenied = "400"

// errorBody is an ERROR command's body: reason-size, reason.
func errorBody(reason string) []byte {
	return append([]byte{byte(len(reason))}, reason...)
}

func errorReason(body []byte) string {
	if len(body) < 1 || int(body[0]) > len(body)-1 {
		return "(malformed ERROR)"
	}
	if reason := string(body[1 : 1+int(body[0])]); reason != zapDenied {
		return reason
	}
	return "invalid credentials (400)"
}
