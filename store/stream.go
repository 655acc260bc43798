package store

import (
	"time"

	"chat/wire"
)

// msg is one stored message: a channel's (to empty) or a direct message.
// from and to share the user's canonical name string, so a message costs
// its fixed 80 bytes plus its text.
type msg struct {
	from    string
	to      string
	text    string
	lamport uint64
	time    time.Time // UTC, no monotonic reading
}

// blockSize is the number of messages in each full block of a stream.
const blockSize = 1024

// stream is a sequence of messages numbered from Seq 1, as fixed-size blocks:
// appending never copies more than one block, and message i is found by
// arithmetic. The first block grows like a slice so that a stream of a few
// messages stays small.
type stream struct {
	blocks [][]msg // all full (blockSize) but the last
}

func (s *stream) len() int {
	k := len(s.blocks)
	if k == 0 {
		return 0
	}
	return (k-1)*blockSize + len(s.blocks[k-1])
}

func (s *stream) add(x msg) {
	k := len(s.blocks)
	if k == 0 || len(s.blocks[k-1]) == blockSize {
		c := blockSize
		if k == 0 {
			c = 4
		}
		s.blocks = append(s.blocks, make([]msg, 0, c))
		k++
	}
	b := s.blocks[k-1]
	if len(b) == cap(b) { // only the first block grows, and never past blockSize
		nb := make([]msg, len(b), min(2*cap(b), blockSize))
		copy(nb, b)
		b = nb
	}
	s.blocks[k-1] = append(b, x)
}

// at returns message i (0-based: its Seq is i+1); 0 <= i < s.len().
func (s *stream) at(i int) *msg {
	return &s.blocks[i/blockSize][i%blockSize]
}

// message returns message i as the wire shows it; channel is empty for a mailbox.
func (s *stream) message(i int, channel string) wire.Message {
	x := s.at(i)
	return wire.Message{
		Channel: channel,
		From:    x.from,
		To:      x.to,
		Text:    x.text,
		Seq:     uint64(i) + 1,
		Lamport: x.lamport,
		Time:    x.time,
	}
}
