package client

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/go-zeromq/zmq4"

	"chat/internal/mailbox"
	"chat/wire"
)

// Event is a message shown to the user: a channel message (Kind
// wire.EventMessage) or a direct message (Kind wire.EventDM). Events of one
// stream (a channel, or the user's mailbox of direct messages) arrive exactly
// once and in sequence order.
type Event struct {
	Kind string
	wire.Message
	Epoch     uint64 // the epoch of the leader it came from (for a recovered event, the newest seen)
	Recovered bool   // fetched from history to fill a gap rather than received live
}

// stream is one subscribed sequence of messages: a channel, or the mailbox of
// direct messages (channel == "").
type stream struct {
	topic   string
	channel string
	known   bool   // last has been set from a reply; until then publications are held
	last    uint64 // sequence number of the last message delivered (or skipped as older than the subscription)
	held    map[uint64]held
	dirty   bool // to be checked against history by the fetcher
}

type held struct {
	msg   wire.Message
	epoch uint64
}

func (st *stream) kind() string {
	if st.channel == "" {
		return wire.EventDM
	}
	return wire.EventMessage
}

func (st *stream) String() string {
	if st.channel == "" {
		return "direct messages"
	}
	return "#" + st.channel
}

// Events returns the channel of delivered messages. It is closed by Close.
// Read it: a client that falls more than 10000 events behind stops taking
// publications until it catches up, then fetches what it missed from history.
func (c *Client) Events() <-chan Event { return c.events }

// Joined returns the channels this client is subscribed to, sorted.
func (c *Client) Joined() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var names []string
	for _, st := range c.streams {
		if st.channel != "" {
			names = append(names, st.channel)
		}
	}
	sort.Strings(names)
	return names
}

// wake asks the fetcher to look at dirty streams.
func (c *Client) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *Client) markAllLocked() {
	for _, st := range c.streams {
		st.dirty = true
	}
}

// addStream subscribes to topic unless already subscribed. It reports whether
// it added the stream.
func (c *Client) addStream(topic, channel string) (*stream, bool) {
	c.mu.Lock()
	st, ok := c.streams[topic]
	if !ok {
		st = &stream{topic: topic, channel: channel, held: make(map[uint64]held)}
		c.streams[topic] = st
	}
	c.mu.Unlock()
	if !ok {
		c.setSubscription(zmq4.OptionSubscribe, topic)
	}
	return st, !ok
}

// removeStream unsubscribes st, if it is still the stream of its topic.
func (c *Client) removeStream(st *stream) {
	c.mu.Lock()
	ok := c.streams[st.topic] == st
	if ok {
		delete(c.streams, st.topic)
	}
	c.mu.Unlock()
	if ok {
		c.setSubscription(zmq4.OptionUnsubscribe, st.topic)
	}
}

// removeAll unsubscribes every stream (logout, or a new login).
func (c *Client) removeAll() {
	c.mu.Lock()
	old := c.streams
	c.streams = make(map[string]*stream)
	c.mu.Unlock()
	for topic := range old {
		c.setSubscription(zmq4.OptionUnsubscribe, topic)
	}
}

// setSubscription changes the SUB's topics. zmq4's SetOption writes an
// unguarded map, hence subMu.
func (c *Client) setSubscription(option, topic string) {
	c.subMu.Lock()
	defer c.subMu.Unlock()
	if c.ctx.Err() != nil {
		return
	}
	if err := c.sub.SetOption(option, topic); err != nil {
		// The topic is recorded before the send, and re-sent on every
		// (re)connection: a failed send only delays it.
		c.log.Debug("could not send subscription", "option", option, "topic", topic, "err", err)
	}
}

// initStream is initLocked, waking the fetcher for a gap among held publications.
func (c *Client) initStream(st *stream, seq uint64) {
	c.mu.Lock()
	c.initLocked(st, seq)
	gap := st.dirty
	c.mu.Unlock()
	if gap {
		c.wake()
	}
}

// initLocked sets where st starts: messages up to seq are older than the
// subscription and not shown. Held publications after seq are delivered, and
// a gap among them is left to the fetcher.
func (c *Client) initLocked(st *stream, seq uint64) {
	if st.known {
		return
	}
	st.known, st.last = true, seq
	c.drainLocked(st)
}

// offerLocked takes one message of st, from a publication, a reply or history.
// It reports whether it revealed a gap (a message after a missing one), which
// it holds until the gap is filled.
func (c *Client) offerLocked(st *stream, m wire.Message, epoch uint64, recovered bool) (gap bool) {
	switch {
	case !st.known:
		c.holdLocked(st, m, epoch)
		return false
	case m.Seq <= st.last:
		return false // a duplicate
	case m.Seq == st.last+1:
		if c.deliverLocked(st, m, epoch, recovered) {
			c.drainLocked(st)
		}
		return false
	default:
		c.holdLocked(st, m, epoch)
		st.dirty = true
		return true
	}
}

func (c *Client) holdLocked(st *stream, m wire.Message, epoch uint64) {
	if len(st.held) < maxHeld {
		st.held[m.Seq] = held{m, epoch}
	}
}

// drainLocked delivers held messages that have become next in line and
// forgets those already delivered; a held message left after that means a gap.
func (c *Client) drainLocked(st *stream) {
	for {
		h, ok := st.held[st.last+1]
		if !ok || !c.deliverLocked(st, h.msg, h.epoch, false) {
			break
		}
		delete(st.held, h.msg.Seq)
	}
	for seq := range st.held {
		if seq <= st.last {
			delete(st.held, seq)
		}
	}
	if len(st.held) > 0 {
		st.dirty = true
	}
}

// deliverLocked queues m (the next of st) for Events and advances st. It
// refuses when the reader is too far behind: the message stays undelivered
// and the fetcher will find it in history later.
func (c *Client) deliverLocked(st *stream, m wire.Message, epoch uint64, recovered bool) bool {
	if c.queued >= maxQueued {
		st.dirty = true
		return false
	}
	st.last = m.Seq
	c.pending = append(c.pending, Event{Kind: st.kind(), Message: m, Epoch: epoch, Recovered: recovered})
	c.queued++
	select {
	case c.notify <- struct{}{}:
	default:
	}
	return true
}

// Pending returns how many events have been delivered by the client but
// have not reached the Events channel yet. When it is 0, a non-blocking read
// of Events gets every event delivered so far.
func (c *Client) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queued
}

// emit hands queued events to Events, in order, and closes it at the end.
func (c *Client) emit() {
	defer close(c.events)
	for {
		c.mu.Lock()
		batch := c.pending
		c.pending = nil
		c.mu.Unlock()
		for _, ev := range batch {
			select {
			case c.events <- ev:
			case <-c.ctx.Done():
				return
			}
			c.mu.Lock()
			c.queued--
			c.mu.Unlock()
		}
		select {
		case <-c.notify:
		case <-c.ctx.Done():
			return
		}
	}
}

// dispatch reads publications from the SUB and orders them per stream. It
// never makes a request (gaps go to the fetcher), so it keeps draining the
// SUB whatever the request path is doing.
func (c *Client) dispatch() {
	for msg := range c.subIn.C {
		if len(msg.Frames) != 2 {
			c.log.Warn("dropped a publication", "err", fmt.Sprintf("%d frames, want [topic, publication]", len(msg.Frames)))
			continue
		}
		topic := string(msg.Frames[0])
		var pub wire.Publication
		if err := json.Unmarshal(msg.Frames[1], &pub); err != nil {
			c.log.Warn("dropped a publication", "topic", topic, "err", err)
			continue
		}
		c.mu.Lock()
		if pub.Sealed != "" {
			plain, err := mailbox.Open(c.mailboxKey, pub.Sealed)
			if err == nil {
				err = json.Unmarshal(plain, &pub.Message)
			}
			if err != nil {
				// Sealed for another key (the servers' secret was rotated
				// since login): history has it, so fetch.
				if st := c.streams[topic]; st != nil {
					st.dirty = true
				}
				c.mu.Unlock()
				c.log.Info("could not open a direct message: fetching from history", "err", err)
				c.wake()
				continue
			}
		}
		c.mu.Unlock()
		if pub.Lamport > 0 {
			c.lamport.Witness(pub.Lamport)
		}
		c.mu.Lock()
		gap, grew := false, false
		st := c.streams[topic]
		switch {
		case pub.Epoch < c.epoch:
			c.log.Info("ignored a publication from an old leader", "topic", topic, "epoch", pub.Epoch, "current", c.epoch, "seq", pub.Seq)
		case st == nil:
			// Unsubscribed meanwhile.
		case pub.Type != "" && pub.Type != st.kind():
			c.log.Warn("dropped a publication", "topic", topic, "type", pub.Type, "err", "wrong type for its topic")
		default:
			if grew = pub.Epoch > c.epoch; grew {
				c.log.Info("leader epoch changed", "from", c.epoch, "to", pub.Epoch)
				c.epoch = pub.Epoch
				c.markAllLocked()
			}
			gap = c.offerLocked(st, pub.Message, pub.Epoch, false)
			if gap {
				c.log.Info("gap in a stream", "stream", st.String(), "last", st.last, "got", pub.Seq)
			}
		}
		c.mu.Unlock()
		if gap || grew {
			c.wake()
		}
	}
}

// fetchLoop checks dirty streams against history: on a gap, on a new epoch,
// after a login or join whose start could not be read, and every ResyncEvery.
func (c *Client) fetchLoop() {
	var tick <-chan time.Time
	if c.cfg.ResyncEvery > 0 {
		t := time.NewTicker(c.cfg.ResyncEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-tick:
			c.mu.Lock()
			c.markAllLocked()
			c.mu.Unlock()
		case <-c.kick:
		}
		c.mu.Lock()
		var todo []*stream
		for _, st := range c.streams {
			if st.dirty {
				st.dirty = false
				todo = append(todo, st)
			}
		}
		c.mu.Unlock()
		sort.Slice(todo, func(i, j int) bool { return todo[i].topic < todo[j].topic })
		for _, st := range todo {
			if err := c.syncStream(st); err != nil {
				if c.ctx.Err() != nil {
					return
				}
				// Tried again at the next tick (or sooner, on a new gap).
				c.log.Warn("could not fetch missed messages", "stream", st.String(), "err", err)
				c.mu.Lock()
				st.dirty = true
				c.mu.Unlock()
			}
		}
	}
}

// syncStream delivers, from history, every message of st after the last one
// delivered, page by page; for a stream whose start is unknown it reads the
// start first.
func (c *Client) syncStream(st *stream) error {
	for {
		c.mu.Lock()
		if c.streams[st.topic] != st {
			c.mu.Unlock()
			return nil
		}
		known, last, full := st.known, st.last, c.queued >= maxQueued
		c.mu.Unlock()
		if full {
			c.mu.Lock()
			st.dirty = true
			c.mu.Unlock()
			return nil
		}
		req := wire.HistoryRequest{Channel: st.channel, Direct: st.channel == ""}
		if known {
			req.After, req.Before, req.Limit = last, last+wire.MaxHistory+1, wire.MaxHistory
		} else {
			req.Limit = 1
		}
		var h wire.HistoryReply
		if err := c.Do(c.ctx, wire.History, req, &h); err != nil {
			return fmt.Errorf("history of %s after %d: %w", st, last, err)
		}
		c.mu.Lock()
		if c.streams[st.topic] != st {
			c.mu.Unlock()
			return nil
		}
		if !known {
			c.initLocked(st, h.Seq)
			again := st.dirty // publications held past a gap
			st.dirty = false
			c.mu.Unlock()
			if !again {
				return nil
			}
			continue
		}
		before := st.last
		for _, m := range h.Messages {
			if m.Seq > before {
				c.offerLocked(st, m, c.epoch, true)
			}
		}
		progressed := st.last > before
		if progressed {
			c.log.Info("fetched missed messages", "stream", st.String(), "from", before+1, "to", st.last)
		}
		done := st.last >= h.Seq || !progressed
		if done && st.last < h.Seq {
			st.dirty = true // a hole in history itself: try again at the next tick, not now
		}
		c.mu.Unlock()
		if done {
			return nil
		}
	}
}
