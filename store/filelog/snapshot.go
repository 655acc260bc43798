package filelog

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"chat/store"
)

const (
	snapKeep       = 2            // snapshots kept
	snapTrailer    = 16           // body length u64, CRC-32C u32, magic
	snapMaxHeader  = 4 << 10      // longest header line accepted
	snapTempPrefix = ".tmp-"      // temporary files, renamed when complete
	snapTempMaxAge = time.Hour    // older temporary files are leftovers of a crash
	snapVersion    = 1            // header version
	snapNameDigits = 20           // zero padding of file names
	snapMagic      = "\xff\x00SN" // last 4 bytes of a complete snapshot
)

// snapHeader is the first line of a snapshot file.
type snapHeader struct {
	Version int            `json:"version"`
	Pos     store.Position `json:"pos"`
	Time    time.Time      `json:"time"`
}

// SaveSnapshot stores a snapshot of the state after the entry at pos: it
// writes a temporary file (header line, the body from write, trailer),
// fsyncs it, renames it to snapshots/<pos.Index>, fsyncs the directory and
// deletes all but the newest two snapshots.
func (l *Log) SaveSnapshot(pos store.Position, write func(io.Writer) error) error {
	dir := filepath.Join(l.dir, snapshotName)
	final := filepath.Join(dir, fmt.Sprintf("%0*d", snapNameDigits, pos.Index))
	if l.isClosed() {
		return fmt.Errorf("filelog: save snapshot %s: %w", final, os.ErrClosed)
	}
	f, err := os.CreateTemp(dir, snapTempPrefix+"*")
	if err != nil {
		return fmt.Errorf("filelog: save snapshot %s: %w", final, err)
	}
	tmp := f.Name()
	if err := writeSnapshot(f, pos, write); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("filelog: save snapshot %s: %w", final, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("filelog: save snapshot %s: %w", final, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("filelog: save snapshot %s: %w", final, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("filelog: save snapshot %s: %w", final, err)
	}
	l.logger.Info("snapshot saved", "index", pos.Index, "offset", pos.Offset)
	l.pruneSnapshots(dir)
	return nil
}

// writeSnapshot writes a whole snapshot file to f and fsyncs it.
func writeSnapshot(f *os.File, pos store.Position, write func(io.Writer) error) error {
	head, err := json.Marshal(snapHeader{Version: snapVersion, Pos: pos, Time: time.Now().UTC()})
	if err != nil {
		return err
	}
	head = append(head, '\n')
	crc := crc32.New(castagnoli)
	crc.Write(head)
	bw := bufio.NewWriterSize(f, 64<<10)
	if _, err := bw.Write(head); err != nil {
		return err
	}
	body := &hashWriter{w: bw, h: crc}
	if err := write(body); err != nil {
		return fmt.Errorf("write body: %w", err)
	}
	var tr [snapTrailer]byte
	binary.LittleEndian.PutUint64(tr[0:], uint64(body.n))
	binary.LittleEndian.PutUint32(tr[8:], crc.Sum32())
	copy(tr[12:], snapMagic)
	if _, err := bw.Write(tr[:]); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return f.Sync()
}

type hashWriter struct {
	w io.Writer
	h hash.Hash32
	n int64
}

func (w *hashWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// snapshotNames returns the complete snapshots in dir, newest first.
func snapshotNames(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		n := e.Name()
		if len(n) == snapNameDigits && e.Type().IsRegular() {
			if _, err := strconv.ParseUint(n, 10, 64); err == nil {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names) // zero-padded: lexical order is numeric order
	slices.Reverse(names)
	return names, nil
}

// pruneSnapshots deletes all but the newest snapKeep snapshots, and
// temporary files old enough to be a crashed writer's.
func (l *Log) pruneSnapshots(dir string) {
	names, err := snapshotNames(dir)
	if err != nil {
		l.logger.Warn("list snapshots", "dir", dir, "err", err)
		return
	}
	for _, n := range names[min(snapKeep, len(names)):] {
		if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
			l.logger.Warn("remove old snapshot", "name", n, "err", err)
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), snapTempPrefix) {
			continue
		}
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > snapTempMaxAge {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// LatestSnapshot opens the newest snapshot that validates (its header,
// length and CRC); ok is false when there is none. r yields the body that
// SaveSnapshot's write produced; the caller closes it.
func (l *Log) LatestSnapshot() (pos store.Position, r io.ReadCloser, ok bool, err error) {
	dir := filepath.Join(l.dir, snapshotName)
	if l.isClosed() {
		return store.Position{}, nil, false, fmt.Errorf("filelog: latest snapshot in %s: %w", dir, os.ErrClosed)
	}
	names, err := snapshotNames(dir)
	if err != nil {
		return store.Position{}, nil, false, fmt.Errorf("filelog: latest snapshot: list %s: %w", dir, err)
	}
	for _, n := range names {
		path := filepath.Join(dir, n)
		pos, r, err := openSnapshot(path)
		if err != nil {
			l.logger.Warn("skipping a snapshot that does not validate", "path", path, "err", err)
			continue
		}
		return pos, r, true, nil
	}
	return store.Position{}, nil, false, nil
}

type snapReader struct {
	*io.SectionReader
	f *os.File
}

func (s snapReader) Close() error { return s.f.Close() }

// openSnapshot validates the snapshot file at path and returns its
// position and a reader of its body.
func openSnapshot(path string) (store.Position, io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return store.Position{}, nil, err
	}
	pos, body, err := checkSnapshot(f)
	if err != nil {
		f.Close()
		return store.Position{}, nil, err
	}
	return pos, snapReader{SectionReader: body, f: f}, nil
}

func checkSnapshot(f *os.File) (store.Position, *io.SectionReader, error) {
	info, err := f.Stat()
	if err != nil {
		return store.Position{}, nil, err
	}
	size := info.Size()
	if size < snapTrailer+2 {
		return store.Position{}, nil, fmt.Errorf("%d bytes: too short", size)
	}
	var tr [snapTrailer]byte
	if _, err := f.ReadAt(tr[:], size-snapTrailer); err != nil {
		return store.Position{}, nil, fmt.Errorf("read trailer: %w", err)
	}
	if string(tr[12:]) != snapMagic {
		return store.Position{}, nil, errors.New("no trailer: incomplete")
	}
	bodyLen := binary.LittleEndian.Uint64(tr[0:])
	want := binary.LittleEndian.Uint32(tr[8:])

	headBuf := make([]byte, min(size-snapTrailer, snapMaxHeader))
	if _, err := f.ReadAt(headBuf, 0); err != nil {
		return store.Position{}, nil, fmt.Errorf("read header: %w", err)
	}
	nl := bytes.IndexByte(headBuf, '\n')
	if nl < 0 {
		return store.Position{}, nil, errors.New("no header line")
	}
	var h snapHeader
	if err := json.Unmarshal(headBuf[:nl], &h); err != nil {
		return store.Position{}, nil, fmt.Errorf("header: %w", err)
	}
	if h.Version != snapVersion {
		return store.Position{}, nil, fmt.Errorf("header: version %d, want %d", h.Version, snapVersion)
	}
	headLen := int64(nl + 1)
	if bodyLen > uint64(size) || headLen+int64(bodyLen)+snapTrailer != size {
		return store.Position{}, nil, fmt.Errorf("length: header %d + body %d + trailer %d != size %d", headLen, bodyLen, snapTrailer, size)
	}
	crc := crc32.New(castagnoli)
	if _, err := io.Copy(crc, io.NewSectionReader(f, 0, size-snapTrailer)); err != nil {
		return store.Position{}, nil, fmt.Errorf("read: %w", err)
	}
	if got := crc.Sum32(); got != want {
		return store.Position{}, nil, fmt.Errorf("CRC %08x, want %08x", got, want)
	}
	return h.Pos, io.NewSectionReader(f, headLen, int64(bodyLen)), nil
}
