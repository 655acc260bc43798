package client

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/go-zeromq/zmq4"

	"chat/internal/mailbox"
)

// FuzzDecodeReply: whatever a broker or an impostor sends back, decoding
// returns a reply or an error, never panics; a reply that says it failed
// always says why (the request path dereferences Error when !OK).
func FuzzDecodeReply(f *testing.F) {
	files, _ := filepath.Glob("../wire/testdata/protocol/*.reply.json")
	for _, name := range files {
		b, _ := os.ReadFile(name)
		f.Add([]byte{}, b)
	}
	f.Add([]byte("x"), []byte(`{"ok":false}`))
	f.Add([]byte{}, []byte(`{"ok":true,"data":null,"req":18446744073709551615}`))
	f.Fuzz(func(t *testing.T, first, second []byte) {
		for _, msg := range []zmq4.Msg{zmq4.NewMsgFrom(first, second), zmq4.NewMsgFrom(second)} {
			rep, err := decodeReply(msg)
			if (rep == nil) == (err == nil) {
				t.Fatalf("exactly one of reply and error: %v %v", rep, err)
			}
		}
	})
}

// FuzzOpenSealed: a forged or corrupt sealed direct message never opens and
// never panics.
func FuzzOpenSealed(f *testing.F) {
	key := mailbox.Key([]byte("0123456789abcdef0123456789abcdef"), "ana")
	good, _ := mailbox.Seal(key, []byte(`{"from":"bob","text":"hi"}`))
	f.Add(good)
	f.Add("")
	f.Add("AAAA")
	f.Fuzz(func(t *testing.T, sealed string) {
		out, err := mailbox.Open(key, sealed)
		if err == nil && sealed != good && string(out) != `{"from":"bob","text":"hi"}` {
			t.Fatalf("opened a forgery: %q", out)
		}
	})
}
