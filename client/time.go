package client

import (
	"context"
	"fmt"
	"time"

	"chat/wire"
)

// TimeInfo is an NTP-style estimate of the servers' clock against this
// client's clock, from the sample with the lowest round trip.
type TimeInfo struct {
	Server  time.Time     // the leader's clock when the best reply arrived (its reading plus half the round trip)
	Local   time.Time     // this client's clock (Clock) when the best reply arrived
	Offset  time.Duration // Server - Local: add it to Clock to get the servers' time
	RTT     time.Duration // round trip of the best sample
	Error   time.Duration // bound on the error of Offset: RTT/2
	Samples int           // samples that got a reply
}

// Time asks the leader for its time samples times (at least once), keeps the
// sample with the lowest round trip, and estimates the offset of this
// client's clock: offset = serverTime + rtt/2 - localReceiveTime. The offset
// is kept (Offset, Now) for the times UIs display. It fails only if no sample
// got a reply.
func (c *Client) Time(ctx context.Context, samples int) (TimeInfo, error) {
	samples = max(samples, 1)
	var best TimeInfo
	var lastErr error
	for range samples {
		var r wire.TimeReply
		var rt roundTrip
		err := c.do(ctx, wire.Time, nil, &r, c.cfg.Retries, &rt)
		sent, received := rt.sent, rt.received
		if err != nil {
			if ctx.Err() != nil || c.ctx.Err() != nil {
				return TimeInfo{}, err
			}
			lastErr = err
			continue
		}
		rtt := received.Sub(sent) // monotonic
		local := received.Add(c.cfg.Skew).Round(0)
		server := r.Time.Add(rtt / 2)
		if best.Samples == 0 || rtt < best.RTT {
			best = TimeInfo{Server: server, Local: local, Offset: server.Sub(local), RTT: rtt, Error: rtt / 2, Samples: best.Samples}
		}
		best.Samples++
	}
	if best.Samples == 0 {
		return TimeInfo{}, fmt.Errorf("time: no sample got a reply: %w", lastErr)
	}
	c.offset.Store(int64(best.Offset))
	c.log.Debug("clock offset estimated", "offset", best.Offset, "rtt", best.RTT, "samples", best.Samples)
	return best, nil
}

// Offset returns the last offset estimated by Time (0 before): the servers'
// clock minus this client's.
func (c *Client) Offset() time.Duration { return time.Duration(c.offset.Load()) }

// Clock returns this client's own software clock: the OS clock plus
// Config.Skew.
func (c *Client) Clock() time.Time { return time.Now().Add(c.cfg.Skew) }

// Now returns the best estimate of the servers' time: Clock plus Offset.
func (c *Client) Now() time.Time { return c.Clock().Add(c.Offset()) }
