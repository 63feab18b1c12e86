package guard

// identityPrefix starts every header keygate itself sets for the upstream.
const identityPrefix = "x-keygate-"

// IsIdentityHeader reports whether a client header must be dropped before
// forwarding because an upstream could read it as one of keygate's identity
// headers: its name, lower-cased and with "_" read as "-", starts with
// "x-keygate-". CGI and WSGI servers, and nginx with underscores_in_headers,
// map "X_Keygate_Org_Id" and "X-Keygate-Org-Id" to the same variable, so
// every spelling goes. Header names are ASCII tokens, so ASCII case folding
// is enough. It does not allocate.
func IsIdentityHeader(name string) bool {
	if len(name) < len(identityPrefix) {
		return false
	}
	for i := 0; i < len(identityPrefix); i++ {
		c := name[i]
		switch {
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case c == '_':
			c = '-'
		}
		if c != identityPrefix[i] {
			return false
		}
	}
	return true
}
