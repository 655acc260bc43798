package mailbox

import (
	"bytes"
	"strings"
	"testing"
)

func TestSealOpen(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	ana, anabela := Key(secret, "ana"), Key(secret, "anabela")
	if bytes.Equal(ana, anabela) || bytes.Equal(ana, Key([]byte("another secret, just as long...."), "ana")) {
		t.Fatal("keys must differ by user and by secret")
	}
	if !bytes.Equal(ana, Key(secret, "ana")) {
		t.Fatal("key derivation is not deterministic: two leaders would disagree")
	}
	ta, tb := Topic(ana), Topic(anabela)
	if strings.HasPrefix(tb, ta) || strings.HasPrefix(ta, tb) || strings.Contains(ta, "ana") {
		t.Fatalf("topics %q and %q collide or leak the name", ta, tb)
	}
	msg := []byte(`{"from":"bob","to":"ana","text":"the password is swordfish"}`)
	s1, err := Seal(ana, msg)
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := Seal(ana, msg)
	if s1 == s2 || strings.Contains(s1, "swordfish") {
		t.Fatal("sealing must be randomized and hide the text")
	}
	got, err := Open(ana, s1)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("open: %q %v", got, err)
	}
	if _, err := Open(anabela, s1); err != ErrOpen {
		t.Fatalf("another user's key opened it: %v", err)
	}
	for _, bad := range []string{"", "!!", s1[:10], s1[:len(s1)-4] + "AAA="} {
		if _, err := Open(ana, bad); err == nil {
			t.Fatalf("opened garbage %q", bad)
		}
	}
}
