package client

import (
	"context"
	"encoding/base64"
	"fmt"

	"chat/wire"
)

// Register creates an account.
func (c *Client) Register(ctx context.Context, user, password string) error {
	return c.Do(ctx, wire.Register, wire.Credentials{User: user, Password: password}, nil)
}

// Login starts a session as user: later requests carry its token. It
// subscribes to the user's direct messages and to every channel the servers
// list as the user's memberships (so a restarted client gets them back), and
// from then on delivers what is posted there as Events. A login replaces any
// previous session of this Client.
func (c *Client) Login(ctx context.Context, user, password string) (*wire.LoginReply, error) {
	c.removeAll()
	c.mu.Lock()
	c.user, c.token = "", ""
	c.mu.Unlock()

	// Subscribe first, then learn where the stream starts: nothing published
	// in between is missed.
	mailbox, _ := c.addStream(wire.DMTopic(user), "")
	var r wire.LoginReply
	if err := c.Do(ctx, wire.Login, wire.Credentials{User: user, Password: password}, &r); err != nil {
		c.removeStream(mailbox)
		return nil, err
	}
	if r.User == "" {
		r.User = user
	}
	if r.Topic != "" && r.Topic != mailbox.topic {
		c.removeStream(mailbox)
		mailbox, _ = c.addStream(r.Topic, "")
	}
	key, err := base64.StdEncoding.DecodeString(r.Key)
	if err != nil {
		c.log.Warn("login reply has an unreadable mailbox key: direct messages will come from history only", "err", err)
	}
	c.mu.Lock()
	c.user, c.token = r.User, r.Token
	c.mailboxTopic, c.mailboxKey = mailbox.topic, key
	c.mu.Unlock()
	c.initStream(mailbox, r.Mailbox)

	for _, name := range r.Channels {
		c.addStream(wire.ChannelTopic(name), name)
	}
	if len(r.Channels) > 0 {
		var list wire.ChannelsReply
		err := c.Do(ctx, wire.Channels, nil, &list)
		if err != nil {
			c.log.Warn("could not read where the user's channels stand; the fetcher will", "err", err)
		}
		c.mu.Lock()
		for _, info := range list.Channels {
			if st := c.streams[wire.ChannelTopic(info.Name)]; st != nil {
				c.initLocked(st, info.Seq)
			}
		}
		pending := false
		for _, st := range c.streams {
			if !st.known {
				st.dirty = true
			}
			pending = pending || st.dirty
		}
		c.mu.Unlock()
		if pending {
			c.wake()
		}
	}
	c.log.Info("logged in", "user", r.User, "channels", len(r.Channels))
	return &r, nil
}

// Logout ends the session and unsubscribes from everything. The local session
// ends even if the request fails.
func (c *Client) Logout(ctx context.Context) error {
	err := c.Do(ctx, wire.Logout, nil, nil)
	c.removeAll()
	c.mu.Lock()
	c.user, c.token = "", ""
	c.mu.Unlock()
	return err
}

// Channels lists every channel.
func (c *Client) Channels(ctx context.Context) ([]wire.ChannelInfo, error) {
	var r wire.ChannelsReply
	if err := c.Do(ctx, wire.Channels, nil, &r); err != nil {
		return nil, err
	}
	return r.Channels, nil
}

// Users lists every user, with presence.
func (c *Client) Users(ctx context.Context) ([]wire.UserInfo, error) {
	var r wire.UsersReply
	if err := c.Do(ctx, wire.Users, nil, &r); err != nil {
		return nil, err
	}
	return r.Users, nil
}

// Create creates a channel. If the servers make its creator a member (Joined
// in the reply), the client is subscribed to it as by Join.
func (c *Client) Create(ctx context.Context, name, description string) (wire.ChannelInfo, error) {
	st, added := c.addStream(wire.ChannelTopic(name), name)
	var r wire.ChannelsReply
	err := c.Do(ctx, wire.Create, wire.CreateRequest{Channel: name, Description: description}, &r)
	info, err := one(wire.Create, r, err)
	if err != nil || !info.Joined {
		if added {
			c.removeStream(st)
		}
		return info, err
	}
	c.initStream(st, info.Seq)
	return info, nil
}

// Join makes the user a member of a channel and delivers its new messages as
// Events: it subscribes first, then starts the stream at the channel's
// sequence number in the reply.
func (c *Client) Join(ctx context.Context, name string) (wire.ChannelInfo, error) {
	st, added := c.addStream(wire.ChannelTopic(name), name)
	var r wire.ChannelsReply
	err := c.Do(ctx, wire.Join, wire.NameRequest{Channel: name}, &r)
	info, err := one(wire.Join, r, err)
	if err != nil {
		if added {
			c.removeStream(st)
		}
		return info, err
	}
	c.initStream(st, info.Seq)
	return info, nil
}

// Leave ends the user's membership of a channel and unsubscribes from it.
func (c *Client) Leave(ctx context.Context, name string) (wire.ChannelInfo, error) {
	var r wire.ChannelsReply
	err := c.Do(ctx, wire.Leave, wire.NameRequest{Channel: name}, &r)
	if err != nil && wire.ErrorCode(err) != wire.CodeNotMember {
		return wire.ChannelInfo{}, err
	}
	c.mu.Lock()
	st := c.streams[wire.ChannelTopic(name)]
	c.mu.Unlock()
	if st != nil {
		c.removeStream(st)
	}
	if err != nil {
		return wire.ChannelInfo{}, err
	}
	if len(r.Channels) == 0 {
		return wire.ChannelInfo{Name: name}, nil
	}
	return r.Channels[0], nil
}

// Post sends text to a channel and returns the stored message. When the
// message is the next one of a subscribed channel, it is delivered as an
// Event at once (its publication is then dropped as a duplicate).
func (c *Client) Post(ctx context.Context, channel, text string) (wire.Message, error) {
	var r wire.MessageReply
	if err := c.Do(ctx, wire.Post, wire.PostRequest{Channel: channel, Text: text}, &r); err != nil {
		return wire.Message{}, err
	}
	m := r.Message
	c.mu.Lock()
	if st := c.streams[wire.ChannelTopic(channel)]; st != nil && st.known && m.Seq == st.last+1 {
		c.offerLocked(st, m, c.epoch, false)
	}
	c.mu.Unlock()
	return m, nil
}

// DM sends a direct message and returns the sender's copy, numbered in the
// sender's mailbox. Like Post, it is delivered as an Event at once when it is
// the next message of the mailbox.
func (c *Client) DM(ctx context.Context, to, text string) (wire.Message, error) {
	var r wire.MessageReply
	if err := c.Do(ctx, wire.DM, wire.DMRequest{To: to, Text: text}, &r); err != nil {
		return wire.Message{}, err
	}
	m := r.Message
	c.mu.Lock()
	if c.user != "" {
		if st := c.streams[c.mailboxTopic]; st != nil && st.known && m.Seq == st.last+1 {
			c.offerLocked(st, m, c.epoch, false)
		}
	}
	c.mu.Unlock()
	return m, nil
}

// History returns stored messages, oldest first: a channel's, or with
// req.Direct the user's own direct messages.
func (c *Client) History(ctx context.Context, req wire.HistoryRequest) (*wire.HistoryReply, error) {
	var r wire.HistoryReply
	if err := c.Do(ctx, wire.History, req, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Status returns the servers' roles, epochs and log positions.
func (c *Client) Status(ctx context.Context) (*wire.StatusReply, error) {
	var r wire.StatusReply
	if err := c.Do(ctx, wire.Status, nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Ping tells the servers this user is still here.
func (c *Client) Ping(ctx context.Context) error {
	return c.Do(ctx, wire.Ping, nil, nil)
}

// one returns the single channel of a create, join or leave reply.
func one(service string, r wire.ChannelsReply, err error) (wire.ChannelInfo, error) {
	if err != nil {
		return wire.ChannelInfo{}, err
	}
	if len(r.Channels) != 1 {
		return wire.ChannelInfo{}, fmt.Errorf("%s: reply lists %d channels, want 1", service, len(r.Channels))
	}
	return r.Channels[0], nil
}
