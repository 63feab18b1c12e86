package keys

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
)

// Sealed secrets are what keygate stores of a secret so that it can verify
// signed requests, which need the secret itself rather than its hash. The
// layout of a sealed secret is
//
//	version (1 byte, 1) | key id (4 bytes) | nonce (12 bytes) | AES-256-GCM ciphertext and tag
//
// The key id is the first 4 bytes of SHA-256 of the operator key that sealed
// it; it tells which configured key opens the record and lets `keygate rekey`
// find the records still sealed under a previous key. The additional data
// binds the ciphertext to its header, its organization and its key, so a
// sealed blob copied into another key's record does not open.
const (
	sealVersion   = 1
	sealKeyIDLen  = 4
	sealHeaderLen = 1 + sealKeyIDLen
	// SealKeyLen is the length of an operator key (AES-256).
	SealKeyLen = 32
)

// ErrUnsealable means a sealed secret cannot be opened with the configured
// operator keys: it was sealed under a key that is no longer configured, or
// it was altered. It never means the caller's credential is wrong.
var ErrUnsealable = errors.New("sealed secret cannot be opened with the configured keys")

// SealKeyID identifies an operator key in sealed secrets and logs: the hex
// of the first 4 bytes of its SHA-256. It reveals nothing usable about the key.
type SealKeyID [sealKeyIDLen]byte

// String returns the id in hex.
func (id SealKeyID) String() string { return hex.EncodeToString(id[:]) }

// KeyIDOf returns the id of an operator key.
func KeyIDOf(key []byte) SealKeyID {
	sum := sha256.Sum256(key)
	return SealKeyID(sum[:sealKeyIDLen])
}

// SealedKeyID returns the id of the key a sealed secret was sealed under; ok
// is false when sealed is not a sealed secret.
func SealedKeyID(sealed []byte) (id SealKeyID, ok bool) {
	if len(sealed) < sealHeaderLen || sealed[0] != sealVersion {
		return SealKeyID{}, false
	}
	return SealKeyID(sealed[1:sealHeaderLen]), true
}

type sealKey struct {
	id   SealKeyID
	aead cipher.AEAD
}

// Sealer seals secrets with the current operator key and opens those sealed
// under the current or the previous one. It is safe for concurrent use;
// create it with NewSealer. A nil *Sealer means signing is off.
type Sealer struct {
	current  sealKey
	previous *sealKey
}

// NewSealer returns a Sealer that seals under current and also opens what
// was sealed under previous (nil when there is no previous key). Keys are
// SealKeyLen bytes.
func NewSealer(current, previous []byte) (*Sealer, error) {
	cur, err := newSealKey(current)
	if err != nil {
		return nil, fmt.Errorf("current key: %w", err)
	}
	s := &Sealer{current: cur}
	if previous != nil {
		prev, err := newSealKey(previous)
		if err != nil {
			return nil, fmt.Errorf("previous key: %w", err)
		}
		if prev.id == cur.id {
			return nil, errors.New("previous key has the same id as the current key (the same key twice?)")
		}
		s.previous = &prev
	}
	return s, nil
}

func newSealKey(key []byte) (sealKey, error) {
	if len(key) != SealKeyLen {
		return sealKey{}, fmt.Errorf("want %d bytes, got %d", SealKeyLen, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return sealKey{}, fmt.Errorf("building cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return sealKey{}, fmt.Errorf("building GCM: %w", err)
	}
	return sealKey{id: KeyIDOf(key), aead: aead}, nil
}

// CurrentID returns the id of the key new secrets are sealed under.
func (s *Sealer) CurrentID() SealKeyID { return s.current.id }

// PreviousID returns the id of the previous key; ok is false when there is none.
func (s *Sealer) PreviousID() (id SealKeyID, ok bool) {
	if s.previous == nil {
		return SealKeyID{}, false
	}
	return s.previous.id, true
}

// Seal encrypts secret for the key k (its OrgID and UID are bound to the
// result) under the current operator key.
func (s *Sealer) Seal(k Key, secret string) ([]byte, error) {
	nonceLen := s.current.aead.NonceSize()
	out := make([]byte, sealHeaderLen+nonceLen, sealHeaderLen+nonceLen+len(secret)+s.current.aead.Overhead())
	out[0] = sealVersion
	copy(out[1:sealHeaderLen], s.current.id[:])
	if _, err := rand.Read(out[sealHeaderLen:]); err != nil {
		return nil, fmt.Errorf("reading random nonce: %w", err)
	}
	nonce := out[sealHeaderLen:]
	return s.current.aead.Seal(out, nonce, []byte(secret), sealAAD(out[:sealHeaderLen], k)), nil
}

// Open decrypts k.SealedSecret with whichever configured key sealed it. It
// returns ErrUnsealable when no configured key matches or the record does
// not open (altered, or moved from another key).
func (s *Sealer) Open(k Key) ([]byte, error) {
	id, ok := SealedKeyID(k.SealedSecret)
	if !ok {
		return nil, fmt.Errorf("key %s: malformed sealed secret: %w", k.UID, ErrUnsealable)
	}
	sk := s.keyByID(id)
	if sk == nil {
		return nil, fmt.Errorf("key %s: sealed under unknown key id %s: %w", k.UID, id, ErrUnsealable)
	}
	nonceLen := sk.aead.NonceSize()
	if len(k.SealedSecret) < sealHeaderLen+nonceLen+sk.aead.Overhead() {
		return nil, fmt.Errorf("key %s: truncated sealed secret: %w", k.UID, ErrUnsealable)
	}
	header, nonce, ct := k.SealedSecret[:sealHeaderLen], k.SealedSecret[sealHeaderLen:sealHeaderLen+nonceLen], k.SealedSecret[sealHeaderLen+nonceLen:]
	secret, err := sk.aead.Open(nil, nonce, ct, sealAAD(header, k))
	if err != nil {
		return nil, fmt.Errorf("key %s: sealed secret does not authenticate under key id %s: %w", k.UID, id, ErrUnsealable)
	}
	// The store's hash of the secret must agree with what was sealed.
	if h := HashSecret(string(secret)); subtle.ConstantTimeCompare(h[:], k.SecretHash[:]) != 1 {
		return nil, fmt.Errorf("key %s: sealed secret does not match the key's hash: %w", k.UID, ErrUnsealable)
	}
	return secret, nil
}

func (s *Sealer) keyByID(id SealKeyID) *sealKey {
	switch {
	case id == s.current.id:
		return &s.current
	case s.previous != nil && id == s.previous.id:
		return s.previous
	}
	return nil
}

// sealAAD is the additional data of a sealed secret: a label, its header, and
// the organization and key it belongs to (length-prefixed so no two
// different pairs give the same bytes).
func sealAAD(header []byte, k Key) []byte {
	const label = "keygate sealed secret\x00"
	b := make([]byte, 0, len(label)+len(header)+8+len(k.OrgID)+len(k.UID))
	b = append(b, label...)
	b = append(b, header...)
	b = appendLenPrefixed(b, k.OrgID)
	b = appendLenPrefixed(b, k.UID)
	return b
}

func appendLenPrefixed(b []byte, s string) []byte {
	n := uint32(len(s))
	b = append(b, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	return append(b, s...)
}
