package server

import (
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// A vector from the reference implementation (Debian's argon2 CLI:
// echo -n "correct horse" | argon2 saltsaltsaltsalt -id -t 2 -k 19456 -p 1 -l 32 -e),
// not from our own code: the hashes we store are standard argon2id.
const referenceHash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$AdweBLwcflnNX2HVW8i1Mtu7frrn4Ki7h/rYSGuU7Is"

func TestArgon2idMatchesTheReference(t *testing.T) {
	if got := hashWithSalt("correct horse", []byte("saltsaltsaltsalt"), argonMemory, argonTime, argonThreads); got != referenceHash {
		t.Fatalf("hash of the reference vector:\n got %s\nwant %s", got, referenceHash)
	}
	if ok, err := CheckPassword(referenceHash, "correct horse"); !ok || err != nil {
		t.Fatalf("the right password: %v %v", ok, err)
	}
	if ok, err := CheckPassword(referenceHash, "correct horsE"); ok || err != nil {
		t.Fatalf("a wrong password: %v %v", ok, err)
	}
}

func TestHashPasswordIsSaltedAndChecks(t *testing.T) {
	a, err := HashPassword("hunter2")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := HashPassword("hunter2")
	if a == b || !strings.HasPrefix(a, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("two hashes of one password must differ by salt: %s %s", a, b)
	}
	if ok, _ := CheckPassword(a, "hunter2"); !ok {
		t.Fatal("the hash does not check")
	}
	for _, bad := range []string{"", "$argon2i$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA", "$argon2id$v=19$m=x$a$b", "plain-sha256-hex", referenceHash[:40]} {
		if ok, err := CheckPassword(bad, "hunter2"); ok || err == nil {
			t.Errorf("malformed hash %q accepted or not reported: %v %v", bad, ok, err)
		}
	}
}

func testTokens(t *testing.T, keys ...string) *Tokens {
	t.Helper()
	var ks [][]byte
	for _, k := range keys {
		ks = append(ks, []byte(k))
	}
	tk, err := NewTokens(ks, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

const (
	keyA = "key-a-0123456789abcdef0123456789abcdef"
	keyB = "key-b-0123456789abcdef0123456789abcdef"
)

func TestTokens(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	tk := testTokens(t, keyA)
	good, exp, err := tk.Issue("ana", now)
	if err != nil || !exp.Equal(now.Add(time.Hour)) {
		t.Fatal(err, exp)
	}
	if user, issued, err := tk.Check(good, now.Add(time.Minute)); err != nil || user != "ana" || !issued.Equal(now) {
		t.Fatalf("a good token: %q %v %v", user, issued, err)
	}

	sign := func(m jwt.SigningMethod, key any, claims jwt.MapClaims, kid bool) string {
		tok := jwt.NewWithClaims(m, claims)
		if kid {
			tok.Header["kid"] = tk.keys[0].id
		}
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	claims := func(edit func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{"iss": "chat", "sub": "ana", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
		if edit != nil {
			edit(c)
		}
		return c
	}
	for name, tok := range map[string]string{
		"alg none":        sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims(nil), true),
		"wrong key":       sign(jwt.SigningMethodHS256, []byte(keyB), claims(nil), true),
		"HS512":           sign(jwt.SigningMethodHS512, []byte(keyA), claims(nil), true),
		"expired":         sign(jwt.SigningMethodHS256, []byte(keyA), claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Second).Unix() }), true),
		"no expiry":       sign(jwt.SigningMethodHS256, []byte(keyA), claims(func(c jwt.MapClaims) { delete(c, "exp") }), true),
		"another issuer":  sign(jwt.SigningMethodHS256, []byte(keyA), claims(func(c jwt.MapClaims) { c["iss"] = "evil" }), true),
		"no subject":      sign(jwt.SigningMethodHS256, []byte(keyA), claims(func(c jwt.MapClaims) { delete(c, "sub") }), true),
		"unknown kid":     sign(jwt.SigningMethodHS256, []byte(keyA), claims(nil), false),
		"tampered":        good[:len(good)-3] + "xyz",
		"garbage":         "not.a.token",
		"empty":           "",
		"subject swapped": swapSubject(t, good, "bob"),
	} {
		if user, _, err := tk.Check(tok, now.Add(time.Minute)); err == nil {
			t.Errorf("%s: accepted as %q", name, user)
		}
	}
}

// swapSubject rewrites a token's payload to another user, keeping the
// signature: it must not verify.
func swapSubject(t *testing.T, tok, user string) string {
	parts := strings.Split(tok, ".")
	var c jwt.MapClaims
	p := jwt.NewParser()
	if _, _, err := p.ParseUnverified(tok, &c); err != nil {
		t.Fatal(err)
	}
	c["sub"] = user
	forged, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SigningString()
	return strings.Join([]string{strings.Split(forged, ".")[0], strings.Split(forged, ".")[1], parts[2]}, ".")
}

// Rotation: a token signed with the old key keeps working while the old key
// is listed after the new one, and stops when it is dropped.
func TestTokenKeyRotation(t *testing.T) {
	now := time.Now()
	old := testTokens(t, keyA)
	tok, _, _ := old.Issue("ana", now)
	rotated := testTokens(t, keyB, keyA)
	if user, _, err := rotated.Check(tok, now); err != nil || user != "ana" {
		t.Fatalf("an old token after rotation: %q %v", user, err)
	}
	fresh, _, _ := rotated.Issue("ana", now)
	if _, _, err := old.Check(fresh, now); err == nil {
		t.Fatal("a server without the new key accepted a token signed with it")
	}
	dropped := testTokens(t, keyB)
	if _, _, err := dropped.Check(tok, now); err == nil {
		t.Fatal("a token of a dropped key still works")
	}
	if _, err := NewTokens([][]byte{[]byte("short")}, time.Hour); err == nil {
		t.Fatal("a 5-byte key was accepted")
	}
}
