package gate

import (
	"net/http"
	"strings"

	"github.com/keygate/keygate/keys"
)

// Credential headers, in canonical form: the hot path indexes headers
// directly instead of paying for canonicalisation on every Get, Set and Del.
// Whatever keygate reads from them is removed before forwarding.
const (
	HeaderAPIKey          = "X-Api-Key"
	HeaderAccessKey       = "X-Access-Key"
	HeaderAccessSecret    = "X-Access-Secret"
	HeaderAccessSignature = "X-Access-Signature"
	HeaderAuthorization   = "Authorization"
)

// Credential is what a request presented, and how.
type Credential struct {
	keys.Credential
	// Bearer is set when the secret came from Authorization: Bearer, which
	// must then not be forwarded.
	Bearer bool
	// Signature is set for the signed form (X-Access-Key + X-Access-Signature).
	Signature string
}

// ParseCredential finds the request's credential. Precedence: the
// access-key pair (or signature), X-API-Key, then Authorization: Bearer. It
// returns keys.ErrNoCredential when there is none, and never looks anything
// up: it is pure and fuzzed.
func ParseCredential(h http.Header) (Credential, error) {
	// Values are trimmed before they count as present: a blank header is
	// no credential (401), not an empty one.
	if ak := strings.TrimSpace(headerValue(h, HeaderAccessKey)); ak != "" {
		if sig := strings.TrimSpace(headerValue(h, HeaderAccessSignature)); sig != "" {
			return Credential{Credential: keys.Credential{AccessKey: ak}, Signature: sig}, nil
		}
		if s := strings.TrimSpace(headerValue(h, HeaderAccessSecret)); s != "" {
			return Credential{Credential: keys.Credential{AccessKey: ak, Secret: s}}, nil
		}
	}
	if s := strings.TrimSpace(headerValue(h, HeaderAPIKey)); s != "" {
		return Credential{Credential: keys.Credential{Secret: s}}, nil
	}
	if s, ok := BearerToken(headerValue(h, HeaderAuthorization)); ok {
		return Credential{Credential: keys.Credential{Secret: s}, Bearer: true}, nil
	}
	return Credential{}, keys.ErrNoCredential
}

// headerValue is h.Get for a key already in canonical form: net/http
// canonicalises incoming header names, so a direct index finds them.
func headerValue(h http.Header, canonicalKey string) string {
	if v := h[canonicalKey]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// BearerToken extracts the token of an "Authorization: Bearer" value; the
// scheme is case-insensitive (RFC 9110 §11.1).
func BearerToken(v string) (string, bool) {
	const scheme = "bearer "
	if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return "", false
	}
	t := strings.TrimSpace(v[len(scheme):])
	return t, t != ""
}
