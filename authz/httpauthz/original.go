package httpauthz

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/listener"
)

// Headers in which the proxy in front names the client's request, in
// canonical form (net/http canonicalises incoming names; "X-Original-URI"
// arrives as "X-Original-Uri").
const (
	HeaderForwardedMethod = "X-Forwarded-Method"
	HeaderForwardedURI    = "X-Forwarded-Uri"
	HeaderOriginalMethod  = "X-Original-Method"
	HeaderOriginalURI     = "X-Original-Uri"
)

// Bounds of the original request's description. A method is a short token;
// a request target longer than MaxURI is refused (nginx's default
// large_client_header_buffers refuse a request line of 8 KiB already).
const (
	MaxMethod = guard.MaxMethod
	MaxURI    = 8 << 10
)

// Original is the client's request as the proxy in front describes it,
// ready for the decision.
type Original struct {
	Method string
	// Path is the decoded canonical path route rules match.
	Path string
	// RawPath is the path as sent, percent-encoding kept: signatures cover
	// it, as on the data path.
	RawPath  string
	RawQuery string
}

// ParseOriginal reads the client's request from r: its method from
// X-Forwarded-Method or X-Original-Method, its path and query from
// X-Forwarded-Uri or X-Original-URI (origin form "/p?q", or absolute form
// "http://host/p?q"), each falling back to r's own. Every value is bounded
// and checked: a header sent twice, the two spellings disagreeing, a method
// that is not a token, a target with bytes outside printable ASCII or that
// does not parse is a 400 (gate.ClientError); a path that is not canonical
// is rewritten, or refused with gate.ErrNonCanonicalPath when
// rejectNonCanonical is set (KEYGATE_PATH_NORMALIZE=reject) or when it has
// no canonical form (listener.CanonicalPath). It never panics and allocates
// only to parse a target.
func ParseOriginal(r *http.Request, rejectNonCanonical bool) (Original, error) {
	var o Original
	method, ok, err := pick(r.Header, HeaderForwardedMethod, HeaderOriginalMethod)
	switch {
	case err != nil:
		return o, err
	case !ok:
		o.Method = r.Method
	case !guard.ValidMethod(method):
		return o, gate.BadRequest("Original method is not an HTTP method token of at most %d bytes", MaxMethod)
	default:
		o.Method = method
	}

	target, ok, err := pick(r.Header, HeaderForwardedURI, HeaderOriginalURI)
	if err != nil {
		return o, err
	}
	var decoded, escaped string
	if !ok {
		decoded, escaped = r.URL.Path, r.URL.EscapedPath()
		o.RawPath, o.RawQuery = gate.RequestPath(r), r.URL.RawQuery
	} else {
		if decoded, escaped, o.RawPath, o.RawQuery, err = parseTarget(target); err != nil {
			return o, err
		}
	}
	d, _, _, err := listener.CanonicalPath(decoded, escaped, rejectNonCanonical)
	if err != nil {
		return o, err
	}
	o.Path = d
	return o, nil
}

// pick returns the value of the first of two headers that is present. Each
// may be sent once; when both are, they must agree, so that a header the
// client slipped past its proxy cannot override the one the proxy set.
func pick(h http.Header, first, second string) (string, bool, error) {
	a, b := h[first], h[second]
	if len(a) > 1 || len(b) > 1 {
		return "", false, gate.BadRequest("%s or %s sent more than once", first, second)
	}
	switch {
	case len(a) == 1 && len(b) == 1 && a[0] != b[0]:
		return "", false, gate.BadRequest("%s and %s disagree", first, second)
	case len(a) == 1:
		return a[0], true, nil
	case len(b) == 1:
		return b[0], true, nil
	}
	return "", false, nil
}

// parseTarget parses a request target as net/http parses a request line's:
// origin form "/path?query" or absolute form "http(s)://host/path?query".
// It returns the decoded and escaped path, the path as sent (signatures
// cover it; for the absolute form, as on the data path, its escaped path)
// and the query.
func parseTarget(t string) (decoded, escaped, raw, query string, err error) {
	if t == "" || len(t) > MaxURI {
		return "", "", "", "", gate.BadRequest("Original request target is empty or longer than %d bytes", MaxURI)
	}
	for i := 0; i < len(t); i++ {
		if c := t[i]; c <= ' ' || c >= 0x7f {
			return "", "", "", "", gate.BadRequest("Original request target has a byte outside printable ASCII")
		}
	}
	switch {
	case t[0] == '/':
		if raw, query, _ := strings.Cut(t, "?"); strings.IndexByte(raw, '%') < 0 && strings.IndexByte(raw, '#') < 0 {
			// Nothing to decode: the path as sent is the path, as
			// url.ParseRequestURI would give it, without its allocation.
			return raw, raw, raw, query, nil
		}
	case hasPrefixFold(t, "http://"), hasPrefixFold(t, "https://"):
	default:
		// "*" (OPTIONS *) and the like: no path to decide on, as on the
		// data path.
		return "", "", "", "", gate.ErrNonCanonicalPath
	}
	u, err := url.ParseRequestURI(t)
	if err != nil || t[0] != '/' && u.Host == "" {
		return "", "", "", "", gate.BadRequest("Original request target does not parse")
	}
	if t[0] == '/' {
		raw, _, _ = strings.Cut(t, "?")
	} else {
		if u.Path == "" {
			u.Path = "/"
		}
		raw = u.EscapedPath()
	}
	return u.Path, u.EscapedPath(), raw, u.RawQuery, nil
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}
