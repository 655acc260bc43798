// Package filelog is the shared-directory backend of store.Log: an
// append-only, checksummed, fenced log in a directory that every server
// mounts (the compose volume), plus the leader's lock and the snapshots.
//
// # Files
//
// Open creates this layout in DIR when it is missing:
//
//	DIR/log              the log: one append-only file, opened O_APPEND by every
//	                     Log; only the leader of the newest epoch writes to it
//	DIR/epochs/<N>       one file per claimed epoch, N zero-padded to 20 digits,
//	                     created with O_CREAT|O_EXCL; holds {"epoch","leader","time"}
//	DIR/leader.lock      flock(2)ed (LOCK_EX) by the process that leads
//	DIR/snapshots/<I>    snapshots of the state after entry I (zero-padded to 20
//	                     digits); the newest two are kept
//
// # Records
//
// The log is a sequence of records, little-endian:
//
//	off  size  field
//	  0     4  magic  FF 00 4C 47 ("\xff\x00LG")
//	  4     4  CRC-32C (Castagnoli) of bytes 8 .. end of record
//	  8     4  payload length (at most MaxPayload)
//	 12     8  epoch (>= 1)
//	 20     1  kind: store.KindData (1) or store.KindBarrier (2)
//	 21     4  leader id (barriers; 0 in data records)
//	 25     n  payload (data records; barriers have none)
//
// The magic holds 0xFF, which never occurs in UTF-8, and 0x00, which JSON
// always escapes, so it can never occur inside a JSON payload; Append
// rejects any payload that contains it. That is what makes resynchronising
// after a torn record safe: a scan for the magic cannot land inside a
// payload.
//
// # Epochs, claims and fencing
//
// Claim(e, id) requires e = Epoch()+1 (an older e fails with
// store.ErrClaimed). It creates epochs/<e> with O_EXCL: the kernel's
// compare-and-set, so each epoch has exactly one owner (EEXIST is
// store.ErrClaimed). It writes the claim file, fsyncs it and the directory,
// then appends a barrier record (epoch e, leader id) and fdatasyncs the
// log. Because every claim requires the previous epoch's file to exist,
// the epoch files are always 1..N with no holes. If epochs/<e+1> exists
// once the barrier is durable (the claimer was paused between its claim
// file and its barrier), Claim returns store.ErrFenced.
//
// Append(e, payloads) is allowed only on the Log that claimed e. It encodes
// the whole batch, writes it with ONE write(2) on the O_APPEND descriptor,
// fdatasyncs, and only THEN stats epochs/<e+1>: if that file exists the
// result is store.ErrFenced and nothing is acknowledged. (A cheap stat
// before the write also refuses to write at all once fenced; it only
// shortens the window, safety rests on the check after the write.) After
// ErrFenced, or after a failed or short write or fdatasync, the Log refuses
// every further Append of e.
//
// Why a stale leader cannot acknowledge: if Append(e) returns nil, its
// records were in the file before the stat, and the stat saw no
// epochs/<e+1>. The leader of e+1 creates that file before it writes its
// barrier, and every later epoch's file is created after it. So every
// acknowledged record of e lies physically before every barrier of a newer
// epoch, and the reading rule below returns it. Conversely a record that
// a deposed leader writes after a newer barrier is never acknowledged, and
// the reading rule drops it.
//
// # Reading rule
//
// Every reader applies the same deterministic rule to the bytes of the
// file. It keeps maxEp, the highest epoch of any barrier returned so far.
// A data record with epoch < maxEp is skipped (written by a deposed leader
// after a newer barrier: never acknowledged); a barrier with epoch <= maxEp
// is skipped. Every other record is returned, in file order, with Index =
// the 1-based ordinal among returned entries (barriers included).
// store.Position holds Index, the byte Offset just after the entry and
// MaxEp, so a reader opened at a snapshot's Position continues exactly
// like one that read from the start.
//
// Entries an unacknowledged batch left in the file before a newer barrier
// (a leader fenced after its write, or killed mid-batch) are returned: the
// contract allows it. A new leader must therefore read its own barrier
// before it applies anything of its own.
//
// # Torn records and resynchronisation
//
// A SIGKILLed writer can leave a partial record, and the next leader
// appends after it, so a torn or corrupt region may sit in the middle of
// the file. At a record that does not validate (bad magic, impossible
// header, CRC mismatch) or is incomplete (the file ends inside it), the
// reader scans forward byte by byte for the next magic whose record is
// complete and validates, and skips the region before it. If there is no
// such record yet, Next returns io.EOF and keeps its position: the bytes
// may be a record the leader is still writing, and it must not be skipped.
// This is safe because the file is append-only with one writer at a time
// and a local file system exposes appended bytes in order: when a
// complete, valid record exists after an incomplete one, the incomplete
// one was torn, not in progress. Skipped regions are logged.
//
// Readers tail the log: io.EOF from Next means "not yet"; the next call
// continues from the same offset with buffered reads (ReadAt), never
// rereading what it already returned.
//
// # Snapshots
//
// SaveSnapshot writes a temporary file in snapshots/ (a JSON header line
// holding the Position, the body, then a 16-byte trailer: body length u64,
// CRC-32C of header line and body u32, magic "\xff\x00SN"), fsyncs it,
// renames it to snapshots/<index>, fsyncs the directory and deletes all
// but the newest two. LatestSnapshot returns the newest one that
// validates, skipping a corrupt or partial one.
//
// # The leader's lock
//
// WaitLeaderFree takes flock(LOCK_EX) on DIR/leader.lock through its own
// open file description (so several Logs in one process exclude each
// other), polling LOCK_EX|LOCK_NB every 5 ms so that ctx cancels the wait.
// flock, unlike classic POSIX fcntl locks, is not dropped when the process
// closes some other descriptor of the file. The kernel releases it about
// 0.5 ms after the holder is SIGKILLed, but never while the holder is
// stopped (SIGSTOP, docker pause): the lock only detects crashes quickly;
// fencing (epochs) is what keeps a paused leader harmless.
package filelog
