package zmqx

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

// BenchmarkTransport compares zmq4 over plain "tcp" with the hardened
// transport (both ends through it): DEALER->ROUTER echo round trips of 100
// bytes, and PUB->SUB throughput of 100-byte messages.
func BenchmarkTransport(b *testing.B) {
	for _, tc := range []struct {
		name  string
		mapEP func(string) string
	}{{"tcp", plainTCP}, {"hardened", ClientEndpoint}} {
		b.Run("roundtrip/"+tc.name, func(b *testing.B) {
			addr := echo(b, tc.mapEP)
			d := mustDealer(b, tc.mapEP, addr)
			frame := [][]byte{bytes.Repeat([]byte("r"), 100)}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				took, err := d.call(frame, 5*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				lat = append(lat, took)
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "roundtrips/s")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
		})
		b.Run("pubsub/"+tc.name, func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			pub := zmq4.NewPub(ctx, zmq4.WithLogger(StdLogger(nil)))
			defer pub.Close()
			if err := pub.Listen(tc.mapEP("tcp://127.0.0.1:0")); err != nil {
				b.Fatal(err)
			}
			sub := zmq4.NewSub(ctx, zmq4.WithLogger(StdLogger(nil)))
			defer sub.Close()
			_ = sub.SetOption(zmq4.OptionSubscribe, "t")
			if err := sub.Dial(tc.mapEP("tcp://" + pub.Addr().String())); err != nil {
				b.Fatal(err)
			}
			in := NewInbox(ctx, sub, 4096)
			for { // wait for the subscription
				_ = pub.Send(zmq4.NewMsgFrom([]byte("t"), []byte("probe")))
				select {
				case <-in.C:
				case <-time.After(20 * time.Millisecond):
					continue
				}
				break
			}
			for len(in.C) > 0 {
				<-in.C
			}
			msg := zmq4.NewMsgFrom([]byte("t"), bytes.Repeat([]byte("p"), 100))
			// At most window messages in flight: a publisher that outruns its
			// subscriber measures the subscriber's queue, not the transport
			// (and the hardened transport cuts a subscriber 32 MiB behind).
			const window = 10000
			credit := make(chan struct{}, window)
			b.ResetTimer()
			go func() {
				for range b.N {
					select {
					case credit <- struct{}{}:
					case <-ctx.Done():
						return
					}
					_ = pub.Send(msg)
				}
			}()
			got := 0
			for got < b.N {
				select {
				case <-in.C:
					<-credit
					got++
				case <-time.After(2 * time.Second):
					b.Fatalf("got %d of %d", got, b.N)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
