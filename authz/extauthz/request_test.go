package extauthz

import (
	"net/http"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/guard"
)

// checkOf is the CheckRequest Envoy sends for method and target with
// headers (the map form) from source (none when empty).
func checkOf(method, target string, headers map[string]string, source string) *authv3.CheckRequest {
	cr := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: target, Headers: headers,
		}},
	}}
	if source != "" {
		cr.Attributes.Source = &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: source, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 4242}}}}}
	}
	return cr
}

func TestRequestOf(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	req, err := RequestOf(checkOf("GET", "/v1/a//b/../c%20d?x=1&y=%2F", map[string]string{
		":method": "GET", ":path": "/ignored", "x-api-key": "s3cret", "x-forwarded-for": "198.51.100.1",
	}, "203.0.113.7"), "10.0.0.1:5000", now, false)
	if err != nil {
		t.Fatal(err)
	}
	if req.Method != "GET" || req.Path != "/v1/a/c d" || req.RawPath != "/v1/a//b/../c%20d" || req.RawQuery != "x=1&y=%2F" ||
		req.RemoteAddr != "203.0.113.7:4242" || !req.Time.Equal(now) {
		t.Errorf("request %+v", req)
	}
	if req.Header.Get("X-Api-Key") != "s3cret" || req.Header["X-Forwarded-For"][0] != "198.51.100.1" || len(req.Header) != 2 {
		t.Errorf("headers %v", req.Header)
	}

	// No source: the caller's address; header_map (encode_raw_headers)
	// keeps repeated headers apart.
	cr := checkOf("POST", "/x", nil, "")
	cr.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: "x-access-key", RawValue: []byte("ak")}, {Key: "x-access-secret", Value: "sk"}, {Key: "accept", Value: "a"}, {Key: "accept", Value: "b"},
	}}
	req, err = RequestOf(cr, "10.0.0.1:5000", now, false)
	if err != nil {
		t.Fatal(err)
	}
	if req.RemoteAddr != "10.0.0.1:5000" || req.Header.Get("X-Access-Key") != "ak" || req.Header.Get("X-Access-Secret") != "sk" || len(req.Header["Accept"]) != 2 {
		t.Errorf("request %+v", req)
	}
}

// TestRequestOfRefusals: every malformed check is a refusal the client
// sees as a 4xx in the data path's shape.
func TestRequestOfRefusals(t *testing.T) {
	many := map[string]string{}
	for i := range MaxHeaders + 1 {
		many["x-h"+strings.Repeat("a", i%7)+string(rune('a'+i%26))+strings.Repeat("b", i/26)] = "v"
	}
	cases := []struct {
		name   string
		cr     *authv3.CheckRequest
		reject bool
		status int
	}{
		{"nil", nil, false, 400},
		{"no http", &authv3.CheckRequest{Attributes: &authv3.AttributeContext{}}, false, 400},
		{"no method", checkOf("", "/", nil, ""), false, 400},
		{"bad method", checkOf("GE T", "/", nil, ""), false, 400},
		{"long method", checkOf(strings.Repeat("G", 33), "/", nil, ""), false, 400},
		{"no path", checkOf("GET", "", nil, ""), false, 400},
		{"asterisk", checkOf("OPTIONS", "*", nil, ""), false, 400},
		{"absolute form", checkOf("GET", "http://h/x", nil, ""), false, 400},
		{"space in target", checkOf("GET", "/a b", nil, ""), false, 400},
		{"control in target", checkOf("GET", "/a\x7f", nil, ""), false, 400},
		{"NUL", checkOf("GET", "/a%00", nil, ""), false, 400},
		{"encoded slash", checkOf("GET", "/a%2Fb", nil, ""), false, 400},
		{"bad escape", checkOf("GET", "/a%zz", nil, ""), false, 400},
		{"non-canonical rejected", checkOf("GET", "/a/../b", nil, ""), true, 400},
		{"bad header name", checkOf("GET", "/", map[string]string{"x a": "v"}, ""), false, 400},
		{"bad header value", checkOf("GET", "/", map[string]string{"x-a": "v\r\nx-b: w"}, ""), false, 400},
		{"two spellings", checkOf("GET", "/", map[string]string{"x-api-key": "a", "X-Api-Key": "b"}, ""), false, 400},
		{"too many headers", checkOf("GET", "/", many, ""), false, 431},
		{"header too large", checkOf("GET", "/", map[string]string{"x-a": strings.Repeat("v", MaxHeaderBytes)}, ""), false, 431},
		{"target too large", checkOf("GET", "/"+strings.Repeat("a", MaxHeaderBytes), nil, ""), false, 431},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := RequestOf(tc.cr, "", time.Now(), tc.reject)
			if err == nil {
				t.Fatal("accepted")
			}
			if p := gate.Classify(err, time.Now()); p.Status != tc.status {
				t.Errorf("status %d (%v), want %d", p.Status, err, tc.status)
			}
		})
	}
}

// FuzzRequestOf: whatever Envoy (or anything on its connection) relays,
// RequestOf never panics, refuses with a 4xx, and what it accepts is what
// the data path would decide on: a canonical path, canonical header names,
// no pseudo-headers, within the bounds.
func FuzzRequestOf(f *testing.F) {
	f.Add("GET", "/v1/things?page=2", "x-api-key: s3cret\nauthorization: Bearer x", "203.0.113.7", false, false)
	f.Add("POST", "/a//b/./../c%2e%2E/d?x=%00", ":path: /z\nx-access-key: a\nx-access-signature: s", "", true, false)
	f.Add("GET", "/%2e%2E/x", "accept: a\naccept: b", "::1", true, true)
	f.Add("DELETE", "/a%5Cb", "X_Keygate_Org_Id: x", "not an address", false, false)
	f.Fuzz(func(t *testing.T, method, target, headers, source string, raw, reject bool) {
		cr := checkOf(method, target, nil, source)
		hr := cr.Attributes.Request.Http
		for line := range strings.SplitSeq(headers, "\n") {
			k, v, _ := strings.Cut(line, ": ")
			if raw {
				if hr.HeaderMap == nil {
					hr.HeaderMap = &corev3.HeaderMap{}
				}
				hr.HeaderMap.Headers = append(hr.HeaderMap.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
			} else {
				if hr.Headers == nil {
					hr.Headers = map[string]string{}
				}
				hr.Headers[k] = v
			}
		}
		req, err := RequestOf(cr, "192.0.2.1:1", time.Unix(0, 0), reject)
		if err != nil {
			if p := gate.Classify(err, time.Unix(0, 0)); p.Status < 400 || p.Status > 499 {
				t.Fatalf("refusal %d: %v", p.Status, err)
			}
			return
		}
		if req.Method == "" || req.Method != method {
			t.Fatalf("method %q from %q", req.Method, method)
		}
		if _, _, changed, err := guard.CanonicalPath(req.Path, req.Path); err == nil && changed || !strings.HasPrefix(req.Path, "/") {
			t.Fatalf("path %q is not canonical", req.Path)
		}
		if !strings.HasPrefix(target, req.RawPath) || req.RawQuery != "" && !strings.HasSuffix(target, "?"+req.RawQuery) {
			t.Fatalf("raw path %q, query %q from %q", req.RawPath, req.RawQuery, target)
		}
		n := 0
		for k, vs := range req.Header {
			if k != http.CanonicalHeaderKey(k) || strings.HasPrefix(k, ":") {
				t.Fatalf("header name %q", k)
			}
			n += len(vs)
		}
		if n > MaxHeaders {
			t.Fatalf("%d headers", n)
		}
		if req.RemoteAddr == "" {
			t.Fatal("no client address")
		}
	})
}
