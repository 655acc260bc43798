// Package mailbox keeps direct messages private on the shared publication bus.
//
// Anyone can connect a SUB socket to the pubsub and subscribe to everything,
// so a direct message must not travel in the clear. Each user has a mailbox
// key, derived by the servers from their shared secret (so any leader can
// compute it, and nothing extra is stored) and handed to the user at login
// over the request path. Direct-message publications are sealed with it
// (XChaCha20-Poly1305, a random nonce per message) and published under a
// topic derived from it, so a subscriber without the key learns neither the
// text, nor the sender, nor whose mailbox it is.
package mailbox

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"

	"golang.org/x/crypto/chacha20poly1305"
)

// KeySize is the size of a mailbox key.
const KeySize = chacha20poly1305.KeySize

// Key derives user's mailbox key from the servers' secret.
func Key(secret []byte, user string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("chat mailbox key v1\x00"))
	m.Write([]byte(user))
	return m.Sum(nil)
}

// Topic is the publication topic of the mailbox with this key: "dm/" and 24
// hex digits and "/", unguessable without the key, and never a prefix of
// another topic.
func Topic(key []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("chat mailbox topic v1"))
	return "dm/" + hex.EncodeToString(m.Sum(nil)[:12]) + "/"
}

// Seal encrypts plaintext for the mailbox with key, as base64 text.
func Seal(key, plaintext []byte) (string, error) {
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(aead.Seal(nonce, nonce, plaintext, nil)), nil
}

// ErrOpen means a sealed message could not be opened with the key: it was
// sealed for another key (a rotated secret), or altered.
var ErrOpen = errors.New("mailbox: cannot open the sealed message with this key")

// Open decrypts a message sealed by Seal.
func Open(key []byte, sealed string) ([]byte, error) {
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, err
	}
	b, err := base64.StdEncoding.DecodeString(sealed)
	if err != nil || len(b) < aead.NonceSize()+aead.Overhead() {
		return nil, ErrOpen
	}
	out, err := aead.Open(nil, b[:aead.NonceSize()], b[aead.NonceSize():], nil)
	if err != nil {
		return nil, ErrOpen
	}
	return out, nil
}
