package filelog

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"chat/store"
)

func TestRecordFormat(t *testing.T) {
	got := appendRecord(nil, 0x0102, store.KindData, 0, []byte(`{}`))
	rest := "02000000" + "0201000000000000" + "01" + "00000000" + "7b7d"
	restBytes, _ := hex.DecodeString(rest)
	crc := crc32.Checksum(restBytes, crc32.MakeTable(crc32.Castagnoli))
	want := append([]byte{0xFF, 0x00, 'L', 'G', byte(crc), byte(crc >> 8), byte(crc >> 16), byte(crc >> 24)}, restBytes...)
	if !bytes.Equal(got, want) {
		t.Fatalf("record = % x\n   want % x", got, want)
	}
	barrier := appendRecord(nil, 7, store.KindBarrier, 3, nil)
	if len(barrier) != headerSize || barrier[20] != store.KindBarrier || barrier[21] != 3 {
		t.Fatalf("barrier = % x", barrier)
	}
}

func TestOpenCreatesLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "shared")
	l := openLog(t, dir)
	for _, p := range []string{logName, epochsName, snapshotName} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Errorf("after Open: %v", err)
		}
	}
	if e, err := l.Epoch(); err != nil || e != 0 {
		t.Fatalf("Epoch() = %d, %v; want 0", e, err)
	}
	if _, err := Open(filepath.Join(dir, logName, "x"), nil); err == nil || !strings.Contains(err.Error(), "filelog: open") {
		t.Fatalf("Open under a file: err = %v", err)
	}
}

func TestAppendReadRoundTripAndTail(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir)
	claim(t, l, 1, 3)
	appendOK(t, l, 1, `{"op":"a"}`)
	appendOK(t, l, 1, `{"op":"b"}`, `{"op":"c"}`, ``)

	// Another server, with its own descriptors.
	follower := openLog(t, dir)
	r := openReader(t, follower, store.Position{})
	got := drain(t, r)
	checkEntries(t, got, 1, "B1/3", `1:{"op":"a"}`, `1:{"op":"b"}`, `1:{"op":"c"}`, `1:`)
	if end := got[len(got)-1].Pos; end.Offset != logSize(t, dir) || end.MaxEp != 1 {
		t.Fatalf("last Pos = %+v; want the end of the file (%d), MaxEp 1", end, logSize(t, dir))
	}
	if got[0].Payload != nil || got[1].Leader != 0 {
		t.Fatalf("barrier payload %q, data leader %d", got[0].Payload, got[1].Leader)
	}

	// Tail: the reader at io.EOF sees what is appended later.
	appendOK(t, l, 1, `{"op":"d"}`)
	checkEntries(t, drain(t, r), 6, `1:{"op":"d"}`)
	if e, err := follower.Epoch(); err != nil || e != 1 {
		t.Fatalf("follower Epoch() = %d, %v; want 1", e, err)
	}
	// Payloads do not alias the reader's buffer.
	got[1].Payload[0] = 'X'
	checkEntries(t, drain(t, openReader(t, follower, store.Position{}))[1:2], 2, `1:{"op":"a"}`)
}

func TestAppendRejects(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir)
	if err := l.Append(1, bs("x")); err == nil || !strings.Contains(err.Error(), "not claimed") {
		t.Fatalf("Append without a claim: %v", err)
	}
	claim(t, l, 1, 1)
	if err := l.Append(2, bs("x")); err == nil || !strings.Contains(err.Error(), "not claimed") {
		t.Fatalf("Append of another epoch: %v", err)
	}
	if err := l.Append(1, [][]byte{[]byte("a\xff\x00LGb")}); err == nil || !strings.Contains(err.Error(), "magic") {
		t.Fatalf("Append of a payload holding the magic: %v", err)
	}
	if err := l.Append(1, [][]byte{make([]byte, MaxPayload+1)}); err == nil {
		t.Fatal("Append of an oversized payload: no error")
	}
	if err := l.Append(1, nil); err != nil {
		t.Fatalf("empty Append: %v", err)
	}
	checkEntries(t, drain(t, openReader(t, l, store.Position{})), 1, "B1/1")

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := l.Append(1, bs("x")); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	if _, err := l.Reader(store.Position{}); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Reader after Close: %v", err)
	}
}

func TestCloseClosesReaders(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	r, err := l.Reader(store.Position{})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := r.Next(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Next after the Log closed: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close of a reader its Log closed: %v", err)
	}
}

// TestTornTail cuts the last record at every byte offset: a reader returns
// exactly the committed prefix, waits at the torn bytes, and once a new
// leader appends after them it skips them and returns the new records.
func TestTornTail(t *testing.T) {
	src := t.TempDir()
	l := openLog(t, src)
	claim(t, l, 1, 1)
	appendOK(t, l, 1, `{"op":"a"}`)
	appendOK(t, l, 1, `{"op":"b"}`)
	before := logSize(t, src)
	appendOK(t, l, 1, `{"op":"c","text":"the torn one"}`)
	full, err := os.ReadFile(filepath.Join(src, logName))
	if err != nil {
		t.Fatal(err)
	}
	l.Close()

	for cut := before; cut < int64(len(full)); cut++ {
		dir := t.TempDir()
		w := openLog(t, dir)
		rawAppend(t, dir, full[:cut])
		os.WriteFile(w.epochPath(1), []byte("{}\n"), 0o644)

		r := openReader(t, w, store.Position{})
		got := drain(t, r)
		checkEntries(t, got, 1, "B1/1", `1:{"op":"a"}`, `1:{"op":"b"}`)
		if got[2].Pos.Offset != before {
			t.Fatalf("cut %d: last Pos.Offset = %d; want %d", cut, got[2].Pos.Offset, before)
		}

		// A new leader appends after the torn bytes.
		claim(t, w, 2, 2)
		appendOK(t, w, 2, `{"op":"d"}`)
		checkEntries(t, drain(t, r), 4, "B2/2", `2:{"op":"d"}`)
		checkEntries(t, drain(t, openReader(t, w, store.Position{})), 1,
			"B1/1", `1:{"op":"a"}`, `1:{"op":"b"}`, "B2/2", `2:{"op":"d"}`)
		if t.Failed() {
			t.Fatalf("cut at %d of %d", cut, len(full))
		}
		w.Close()
	}
}

func TestGarbageInTheMiddle(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 3000)
	for i := range random {
		random[i] = byte(rng.UintN(256))
	}
	badCRC := appendRecord(nil, 1, store.KindData, 0, []byte(`{"op":"bad crc"}`))
	badCRC[len(badCRC)-2] ^= 1
	// A plausible header that claims a long payload: it swallows what follows.
	longHeader := appendRecord(nil, 1, store.KindData, 0, nil)
	longHeader[8], longHeader[9], longHeader[10] = 0, 0, 1 // 64 KiB payload
	zeroEpoch := appendRecord(nil, 0, store.KindData, 0, []byte(`{}`))
	badKind := appendRecord(nil, 1, 9, 0, []byte(`{}`))

	cases := []struct {
		name    string
		garbage []byte
	}{
		{"random", random},
		{"zeros", make([]byte, 5000)},
		{"magic then zeros", append(magic[:], make([]byte, 100)...)},
		{"partial magic", magic[:3]},
		{"bad crc", badCRC},
		{"long header", longHeader},
		{"header only", appendRecord(nil, 1, store.KindData, 0, []byte(`{"op":"x"}`))[:headerSize]},
		{"epoch 0", zeroEpoch},
		{"unknown kind", badKind},
		{"many magics", bytes.Repeat(magic[:], 300)},
		// The next magic straddles the end of the resync scan's first read.
		{"zeros 64K-2", make([]byte, readChunk-2)},
		{"zeros 64K-1", make([]byte, readChunk-1)},
		{"zeros 64K", make([]byte, readChunk)},
		{"zeros 200K", make([]byte, 200<<10)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l := openLog(t, dir)
			rawAppend(t, dir, tc.garbage) // at the very start, too
			claim(t, l, 1, 1)
			appendOK(t, l, 1, `{"op":"a"}`, `{"op":"b"}`)
			r := openReader(t, openLog(t, dir), store.Position{})
			checkEntries(t, drain(t, r), 1, "B1/1", `1:{"op":"a"}`, `1:{"op":"b"}`)

			// Garbage at the tail: the reader waits; it may be a record in progress.
			rawAppend(t, dir, tc.garbage)
			checkEntries(t, drain(t, r), 4)
			// A valid record after it: the garbage is skipped.
			appendOK(t, l, 1, `{"op":"c"}`)
			rawAppend(t, dir, tc.garbage)
			rawAppend(t, dir, tc.garbage)
			appendOK(t, l, 1, `{"op":"d"}`, `{"op":"e"}`)
			checkEntries(t, drain(t, r), 4, `1:{"op":"c"}`, `1:{"op":"d"}`, `1:{"op":"e"}`)
			checkEntries(t, drain(t, openReader(t, l, store.Position{})), 1,
				"B1/1", `1:{"op":"a"}`, `1:{"op":"b"}`, `1:{"op":"c"}`, `1:{"op":"d"}`, `1:{"op":"e"}`)
		})
	}
}

// TestFencing is the stale leader: A leads epoch 1, B claims epoch 2, and
// nothing A writes after that is acknowledged or read.
func TestFencing(t *testing.T) {
	dir := t.TempDir()
	a, b, c := openLog(t, dir), openLog(t, dir), openLog(t, dir)
	r := openReader(t, c, store.Position{})

	claim(t, a, 1, 1)
	appendOK(t, a, 1, `{"op":"a1"}`)
	appendOK(t, a, 1, `{"op":"a2"}`)
	checkEntries(t, drain(t, r), 1, "B1/1", `1:{"op":"a1"}`, `1:{"op":"a2"}`)

	claim(t, b, 2, 2)
	if err := a.Append(1, bs(`{"op":"a3"}`)); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("A.Append after B's claim: %v; want ErrFenced", err)
	}
	// A paused leader's write that lands after B's barrier (A's own check
	// refuses to write now, so write it as A would have).
	rawAppend(t, dir, appendRecord(nil, 1, store.KindData, 0, []byte(`{"op":"stale"}`)))
	appendOK(t, b, 2, `{"op":"b1"}`)
	checkEntries(t, drain(t, r), 4, "B2/2", `2:{"op":"b1"}`)
	checkEntries(t, drain(t, openReader(t, a, store.Position{})), 1,
		"B1/1", `1:{"op":"a1"}`, `1:{"op":"a2"}`, "B2/2", `2:{"op":"b1"}`)

	// Claims: an existing epoch is ErrClaimed, a gap is refused.
	for _, l := range []*Log{a, b, c} {
		if err := l.Claim(2, 9); !errors.Is(err, store.ErrClaimed) {
			t.Fatalf("Claim(2) again: %v; want ErrClaimed", err)
		}
		if e, err := l.Epoch(); err != nil || e != 2 {
			t.Fatalf("Epoch() = %d, %v; want 2", e, err)
		}
	}
	if err := a.Claim(4, 1); err == nil || errors.Is(err, store.ErrClaimed) {
		t.Fatalf("Claim(4) with newest 2: %v; want a plain error", err)
	}
	if err := a.Append(1, bs(`{"op":"a4"}`)); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("A.Append again: %v; want ErrFenced", err)
	}

	// A comes back as leader of epoch 3: now B is the stale one.
	claim(t, a, 3, 1)
	appendOK(t, a, 3, `{"op":"a5"}`)
	if err := b.Append(2, bs(`{"op":"b2"}`)); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("B.Append after A's claim of 3: %v; want ErrFenced", err)
	}
	checkEntries(t, drain(t, r), 6, "B3/1", `3:{"op":"a5"}`)
}

// TestFencedAfterWrite is the window the check after the write exists for:
// B claims while A's batch is being made durable. A must not acknowledge;
// the records, being before B's barrier, are returned by every reader.
func TestFencedAfterWrite(t *testing.T) {
	dir := t.TempDir()
	a, b := openLog(t, dir), openLog(t, dir)
	claim(t, a, 1, 1)
	a.testHookAfterSync = func() { claim(t, b, 2, 2) }
	if err := a.Append(1, bs(`{"op":"x"}`, `{"op":"y"}`)); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("Append with a claim during the write: %v; want ErrFenced", err)
	}
	a.testHookAfterSync = nil
	appendOK(t, b, 2, `{"op":"z"}`)
	checkEntries(t, drain(t, openReader(t, b, store.Position{})), 1,
		"B1/1", `1:{"op":"x"}`, `1:{"op":"y"}`, "B2/2", `2:{"op":"z"}`)
}

func TestClaimRace(t *testing.T) {
	dir := t.TempDir()
	const servers = 3
	logs := make([]*Log, servers)
	for i := range logs {
		logs[i] = openLog(t, dir)
	}
	for epoch := uint64(1); epoch <= 10; epoch++ {
		start := make(chan struct{})
		errs := make([]error, servers)
		var wg sync.WaitGroup
		for i, l := range logs {
			wg.Go(func() {
				<-start
				errs[i] = l.Claim(epoch, i+1)
			})
		}
		close(start)
		wg.Wait()
		wins := 0
		for i, err := range errs {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, store.ErrClaimed):
				t.Fatalf("epoch %d, server %d: %v", epoch, i+1, err)
			}
		}
		if wins != 1 {
			t.Fatalf("epoch %d: %d winners (%v)", epoch, wins, errs)
		}
	}
	got := drain(t, openReader(t, logs[0], store.Position{}))
	if len(got) != 10 {
		t.Fatalf("barriers = %q; want 10", describe(got))
	}
}

// TestReaderResume reads a log with every kind of skip, then reopens a
// reader at each entry's position: it must continue exactly as the first.
func TestReaderResume(t *testing.T) {
	dir := t.TempDir()
	a, b, c := openLog(t, dir), openLog(t, dir), openLog(t, dir)
	claim(t, a, 1, 1)
	appendOK(t, a, 1, `{"op":"a1"}`, `{"op":"a2"}`)
	claim(t, b, 2, 2)
	rawAppend(t, dir, appendRecord(nil, 1, store.KindData, 0, []byte(`{"op":"stale1"}`)))
	rawAppend(t, dir, []byte("\x00\x00garbage\xff"))
	appendOK(t, b, 2, `{"op":"b1"}`)
	rawAppend(t, dir, appendRecord(nil, 1, store.KindBarrier, 7, nil)) // an old barrier: skipped
	appendOK(t, b, 2, `{"op":"b2"}`)
	rawAppend(t, dir, appendRecord(nil, 2, store.KindBarrier, 8, nil)) // a repeated barrier: skipped
	claim(t, c, 3, 3)
	rawAppend(t, dir, appendRecord(nil, 2, store.KindData, 0, []byte(`{"op":"stale2"}`)))
	appendOK(t, c, 3, `{"op":"c1"}`)

	all := drain(t, openReader(t, a, store.Position{}))
	checkEntries(t, all, 1, "B1/1", `1:{"op":"a1"}`, `1:{"op":"a2"}`, "B2/2", `2:{"op":"b1"}`,
		`2:{"op":"b2"}`, "B3/3", `3:{"op":"c1"}`)
	for i, e := range all {
		rest := drain(t, openReader(t, b, e.Pos))
		if !reflect.DeepEqual(rest, all[i+1:]) && !(len(rest) == 0 && i == len(all)-1) {
			t.Fatalf("resumed after entry %d (%+v):\n got %q\nwant %q", e.Index, e.Pos, describe(rest), describe(all[i+1:]))
		}
	}
	if _, err := a.Reader(store.Position{Offset: -1}); err == nil {
		t.Fatal("Reader at a negative offset: no error")
	}
}

func TestSnapshots(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir)
	if _, _, ok, err := l.LatestSnapshot(); ok || err != nil {
		t.Fatalf("LatestSnapshot of an empty log: ok %v, err %v", ok, err)
	}
	body := func(s string) func(io.Writer) error {
		return func(w io.Writer) error { _, err := io.WriteString(w, s); return err }
	}
	latest := func(wantPos store.Position, wantBody string) {
		t.Helper()
		pos, r, ok, err := openLog(t, dir).LatestSnapshot()
		if err != nil || !ok {
			t.Fatalf("LatestSnapshot: ok %v, err %v", ok, err)
		}
		defer r.Close()
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if pos != wantPos || string(b) != wantBody {
			t.Fatalf("LatestSnapshot = %+v %q; want %+v %q", pos, b, wantPos, wantBody)
		}
	}

	p5 := store.Position{Index: 5, Offset: 500, MaxEp: 1}
	p9 := store.Position{Index: 9, Offset: 900, MaxEp: 2}
	p12 := store.Position{Index: 12, Offset: 1200, MaxEp: 2}
	if err := l.SaveSnapshot(p5, body("state five\n{\"x\":1}")); err != nil {
		t.Fatal(err)
	}
	latest(p5, "state five\n{\"x\":1}")
	big := strings.Repeat("0123456789", 20000)
	if err := l.SaveSnapshot(p9, body(big)); err != nil {
		t.Fatal(err)
	}
	latest(p9, big)

	// A write error leaves nothing behind.
	boom := errors.New("boom")
	if err := l.SaveSnapshot(p12, func(io.Writer) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("SaveSnapshot with a failing writer: %v", err)
	}
	names, _ := filepath.Glob(filepath.Join(dir, snapshotName, "*"))
	hidden, _ := filepath.Glob(filepath.Join(dir, snapshotName, ".*"))
	if len(names) != 2 || len(hidden) != 0 {
		t.Fatalf("snapshot files = %q %q; want two", names, hidden)
	}

	// A corrupt newest snapshot: fall back to the previous one.
	newest := filepath.Join(dir, snapshotName, "00000000000000000009")
	raw, _ := os.ReadFile(newest)
	raw[len(raw)/2] ^= 0x20
	os.WriteFile(newest, raw, 0o644)
	latest(p5, "state five\n{\"x\":1}")
	// A partial one (no trailer) too.
	os.WriteFile(newest, raw[:len(raw)-5], 0o644)
	latest(p5, "state five\n{\"x\":1}")
	os.WriteFile(newest, nil, 0o644)
	latest(p5, "state five\n{\"x\":1}")

	// Only the newest two are kept.
	if err := l.SaveSnapshot(p12, body("twelve")); err != nil {
		t.Fatal(err)
	}
	latest(p12, "twelve")
	names, _ = filepath.Glob(filepath.Join(dir, snapshotName, "*"))
	if len(names) != 2 || filepath.Base(names[0]) != "00000000000000000009" {
		t.Fatalf("snapshot files = %q; want 9 and 12", names)
	}

	// The position resumes a reader: a snapshot saved at an entry's Pos.
	claim(t, l, 1, 1)
	appendOK(t, l, 1, `{"op":"a"}`)
	es := drain(t, openReader(t, l, store.Position{}))
	if err := l.SaveSnapshot(es[1].Pos, body("after a")); err != nil {
		t.Fatal(err)
	}
	// Index 2 is older than 9 and 12, so it is pruned at once: resume from its Pos directly.
	appendOK(t, l, 1, `{"op":"b"}`)
	checkEntries(t, drain(t, openReader(t, l, es[1].Pos)), 3, `1:{"op":"b"}`)
}

func TestEpochFromDirectory(t *testing.T) {
	dir := t.TempDir()
	a := openLog(t, dir)
	for e := uint64(1); e <= 3; e++ {
		claim(t, a, e, 1)
	}
	os.WriteFile(filepath.Join(dir, epochsName, "junk"), nil, 0o644)
	b := openLog(t, dir)
	if e, err := b.Epoch(); err != nil || e != 3 {
		t.Fatalf("Epoch() of a new Log = %d, %v; want 3", e, err)
	}
	claim(t, a, 4, 1)
	if e, err := b.Epoch(); err != nil || e != 4 {
		t.Fatalf("Epoch() after another's claim = %d, %v; want 4", e, err)
	}
	if err := b.Claim(0, 1); err == nil {
		t.Fatal("Claim(0): no error")
	}
	if err := b.Claim(5, -1); err == nil {
		t.Fatal("Claim with a negative leader: no error")
	}
}

// TestRecordInProgress splits a batch at every byte (and the rest once
// more), as a follower tailing a write in progress sees it: the reader
// returns the records already complete, waits at the partial one, and
// returns it once it is complete. It never skips bytes that are merely not
// written yet, also when it is resynchronising after a torn region. The
// epoch and leader fields hold the magic, to tempt the resync scan.
func TestRecordInProgress(t *testing.T) {
	const epoch = 0x474C00FF // little-endian: FF 00 4C 47, the magic
	var batch []byte
	var ends []int // where each record ends
	var all []string
	for _, p := range []string{`{"op":"a","text":"long enough"}`, "barrier", `{"op":"bb"}`, ``, `{"op":"dddd"}`} {
		if p == "barrier" {
			batch = appendRecord(batch, epoch, store.KindBarrier, 0x474C00FF, nil)
			all = append(all, fmt.Sprintf("B%d/%d", epoch, 0x474C00FF))
		} else {
			batch = appendRecord(batch, epoch, store.KindData, 0, []byte(p))
			all = append(all, fmt.Sprintf("%d:%s", epoch, p))
		}
		ends = append(ends, len(batch))
	}
	complete := func(n int) int { // records complete in batch[:n]
		c := 0
		for _, e := range ends {
			if e <= n {
				c++
			}
		}
		return c
	}
	torn := appendRecord(nil, 7, store.KindData, 0, []byte(`{"op":"torn","text":"xxxxxxxxxxxxxxxxxxxx"}`))
	before := []struct {
		name string
		b    []byte
	}{
		{"clean", nil},
		{"torn header", torn[:headerSize-3]},
		{"torn payload", torn[:len(torn)-5]},
		{"partial magic", magic[:2]},
		{"zeros", make([]byte, 40)},
	}
	for _, tc := range before {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for split := 0; split < len(batch); split++ {
				split2 := split + (len(batch)-split)/2
				path := filepath.Join(dir, fmt.Sprint(split))
				w, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
				if err != nil {
					t.Fatal(err)
				}
				defer w.Close()
				fr, err := os.Open(path)
				if err != nil {
					t.Fatal(err)
				}
				r := newReader(fr, store.Position{}, testLogger(t))
				defer r.Close()
				w.Write(tc.b)
				checkEntries(t, drain(t, r), 1)
				prev := 0
				for _, cut := range []int{split, split2, len(batch)} {
					w.Write(batch[prev:cut])
					got := drain(t, r)
					if d, want := describe(got), all[complete(prev):complete(cut)]; !reflect.DeepEqual(d, want) && len(d)+len(want) > 0 {
						t.Fatalf("pieces [0,%d) [%d,%d) [%d,%d): after byte %d: entries %q; want %q",
							split, split, split2, split2, len(batch), cut, d, want)
					}
					prev = cut
				}
			}
		})
	}
}

// TestClaimFencedBeforeBarrier: B creates its claim file for epoch 2 and
// pauses before its barrier; C claims 3 and writes. B's late barrier is
// skipped by readers, and B's Claim says at once that it leads nothing.
func TestClaimFencedBeforeBarrier(t *testing.T) {
	dir := t.TempDir()
	a, b, c := openLog(t, dir), openLog(t, dir), openLog(t, dir)
	claim(t, a, 1, 1)
	appendOK(t, a, 1, `{"op":"a1"}`)
	b.testHookBeforeBarrier = func() {
		claim(t, c, 3, 3)
		appendOK(t, c, 3, `{"op":"c1"}`)
	}
	if err := b.Claim(2, 2); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("Claim overtaken before its barrier: %v; want ErrFenced", err)
	}
	if err := b.Append(2, bs(`{"op":"b1"}`)); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("Append after that Claim: %v; want ErrFenced", err)
	}
	checkEntries(t, drain(t, openReader(t, a, store.Position{})), 1, "B1/1", `1:{"op":"a1"}`, "B3/3", `3:{"op":"c1"}`)
}

// TestCorruptLengthIsCheap: a header that claims a huge payload does not
// make a reader allocate it before the bytes exist.
func TestCorruptLengthIsCheap(t *testing.T) {
	h := appendRecord(nil, 1, store.KindData, 0, nil)
	h[8], h[9], h[10], h[11] = 0, 0, 0, 1 // MaxPayload
	file := &memFile{b: h}
	r := newReader(file, store.Position{}, testLogger(t))
	if _, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("Next = %v; want io.EOF", err)
	}
	if cap(r.buf) > 2*readChunk {
		t.Fatalf("buffer of %d bytes for a %d-byte file", cap(r.buf), len(h))
	}
}

// TestAppendAfterFailedWrite: once a write fails, the batch may or may
// not be in the log, and the Log refuses to append more in that epoch.
func TestAppendAfterFailedWrite(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir)
	claim(t, l, 1, 1)
	good := l.logf
	l.logf.Close() // the next write fails
	if err := l.Append(1, bs(`{"op":"x"}`)); err == nil {
		t.Fatal("Append on a closed descriptor: no error")
	}
	reopened, err := os.OpenFile(good.Name(), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	l.logf = reopened
	if err := l.Append(1, bs(`{"op":"y"}`)); err == nil || !strings.Contains(err.Error(), "earlier write failed") {
		t.Fatalf("Append after a failed write: %v", err)
	}
	claim(t, l, 2, 1)
	appendOK(t, l, 2, `{"op":"z"}`)
	checkEntries(t, drain(t, openReader(t, l, store.Position{})), 1, "B1/1", "B2/1", `2:{"op":"z"}`)
}
