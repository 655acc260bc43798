// Package benchutil holds what the request-path benchmarks share: the bare
// zmq4 echo they are measured against in the same run, and a timer of round
// trips that reports throughput and latency percentiles.
package benchutil

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/internal/zmqx"
)

// BareEcho starts a zmq4 ROUTER on loopback that sends every message back as
// it came, and returns its endpoint. It stops when the benchmark ends.
func BareEcho(b *testing.B) string {
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

// RoundTrips spreads b.N calls of trip over clients goroutines (trip(i) is
// one round trip of client i) and reports round-trips/s and the p50 and p99
// latency of one round trip.
func RoundTrips(b *testing.B, clients int, trip func(i int) error) {
	lat := make([][]time.Duration, clients)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i := range clients {
		n := b.N / clients
		if i < b.N%clients {
			n++
		}
		wg.Go(func() {
			l := make([]time.Duration, 0, n)
			for range n {
				t0 := time.Now()
				if err := trip(i); err != nil {
					b.Error(err)
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
	if len(all) == 0 {
		return
	}
	slices.Sort(all)
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "round-trips/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
}
