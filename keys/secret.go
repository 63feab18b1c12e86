package keys

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"strings"
)

// A secret is SecretPrefix followed by the unpadded base64url encoding of 32
// random bytes and a CRC-32C checksum of them. The prefix makes leaked keys
// recognisable to secret scanners; the checksum lets keygate refuse a
// mistyped or truncated token without a store lookup.
const (
	SecretPrefix   = "kg_"
	secretEntropy  = 32
	secretChecksum = 4
	// SecretLen is the length of every secret keygate issues.
	SecretLen = len(SecretPrefix) + (8*(secretEntropy+secretChecksum)+5)/6
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// NewSecret returns a fresh secret with 256 bits of entropy from crypto/rand.
func NewSecret() (string, error) {
	var b [secretEntropy + secretChecksum]byte
	if _, err := rand.Read(b[:secretEntropy]); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	binary.BigEndian.PutUint32(b[secretEntropy:], crc32.Checksum(b[:secretEntropy], castagnoli))
	return SecretPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// CheckSecret reports whether s has the shape of a secret keygate issued:
// prefix, length, alphabet and checksum. It does no store lookup.
func CheckSecret(s string) bool {
	if len(s) != SecretLen || !strings.HasPrefix(s, SecretPrefix) {
		return false
	}
	var b [secretEntropy + secretChecksum]byte
	var src [SecretLen]byte // a copy on the stack: []byte(s) would allocate
	n, err := base64.RawURLEncoding.Decode(b[:], src[:copy(src[:], s[len(SecretPrefix):])])
	if err != nil || n != len(b) {
		return false
	}
	return binary.BigEndian.Uint32(b[secretEntropy:]) == crc32.Checksum(b[:secretEntropy], castagnoli)
}

// SecretHash is the SHA-256 of a secret, the only form in which it is stored.
type SecretHash [sha256.Size]byte

// HashSecret returns the SHA-256 of secret.
func HashSecret(secret string) SecretHash {
	if len(secret) <= SecretLen {
		var buf [SecretLen]byte // a copy on the stack: []byte(secret) would allocate
		return sha256.Sum256(buf[:copy(buf[:], secret)])
	}
	return sha256.Sum256([]byte(secret))
}

// String returns the hash in hex, the form used in store keys.
func (h SecretHash) String() string { return hex.EncodeToString(h[:]) }

// MarshalText encodes the hash as hex.
func (h SecretHash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText decodes a hex hash.
func (h *SecretHash) UnmarshalText(b []byte) error {
	if hex.DecodedLen(len(b)) != len(h) {
		return fmt.Errorf("secret hash: want %d hex digits, got %d", 2*len(h), len(b))
	}
	if _, err := hex.Decode(h[:], b); err != nil {
		return fmt.Errorf("secret hash: %w", err)
	}
	return nil
}
