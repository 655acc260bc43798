package console

import (
	"bytes"
	"encoding/json"
	"strings"
	"time"

	"chat/client"
	"chat/wire"
)

// event prints an incoming message.
func (s *session) event(ev client.Event) {
	if s.opts.JSON {
		s.json(nil, messageJSON(ev.Kind, ev.Message, ev.Recovered))
		return
	}
	s.out.line(s.formatMessage(ev.Message, ev.Kind == wire.EventDM))
}

// formatMessage is one message for people: "12:03:04 #general ana: hello" or
// "12:03:05 [dm] ana → bob: hi", in local time.
func (s *session) formatMessage(m wire.Message, direct bool) string {
	var b strings.Builder
	b.WriteString(m.Time.Local().Format("15:04:05"))
	if direct {
		b.WriteString(" [dm] " + m.From + " → " + m.To + ": ")
	} else {
		b.WriteString(" #" + m.Channel + " " + m.From + ": ")
	}
	// Continuation lines are indented so a message can't pass for another.
	b.WriteString(strings.ReplaceAll(m.Text, "\n", "\n    "))
	return b.String()
}

// messageJSON is the JSON line of a message event.
func messageJSON(kind string, m wire.Message, recovered bool) any {
	type channelMessage struct {
		Type      string    `json:"type"`
		Channel   string    `json:"channel"`
		From      string    `json:"from"`
		Text      string    `json:"text"`
		Seq       uint64    `json:"seq"`
		Lamport   uint64    `json:"lamport"`
		Time      time.Time `json:"time"`
		Recovered bool      `json:"recovered,omitempty"`
	}
	type directMessage struct {
		Type      string    `json:"type"`
		From      string    `json:"from"`
		To        string    `json:"to"`
		Text      string    `json:"text"`
		Seq       uint64    `json:"seq"`
		Lamport   uint64    `json:"lamport"`
		Time      time.Time `json:"time"`
		Recovered bool      `json:"recovered,omitempty"`
	}
	if kind == wire.EventDM {
		return directMessage{"dm", m.From, m.To, m.Text, m.Seq, m.Lamport, m.Time, recovered}
	}
	return channelMessage{"message", m.Channel, m.From, m.Text, m.Seq, m.Lamport, m.Time, recovered}
}

// jsonObject is an ordered list of fields.
type jsonObject []struct {
	k string
	v any
}

// json prints one JSON object: head's fields in order, then data's fields (a
// struct or map) in their own order.
func (s *session) json(head jsonObject, data any) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range head {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := marshal(f.k)
		v, err := marshal(f.v)
		if err != nil {
			v, _ = marshal(err.Error())
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	if data != nil {
		d, err := marshal(data)
		if err != nil {
			s.opts.Logger.Error("encode output", "err", err)
		} else if len(d) > 2 && d[0] == '{' {
			if len(head) > 0 {
				b.WriteByte(',')
			}
			b.Write(d[1 : len(d)-1])
		}
	}
	b.WriteByte('}')
	s.out.line(b.String())
}

// marshal is json.Marshal without HTML escaping (a terminal is no web page).
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}
