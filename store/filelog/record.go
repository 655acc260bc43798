package filelog

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"

	"chat/store"
)

// MaxPayload is the largest payload of one record. A header that claims
// more is corrupt.
const MaxPayload = 16 << 20

// headerSize is the size of a record without its payload.
const headerSize = 25

// magic starts every record. 0xFF never occurs in UTF-8 and JSON escapes
// 0x00, so it cannot occur inside a JSON payload.
var magic = [4]byte{0xFF, 0x00, 'L', 'G'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// record is one decoded record.
type record struct {
	epoch   uint64
	kind    int
	leader  uint32
	payload []byte // aliases the buffer it was decoded from
}

// appendRecord appends the encoding of one record to dst.
func appendRecord(dst []byte, epoch uint64, kind int, leader uint32, payload []byte) []byte {
	start := len(dst)
	dst = append(dst, magic[:]...)
	dst = binary.LittleEndian.AppendUint32(dst, 0) // CRC, filled below
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(payload)))
	dst = binary.LittleEndian.AppendUint64(dst, epoch)
	dst = append(dst, byte(kind))
	dst = binary.LittleEndian.AppendUint32(dst, leader)
	dst = append(dst, payload...)
	binary.LittleEndian.PutUint32(dst[start+4:], crc32.Checksum(dst[start+8:], castagnoli))
	return dst
}

// verdict is what a reader can tell about the bytes at one offset.
type verdict int

const (
	recValid      verdict = iota // a complete record that validates
	recIncomplete                // plausible so far, but the file ends inside it
	recBad                       // can never become a valid record
	recEnd                       // no bytes at all
)

// checkHeader judges the first bytes of a candidate record, b (fewer than
// headerSize bytes when the file ends sooner). It returns the record's
// total size when the header is complete and plausible.
func checkHeader(b []byte) (total int, v verdict) {
	if len(b) == 0 {
		return 0, recEnd
	}
	if len(b) < len(magic) {
		if bytes.Equal(b, magic[:len(b)]) {
			return 0, recIncomplete
		}
		return 0, recBad
	}
	if [4]byte(b[:4]) != magic {
		return 0, recBad
	}
	if len(b) < headerSize {
		return 0, recIncomplete
	}
	n := binary.LittleEndian.Uint32(b[8:])
	epoch := binary.LittleEndian.Uint64(b[12:])
	kind := int(b[20])
	switch {
	case n > MaxPayload, epoch == 0:
		return 0, recBad
	case kind == store.KindData:
	case kind == store.KindBarrier && n == 0:
	default:
		return 0, recBad
	}
	return headerSize + int(n), recValid
}

// decodeRecord decodes a complete candidate b whose header checkHeader
// accepted (len(b) == total); it reports false on a CRC mismatch.
func decodeRecord(b []byte) (record, bool) {
	if binary.LittleEndian.Uint32(b[4:]) != crc32.Checksum(b[8:], castagnoli) {
		return record{}, false
	}
	return record{
		epoch:   binary.LittleEndian.Uint64(b[12:]),
		kind:    int(b[20]),
		leader:  binary.LittleEndian.Uint32(b[21:]),
		payload: b[headerSize:],
	}, true
}
