package httpauthz_test

import (
	"cmp"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/keygate/keygate/authz/httpauthz"
	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/guard"
)

// FuzzParseOriginal: whatever a client or a proxy puts in the four headers,
// ParseOriginal never panics; it returns a method token and a canonical
// absolute path, or an error that is a 400 in the data path's terms.
func FuzzParseOriginal(f *testing.F) {
	f.Add("GET", "", "/v1/a?b=c", "", false)
	f.Add("", "POST", "", "/x/..//pins", false)
	f.Add("PUT", "PUT", "/a", "/a", true)
	f.Add("GET", "DELETE", "/a", "/b", false)
	f.Add("", "", "http://h/a/./b?q", "", false)
	f.Add("", "", "", "*", false)
	f.Add("", "", "/%2e%2e/%00", "", false)
	f.Add("g\x00", "", "/a%zz", "", true)
	f.Add("", "", "", "/\xc3\xa9", false)
	f.Fuzz(func(t *testing.T, fm, om, fu, ou string, reject bool) {
		req := httptest.NewRequest("GET", "/own?x", nil)
		for name, v := range map[string]string{httpauthz.HeaderForwardedMethod: fm, httpauthz.HeaderOriginalMethod: om,
			httpauthz.HeaderForwardedURI: fu, httpauthz.HeaderOriginalURI: ou} {
			if v != "" {
				req.Header[name] = []string{v}
			}
		}
		o, err := httpauthz.ParseOriginal(req, reject)
		if err != nil {
			if p := gate.Classify(err, time.Now()); p.Status != http.StatusBadRequest || !utf8.ValidString(p.Message) {
				t.Fatalf("error %v classified as %d %q", err, p.Status, p.Message)
			}
			return
		}
		if o.Method == "" || len(o.Method) > httpauthz.MaxMethod || strings.ContainsAny(o.Method, " \t\r\n\x00") {
			t.Fatalf("method %q", o.Method)
		}
		p := o.Path
		if !strings.HasPrefix(p, "/") || strings.Contains(p, "//") || strings.ContainsAny(p, "\x00\\") ||
			strings.Contains(p+"/", "/./") || strings.Contains(p+"/", "/../") {
			t.Fatalf("path %q is not canonical", p)
		}
		if fu == "" && ou == "" && (p != "/own" || o.RawQuery != "x") {
			t.Fatalf("own path %q?%q", p, o.RawQuery)
		}
		// The same decision path as net/http's parse of that target, which
		// the data listener decides on.
		if target := cmp.Or(fu, ou); strings.HasPrefix(target, "/") {
			u, err := url.ParseRequestURI(target)
			if err != nil {
				t.Fatalf("%q: accepted, but net/url refuses it: %v", target, err)
			}
			if d, _, _, _ := guard.CanonicalPath(u.Path, u.EscapedPath()); d != o.Path || u.RawQuery != o.RawQuery {
				t.Fatalf("%q: path %q query %q, net/url gives %q %q", target, o.Path, o.RawQuery, d, u.RawQuery)
			}
		}
		if len(o.RawPath) > httpauthz.MaxURI*3 || len(o.RawQuery) > httpauthz.MaxURI {
			t.Fatalf("unbounded: %d %d", len(o.RawPath), len(o.RawQuery))
		}
	})
}
