package gate

import (
	"net/http"

	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/keys"
)

// Identity headers every front hands on with an admitted request: the proxy
// sets them on the forwarded request, the authorization services return them
// for the caller's proxy to forward.
const (
	HeaderOrgID       = "X-Keygate-Org-Id"
	HeaderKeyID       = "X-Keygate-Key-Id"
	HeaderKeyName     = "X-Keygate-Key-Name"
	HeaderPermissions = "X-Keygate-Permissions"
)

// SetIdentity sets the identity headers of p on h.
func SetIdentity(h http.Header, p *keys.Principal) {
	v := &[4]string{p.Key.OrgID, p.Key.UID, p.Key.Name, keys.JoinPermissions(p.Key.Permissions)} // one allocation for all four
	h[HeaderOrgID] = v[0:1:1]
	h[HeaderKeyID] = v[1:2:2]
	h[HeaderKeyName] = v[2:3:3]
	h[HeaderPermissions] = v[3:4:4]
}

// CredentialHeaders are the headers a credential is read from, which must not
// reach the upstream. Authorization is among them only when keygate consumed
// its bearer token: next to another credential form it is the backend's own.
func CredentialHeaders(bearerConsumed bool) []string {
	if bearerConsumed {
		return []string{HeaderAPIKey, HeaderAccessKey, HeaderAccessSecret, HeaderAccessSignature, HeaderAuthorization}
	}
	return []string{HeaderAPIKey, HeaderAccessKey, HeaderAccessSecret, HeaderAccessSignature}
}

// StripInbound removes from h the credential headers (CredentialHeaders) and
// every client-sent X-Keygate-* header in any spelling a server may map onto
// ours (guard.IsIdentityHeader), so the upstream can trust the ones keygate
// sets.
func StripInbound(h http.Header, bearerConsumed bool) {
	delete(h, HeaderAPIKey)
	delete(h, HeaderAccessKey)
	delete(h, HeaderAccessSecret)
	delete(h, HeaderAccessSignature)
	if bearerConsumed {
		delete(h, HeaderAuthorization)
	}
	for name := range h {
		if guard.IsIdentityHeader(name) {
			delete(h, name)
		}
	}
}
