package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/internal/zmqx"
)

// BenchmarkThroughput publishes b.N 100-byte messages from a zmq4 PUB to a
// zmq4 SUB through the proxy, and, as the baseline, straight from PUB to SUB.
// It reports the messages received per second and the share lost (a PUB
// drops past its HWM by design).
func BenchmarkThroughput(b *testing.B) {
	b.Run("proxy", func(b *testing.B) {
		p, _ := startProxy(b, "", "")
		front, back := p.Addr()
		pub := newPub(b, front, false)
		sub := newSub(b, back, false, "bench/")
		throughput(b, pub, sub)
	})
	b.Run("bare", func(b *testing.B) {
		ctx, cancel := context.WithCancel(context.Background())
		ps := zmq4.NewPub(ctx, zmq4.WithLogger(zmqx.StdLogger(nil)))
		if err := ps.Listen("tcp://127.0.0.1:0"); err != nil {
			b.Fatal(err)
		}
		pub := &endpoint{t: b, sock: ps, cancel: cancel}
		b.Cleanup(pub.close)
		sub := newSub(b, zmqx.BoundEndpoint(ps, "tcp://127.0.0.1:0"), false, "bench/")
		throughput(b, pub, sub)
	})
}

func throughput(b *testing.B, pub, sub *endpoint) {
	syncSub(b, pub, sub, "bench/")
	topic, payload := []byte("bench/"), make([]byte, 100)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if err := pub.sock.Send(zmq4.NewMsgFrom(topic, payload)); err != nil {
			b.Fatal(err)
		}
	}
	got, last := 0, start
	for got < b.N {
		if _, _, ok := sub.next(500 * time.Millisecond); !ok {
			break // the rest was dropped
		}
		got++
		last = time.Now()
	}
	b.StopTimer()
	if got == 0 {
		b.Fatal("nothing received")
	}
	b.ReportMetric(float64(got)/last.Sub(start).Seconds(), "msgs/s")
	b.ReportMetric(100*float64(b.N-got)/float64(b.N), "lost-%")
}
