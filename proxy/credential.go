package proxy

import (
	"net/http"
	"strings"

	"github.com/keygate/keygate/keys"
)

// Credential headers, in canonical form: the hot path indexes headers
// directly instead of paying for canonicalisation on every Get, Set and Del.
// Whatever keygate reads from them is removed before forwarding.
const (
	headerAPIKey          = "X-Api-Key"
	headerAccessKey       = "X-Access-Key"
	headerAccessSecret    = "X-Access-Secret"
	headerAccessSignature = "X-Access-Signature"
	headerAuthorization   = "Authorization"
)

// credential is what a request presented, and how.
type credential struct {
	keys.Credential
	// bearer is set when the secret came from Authorization: Bearer, which
	// must then not be forwarded.
	bearer bool
	// signature is set for the signed form (X-Access-Key + X-Access-Signature).
	signature string
}

// credentialFrom finds the request's credential. Precedence: the
// access-key pair (or signature), X-API-Key, then Authorization: Bearer. It
// returns keys.ErrNoCredential when there is none, and never looks anything
// up: it is pure and fuzzed.
func credentialFrom(h http.Header) (credential, error) {
	// Values are trimmed before they count as present: a blank header is
	// no credential (401), not an empty one.
	if ak := strings.TrimSpace(headerValue(h, headerAccessKey)); ak != "" {
		if sig := strings.TrimSpace(headerValue(h, headerAccessSignature)); sig != "" {
			return credential{Credential: keys.Credential{AccessKey: ak}, signature: sig}, nil
		}
		if s := strings.TrimSpace(headerValue(h, headerAccessSecret)); s != "" {
			return credential{Credential: keys.Credential{AccessKey: ak, Secret: s}}, nil
		}
	}
	if s := strings.TrimSpace(headerValue(h, headerAPIKey)); s != "" {
		return credential{Credential: keys.Credential{Secret: s}}, nil
	}
	if s, ok := bearerToken(headerValue(h, headerAuthorization)); ok {
		return credential{Credential: keys.Credential{Secret: s}, bearer: true}, nil
	}
	return credential{}, keys.ErrNoCredential
}

// headerValue is h.Get for a key already in canonical form: net/http
// canonicalises incoming header names, so a direct index finds them.
func headerValue(h http.Header, canonicalKey string) string {
	if v := h[canonicalKey]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// bearerToken extracts the token of an "Authorization: Bearer" value; the
// scheme is case-insensitive (RFC 9110 §11.1).
func bearerToken(v string) (string, bool) {
	const scheme = "bearer "
	if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return "", false
	}
	t := strings.TrimSpace(v[len(scheme):])
	return t, t != ""
}
