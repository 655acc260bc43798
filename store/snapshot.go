package store

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"time"

	"chat/wire"
)

// Snapshot format, version 1.
//
// After the 8-byte magic "CHATSNAP" and a version byte comes a sequence of
// chunks, each [uvarint length][bytes][CRC-32C, 4 bytes little-endian], the
// CRC chained over all chunk bytes so far, ended by a chunk of length 0.
// The chunks' bytes, concatenated, are the body (uvarint counts and
// lengths, varint seconds, strings as length and bytes):
//
//	index lamport
//	users:     count, then per user (ascending names): name hash revoked
//	mailboxes: per user, in the same order: count, then per message: from to text lamport time
//	channels:  count, then per channel (ascending names): name desc owner created
//	           members (count, ascending names), messages (count, then: from text lamport time)
//	sessions:  count, then per client, least recently used first:
//	           client req time hasErr [code message] data
//
// A time is its Unix seconds (varint) and nanoseconds (uvarint), in UTC.
const (
	snapMagic   = "CHATSNAP"
	snapVersion = 1
	chunkSize   = 64 << 10 // a chunk is flushed once it holds this much
	maxChunk    = 16 << 20 // largest chunk Restore reads
	maxString   = 1 << 20  // longest string either side accepts
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Snapshot writes the machine's whole state to w: everything Restore needs to
// build a machine that answers every query and every following command as
// this one would. The bytes depend only on the state.
func (m *Machine) Snapshot(w io.Writer) error {
	e := &encoder{w: w, buf: make([]byte, 0, chunkSize+4096)}
	if _, err := io.WriteString(w, snapMagic+string(rune(snapVersion))); err != nil {
		return fmt.Errorf("store: write snapshot: %w", err)
	}
	e.uvarint(m.index)
	e.uvarint(m.lamport)

	e.uvarint(uint64(len(m.userNames)))
	for _, name := range m.userNames {
		u := m.users[name]
		e.str(u.name)
		e.str(u.hash)
		e.time(u.revoked)
		e.maybeFlush()
	}
	for _, name := range m.userNames {
		mb := &m.users[name].mailbox
		e.uvarint(uint64(mb.len()))
		for _, b := range mb.blocks {
			for i := range b {
				x := &b[i]
				e.str(x.from)
				e.str(x.to)
				e.str(x.text)
				e.uvarint(x.lamport)
				e.time(x.time)
				e.maybeFlush()
			}
		}
	}

	e.uvarint(uint64(len(m.channelNames)))
	members := make([]string, 0)
	for _, name := range m.channelNames {
		ch := m.channels[name]
		e.str(ch.name)
		e.str(ch.desc)
		e.str(ch.owner)
		e.time(ch.created)
		members = members[:0]
		for u := range ch.members {
			members = append(members, u)
		}
		slices.Sort(members)
		e.uvarint(uint64(len(members)))
		for _, u := range members {
			e.str(u)
			e.maybeFlush()
		}
		e.uvarint(uint64(ch.msgs.len()))
		for _, b := range ch.msgs.blocks {
			for i := range b {
				x := &b[i]
				e.str(x.from)
				e.str(x.text)
				e.uvarint(x.lamport)
				e.time(x.time)
				e.maybeFlush()
			}
		}
	}

	e.uvarint(uint64(len(m.sessions)))
	for s := m.oldest; s != nil; s = s.next {
		e.str(s.client)
		e.uvarint(s.req)
		e.time(s.time)
		if s.result.Err != nil {
			e.uvarint(1)
			e.str(s.result.Err.Code)
			e.str(s.result.Err.Message)
		} else {
			e.uvarint(0)
		}
		e.raw(s.result.Data)
		e.maybeFlush()
	}

	if len(e.buf) > 0 {
		e.flush()
	}
	e.flush() // the empty chunk that ends the snapshot
	if e.err != nil {
		return fmt.Errorf("store: write snapshot: %w", e.err)
	}
	return nil
}

type encoder struct {
	w   io.Writer
	buf []byte
	crc uint32
	err error
}

func (e *encoder) uvarint(v uint64) { e.buf = binary.AppendUvarint(e.buf, v) }

func (e *encoder) str(s string) {
	if len(s) > maxString && e.err == nil {
		e.err = fmt.Errorf("a string of %d bytes is over the limit of %d", len(s), maxString)
	}
	e.uvarint(uint64(len(s)))
	e.buf = append(e.buf, s...)
}

func (e *encoder) raw(b []byte) {
	if len(b) > maxString && e.err == nil {
		e.err = fmt.Errorf("%d bytes of data are over the limit of %d", len(b), maxString)
	}
	e.uvarint(uint64(len(b)))
	e.buf = append(e.buf, b...)
}

func (e *encoder) time(t time.Time) {
	e.buf = binary.AppendVarint(e.buf, t.Unix())
	e.uvarint(uint64(t.Nanosecond()))
}

func (e *encoder) maybeFlush() {
	if len(e.buf) >= chunkSize {
		e.flush()
	}
}

// flush writes the buffered bytes as one chunk (an empty one ends the snapshot).
func (e *encoder) flush() {
	if e.err != nil {
		e.buf = e.buf[:0]
		return
	}
	var hdr [binary.MaxVarintLen64]byte
	e.crc = crc32.Update(e.crc, castagnoli, e.buf)
	e.buf = binary.LittleEndian.AppendUint32(e.buf, e.crc)
	if _, err := e.w.Write(hdr[:binary.PutUvarint(hdr[:], uint64(len(e.buf)-4))]); err != nil {
		e.err = err
	} else if _, err := e.w.Write(e.buf); err != nil {
		e.err = err
	}
	e.buf = e.buf[:0]
}

// Restore reads a snapshot written by Snapshot. It rejects input that is
// truncated, corrupt (checksums, counts, names, references) or followed by
// anything else.
func Restore(r io.Reader) (*Machine, error) {
	d := &decoder{r: bufio.NewReaderSize(r, 256<<10)}
	m := d.machine()
	if d.err != nil {
		return nil, fmt.Errorf("store: restore snapshot: %w", d.err)
	}
	return m, nil
}

// errCorrupt is wrapped by every error about the snapshot's content.
var errCorrupt = errors.New("snapshot is corrupt")

type decoder struct {
	r     *bufio.Reader
	chunk []byte // the current chunk, checksum verified
	off   int    // bytes of chunk consumed
	crc   uint32
	tmp   []byte // a string that spans chunks
	err   error
}

func (d *decoder) corrupt(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", errCorrupt, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) machine() *Machine {
	var magic [len(snapMagic) + 1]byte
	if _, err := io.ReadFull(d.r, magic[:]); err != nil || string(magic[:len(snapMagic)]) != snapMagic {
		d.err = errors.New("not a chat snapshot")
		return nil
	}
	if v := magic[len(snapMagic)]; v != snapVersion {
		d.err = fmt.Errorf("snapshot version %d, this build reads version %d", v, snapVersion)
		return nil
	}
	m := New()
	m.index = d.uvarint()
	m.lamport = d.uvarint()

	n := d.uvarint()
	m.userNames = make([]string, 0, min(n, 1<<16))
	for i := uint64(0); i < n && d.err == nil; i++ {
		u := &user{name: d.string(), hash: d.string(), revoked: d.time(), channels: make(map[string]struct{})}
		if d.err != nil {
			break
		}
		if e := wire.ValidName("user", u.name); e != nil {
			d.corrupt("%s", e.Message)
		} else if i > 0 && u.name <= m.userNames[i-1] {
			d.corrupt("user %q out of order", u.name)
		}
		m.users[u.name] = u
		m.userNames = append(m.userNames, u.name)
	}
	for _, name := range m.userNames {
		if d.err != nil {
			break
		}
		u := m.users[name]
		n := d.uvarint()
		for i := uint64(0); i < n && d.err == nil; i++ {
			x := msg{from: d.user(m), to: d.user(m), text: d.string(), lamport: d.uvarint(), time: d.time()}
			if d.err == nil && x.from != u.name && x.to != u.name {
				d.corrupt("mailbox of %q holds a message from %q to %q", u.name, x.from, x.to)
			}
			u.mailbox.add(x)
		}
	}

	n = d.uvarint()
	m.channelNames = make([]string, 0, min(n, 1<<16))
	for i := uint64(0); i < n && d.err == nil; i++ {
		ch := &channel{name: d.string(), desc: d.string(), owner: d.user(m), created: d.time(), members: make(map[string]struct{})}
		if d.err != nil {
			break
		}
		if e := wire.ValidName("channel", ch.name); e != nil {
			d.corrupt("%s", e.Message)
		} else if i > 0 && ch.name <= m.channelNames[i-1] {
			d.corrupt("channel %q out of order", ch.name)
		}
		m.channels[ch.name] = ch
		m.channelNames = append(m.channelNames, ch.name)
		k := d.uvarint()
		prev := ""
		for j := uint64(0); j < k && d.err == nil; j++ {
			name := d.user(m)
			if d.err != nil {
				break
			}
			if name <= prev {
				d.corrupt("member %q of channel %q out of order", name, ch.name)
			}
			prev = name
			ch.members[name] = struct{}{}
			m.users[name].channels[ch.name] = struct{}{}
		}
		k = d.uvarint()
		for j := uint64(0); j < k && d.err == nil; j++ {
			ch.msgs.add(msg{from: d.user(m), text: d.string(), lamport: d.uvarint(), time: d.time()})
		}
	}

	n = d.uvarint()
	for i := uint64(0); i < n && d.err == nil; i++ {
		s := &session{client: d.string(), req: d.uvarint(), time: d.time()}
		switch d.uvarint() {
		case 0:
		case 1:
			s.result.Err = &wire.Error{Code: d.string(), Message: d.string()}
		default:
			d.corrupt("bad error flag")
		}
		if data := d.bytes(d.length()); len(data) > 0 {
			s.result.Data = slices.Clone(data)
		}
		if d.err != nil {
			break
		}
		if s.client == "" || s.req == 0 || m.sessions[s.client] != nil {
			d.corrupt("bad or repeated dedupe entry for client %q", s.client)
		}
		m.sessions[s.client] = s
		m.pushNewest(s)
	}
	d.end()
	return m
}

// fill reads the next chunk; it reports whether there is one with bytes.
func (d *decoder) fill() bool {
	if d.err != nil {
		return false
	}
	n, err := binary.ReadUvarint(d.r)
	if err != nil {
		d.readErr(err)
		return false
	}
	if n > maxChunk {
		d.corrupt("a chunk of %d bytes", n)
		return false
	}
	if uint64(cap(d.chunk)) < n+4 {
		d.chunk = make([]byte, n+4)
	}
	d.chunk = d.chunk[:n+4]
	if _, err := io.ReadFull(d.r, d.chunk); err != nil {
		d.readErr(err)
		return false
	}
	d.crc = crc32.Update(d.crc, castagnoli, d.chunk[:n])
	if binary.LittleEndian.Uint32(d.chunk[n:]) != d.crc {
		d.corrupt("checksum mismatch")
		return false
	}
	d.chunk, d.off = d.chunk[:n], 0
	if n == 0 {
		d.corrupt("snapshot ends early")
		return false
	}
	return true
}

func (d *decoder) readErr(err error) {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if d.err == nil {
		d.err = err
	}
}

// end checks that every byte of the body was used and the snapshot ends here.
func (d *decoder) end() {
	if d.err != nil {
		return
	}
	if d.off != len(d.chunk) {
		d.corrupt("%d unread bytes", len(d.chunk)-d.off)
		return
	}
	n, err := binary.ReadUvarint(d.r)
	if err != nil {
		d.readErr(err)
		return
	}
	if n != 0 {
		d.corrupt("data after the end")
		return
	}
	var sum [4]byte
	if _, err := io.ReadFull(d.r, sum[:]); err != nil {
		d.readErr(err)
		return
	}
	if binary.LittleEndian.Uint32(sum[:]) != d.crc {
		d.corrupt("checksum mismatch")
		return
	}
	if _, err := d.r.ReadByte(); err != io.EOF {
		d.corrupt("data after the end")
	}
}

func (d *decoder) byte() byte {
	if d.off == len(d.chunk) && !d.fill() {
		return 0
	}
	b := d.chunk[d.off]
	d.off++
	return b
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	if v, n := binary.Uvarint(d.chunk[d.off:]); n > 0 {
		d.off += n
		return v
	} else if n < 0 {
		d.corrupt("a number overflows 64 bits")
		return 0
	}
	// The number spans chunks.
	var v uint64
	for shift := uint(0); shift < 64; shift += 7 {
		b := d.byte()
		if d.err != nil {
			return 0
		}
		if shift == 63 && b > 1 {
			break
		}
		v |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return v
		}
	}
	d.corrupt("a number overflows 64 bits")
	return 0
}

func (d *decoder) varint() int64 {
	u := d.uvarint()
	x := int64(u >> 1)
	if u&1 != 0 {
		x = ^x
	}
	return x
}

// length reads a string's length.
func (d *decoder) length() int {
	n := d.uvarint()
	if n > maxString {
		d.corrupt("a string of %d bytes", n)
		return 0
	}
	return int(n)
}

// bytes returns the next n bytes, valid until the next read.
func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if d.off+n <= len(d.chunk) {
		b := d.chunk[d.off : d.off+n]
		d.off += n
		return b
	}
	d.tmp = d.tmp[:0]
	for len(d.tmp) < n {
		if d.off == len(d.chunk) && !d.fill() {
			return nil
		}
		k := min(n-len(d.tmp), len(d.chunk)-d.off)
		d.tmp = append(d.tmp, d.chunk[d.off:d.off+k]...)
		d.off += k
	}
	return d.tmp
}

func (d *decoder) string() string { return string(d.bytes(d.length())) }

// user reads the name of an existing user and returns its canonical copy.
func (d *decoder) user(m *Machine) string {
	b := d.bytes(d.length())
	if d.err != nil {
		return ""
	}
	u := m.users[string(b)]
	if u == nil {
		d.corrupt("unknown user %q", b)
		return ""
	}
	return u.name
}

func (d *decoder) time() time.Time {
	sec, nsec := d.varint(), d.uvarint()
	if d.err != nil {
		return time.Time{}
	}
	if sec < minUnix || sec > maxUnix || nsec >= 1e9 {
		d.corrupt("time out of range")
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}
