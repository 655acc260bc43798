package broker_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/broker"
	"chat/internal/benchutil"
	"chat/wire"
)

// BenchmarkRoundTrip measures request-reply round trips of a 100-byte
// request through the broker to an echo leader, and the same against a bare
// zmq4 ROUTER echo (no broker hop) as the baseline. It reports round-trips/s
// and the p50/p99 latency of one round trip.
func BenchmarkRoundTrip(b *testing.B) {
	for _, clients := range []int{1, 8} {
		b.Run(fmt.Sprintf("broker/clients=%d", clients), func(b *testing.B) {
			logger, _ := testLogger(b)
			br := startBroker(b, broker.Config{Logger: logger})
			front, back := br.Addr()
			s := newFakeServer(b, back, 1, wire.RoleLeader, 1)
			s.handle = func(body []byte) []byte { return body }
			waitLeader(b, br, 1, 1)
			roundTrips(b, front, clients)
		})
		b.Run(fmt.Sprintf("bare/clients=%d", clients), func(b *testing.B) {
			roundTrips(b, benchutil.BareEcho(b), clients)
		})
	}
}

// roundTrips runs b.N round trips split among clients, each a DEALER that
// sends [empty, request] and waits for its reply.
func roundTrips(b *testing.B, endpoint string, clients int) {
	body := []byte(fmt.Sprintf(`{"service":"ping","data":{"pad":"%070d"},"req":1}`, 0))
	cs := make([]*testClient, clients)
	for i := range cs {
		cs[i] = newClient(b, endpoint)
		cs[i].send(nil, body) // warm up: connected, routed
		cs[i].recv(5 * time.Second)
	}
	benchutil.RoundTrips(b, clients, func(i int) error {
		if err := cs[i].sock.Send(zmq4.NewMsgFrom(nil, body)); err != nil {
			return err
		}
		if _, ok := cs[i].tryRecv(5 * time.Second); !ok {
			return errors.New("no reply within 5 s")
		}
		return nil
	})
}
