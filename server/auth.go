package server

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/crypto/argon2"
)

// Password hashing: argon2id with a random 16-byte salt per user, parameters
// from OWASP's recommendation (19 MiB, 2 passes, 1 lane), stored in the PHC
// string format so parameters can change without breaking old hashes.
const (
	argonMemory  = 19 * 1024
	argonTime    = 2
	argonThreads = 1
	argonKeyLen  = 32
	argonSaltLen = 16
)

// HashPassword returns the PHC string of password with a fresh salt.
func HashPassword(password string) (string, error) {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return hashWithSalt(password, salt, argonMemory, argonTime, argonThreads), nil
}

func hashWithSalt(password string, salt []byte, memory uint32, passes uint32, threads uint8) string {
	key := argon2.IDKey([]byte(password), salt, passes, memory, threads, argonKeyLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, memory, passes, threads, b64.EncodeToString(salt), b64.EncodeToString(key))
}

// errBadHash means a stored hash is not a PHC argon2id string we can check.
var errBadHash = errors.New("stored password hash is not argon2id")

// CheckPassword reports whether password matches the PHC string, in constant time.
func CheckPassword(phc, password string) (bool, error) {
	parts := strings.Split(phc, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false, errBadHash
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false, errBadHash
	}
	var memory, passes uint32
	var threads uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &memory, &passes, &threads); err != nil {
		return false, errBadHash
	}
	b64 := base64.RawStdEncoding
	salt, err := b64.DecodeString(parts[4])
	if err != nil {
		return false, errBadHash
	}
	want, err := b64.DecodeString(parts[5])
	if err != nil || len(want) == 0 {
		return false, errBadHash
	}
	got := argon2.IDKey([]byte(password), salt, passes, memory, threads, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// dummyHash is checked against when a user does not exist, so an unknown user
// costs as much time as a wrong password and the two can't be told apart.
var dummyHash = hashWithSalt("not a password", make([]byte, argonSaltLen), argonMemory, argonTime, argonThreads)

// Tokens: stateless JWTs (HS256, pinned), so any server can check a token
// issued by another: the key is shared by all servers.
const tokenIssuer = "chat"

// Claims are a session token's claims.
type Claims struct {
	jwt.RegisteredClaims
	// IssuedMS is the issue time in milliseconds: "iat" has whole seconds,
	// too coarse to tell a token issued just after a logout from one before.
	IssuedMS int64 `json:"iat_ms"`
}

// Tokens issues and checks session tokens. It holds one or more keys: the
// first signs, every one verifies (picked by the token's "kid"), so the key
// can be rotated without logging anyone out: put the new key first, keep the
// old one until the tokens it signed have expired, then drop it.
type Tokens struct {
	keys []tokenKey
	ttl  time.Duration
}

type tokenKey struct {
	id  string // "kid": a short hash of the key, never the key
	key []byte
}

// NewTokens returns a token issuer/checker. Each key must be at least 32 bytes.
func NewTokens(keys [][]byte, ttl time.Duration) (*Tokens, error) {
	if len(keys) == 0 {
		return nil, errors.New("no jwt key: set CHAT_JWT_SECRET or let the server create a key file")
	}
	t := &Tokens{ttl: ttl}
	for i, k := range keys {
		if len(k) < 32 {
			return nil, fmt.Errorf("jwt key %d of %d is %d bytes: use at least 32 (e.g. CHAT_JWT_SECRET=$(openssl rand -hex 32))", i+1, len(keys), len(k))
		}
		sum := sha256.Sum256(k)
		t.keys = append(t.keys, tokenKey{id: hex.EncodeToString(sum[:6]), key: k})
	}
	return t, nil
}

// Primary returns the signing key (also the root of the mailbox keys).
func (t *Tokens) Primary() []byte { return t.keys[0].key }

// Issue returns a token for user, valid from now for the TTL.
func (t *Tokens) Issue(user string, now time.Time) (string, time.Time, error) {
	id := make([]byte, 12)
	if _, err := rand.Read(id); err != nil {
		return "", time.Time{}, err
	}
	exp := now.Add(t.ttl)
	c := Claims{jwt.RegisteredClaims{
		Issuer:    tokenIssuer,
		Subject:   user,
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)),
		ExpiresAt: jwt.NewNumericDate(exp),
		ID:        hex.EncodeToString(id),
	}, now.UnixMilli()}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, c)
	tok.Header["kid"] = t.keys[0].id
	s, err := tok.SignedString(t.keys[0].key)
	return s, exp, err
}

// errUnknownKey means a token names a key this server does not have.
var errUnknownKey = errors.New("token signed with an unknown key")

// Check validates a token and returns its user and issue time. Only HS256 is
// accepted (never "none"), the expiry is required, the issuer must match.
func (t *Tokens) Check(token string, now time.Time) (user string, issued time.Time, err error) {
	var c Claims
	_, err = jwt.ParseWithClaims(token, &c, func(tok *jwt.Token) (any, error) {
		kid, _ := tok.Header["kid"].(string)
		for _, k := range t.keys {
			if k.id == kid {
				return k.key, nil
			}
		}
		return nil, errUnknownKey
	},
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithIssuer(tokenIssuer),
		jwt.WithIssuedAt(),
		jwt.WithTimeFunc(func() time.Time { return now }),
	)
	if err != nil {
		return "", time.Time{}, err
	}
	if c.Subject == "" || c.IssuedAt == nil {
		return "", time.Time{}, errors.New("token has no subject or issue time")
	}
	issued = c.IssuedAt.Time
	if c.IssuedMS != 0 {
		issued = time.UnixMilli(c.IssuedMS)
	}
	return c.Subject, issued, nil
}

// LoadKeys returns the JWT keys: from secret if set (CHAT_JWT_SECRET: one
// key, or several separated by commas, the signing key first), else the key
// file in dir, created with a random key by whichever server starts first.
func LoadKeys(secret, dir string) ([][]byte, error) {
	if secret != "" {
		var keys [][]byte
		for k := range strings.SplitSeq(secret, ",") {
			if k = strings.TrimSpace(k); k != "" {
				keys = append(keys, []byte(k))
			}
		}
		return keys, nil
	}
	key, err := loadKeyFile(dir)
	if err != nil {
		return nil, err
	}
	return [][]byte{key}, nil
}

func loadKeyFile(dir string) ([]byte, error) {
	path := filepath.Join(dir, "jwt.key")
	if b, err := os.ReadFile(path); err == nil {
		return decodeKey(path, b)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		// Another server created it first: use its key. It may still be
		// writing it; read until the whole key is there.
		for range 100 {
			b, err := os.ReadFile(path)
			if err == nil && len(strings.TrimSpace(string(b))) >= 64 {
				return decodeKey(path, b)
			}
			time.Sleep(10 * time.Millisecond)
		}
		return nil, fmt.Errorf("read jwt key %s: incomplete: remove it and restart", path)
	}
	if err != nil {
		return nil, fmt.Errorf("create jwt key %s: %w", path, err)
	}
	defer f.Close()
	if _, err := f.WriteString(hex.EncodeToString(key) + "\n"); err != nil {
		return nil, fmt.Errorf("write jwt key %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("write jwt key %s: %w", path, err)
	}
	return key, nil
}

func decodeKey(path string, b []byte) ([]byte, error) {
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) < 32 {
		return nil, fmt.Errorf("read jwt key %s: not 32+ hex-encoded bytes: remove it to make a new one", path)
	}
	return key, nil
}
