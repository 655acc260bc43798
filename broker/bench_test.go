package broker_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/broker"
	"chat/internal/zmqx"
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
			roundTrips(b, bareEcho(b), clients)
		})
	}
}

// bareEcho is a zmq4 ROUTER that sends every message back as it came.
func bareEcho(b *testing.B) string {
	ctx, cancel := context.WithCancel(context.Background())
	r := zmq4.NewRouter(ctx, zmq4.WithLogger(zmqx.StdLogger(nil)))
	if err := r.Listen("tcp://127.0.0.1:0"); err != nil {
		b.Fatal(err)
	}
	in := zmqx.NewInbox(ctx, r, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for msg := range in.C {
			_ = r.SendMulti(msg)
		}
	}()
	b.Cleanup(func() {
		cancel()
		_ = r.Close()
		in.Wait()
		<-done
	})
	return zmqx.BoundEndpoint(r, "tcp://127.0.0.1:0")
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
	lat := make([][]time.Duration, clients)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range cs {
		n := b.N / clients
		if i < b.N%clients {
			n++
		}
		wg.Go(func() {
			l := make([]time.Duration, 0, n)
			for range n {
				t0 := time.Now()
				if err := c.sock.Send(zmq4.NewMsgFrom(nil, body)); err != nil {
					b.Error(err)
					return
				}
				if _, ok := c.tryRecv(5 * time.Second); !ok {
					b.Error("no reply within 5 s")
					return
				}
				l = append(l, time.Since(t0))
			}
			lat[i] = l
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) == 0 {
		return
	}
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "round-trips/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
}
