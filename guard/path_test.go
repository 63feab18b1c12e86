package guard

import (
	"errors"
	"net/url"
	"path"
	"strings"
	"testing"
)

// requestPath parses a request target as net/http does and returns the two
// spellings CanonicalPath takes.
func requestPath(t testing.TB, target string) (decoded, escaped string) {
	t.Helper()
	u, err := url.ParseRequestURI(target)
	if err != nil {
		t.Fatalf("ParseRequestURI(%q): %v", target, err)
	}
	return u.Path, u.EscapedPath()
}

func TestCanonicalPath(t *testing.T) {
	tests := []struct {
		target      string
		wantDecoded string
		wantEscaped string // "" = same as wantDecoded
		wantChanged bool
		wantErr     error
	}{
		{target: "/", wantDecoded: "/"},
		{target: "/api/v0/pin/add", wantDecoded: "/api/v0/pin/add"},
		{target: "/a/b/", wantDecoded: "/a/b/"},
		{target: "/a;x/b", wantDecoded: "/a;x/b"},
		{target: "/.../.a/a./..a", wantDecoded: "/.../.a/a./..a"},
		{target: "/%41%20b", wantDecoded: "/A b", wantEscaped: "/%41%20b"},
		{target: "/a%25b", wantDecoded: "/a%b", wantEscaped: "/a%25b"},
		{target: "/a%252e%252e/b", wantDecoded: "/a%2e%2e/b", wantEscaped: "/a%252e%252e/b"},

		// The spellings of issue 12: each is the rule's path once canonical.
		{target: "//api/v0/pin/add", wantDecoded: "/api/v0/pin/add", wantChanged: true},
		{target: "/api/v0/./pin/add", wantDecoded: "/api/v0/pin/add", wantChanged: true},
		{target: "/x/../api/v0/pin/add", wantDecoded: "/api/v0/pin/add", wantChanged: true},
		{target: "/public/../export", wantDecoded: "/export", wantChanged: true},
		{target: "/api//v0///pin/add", wantDecoded: "/api/v0/pin/add", wantChanged: true},

		// Dot segments however encoded.
		{target: "/%2e%2e/a", wantDecoded: "/a", wantChanged: true},
		{target: "/a/%2E/b", wantDecoded: "/a/b", wantChanged: true},
		{target: "/a/.%2e/b", wantDecoded: "/b", wantChanged: true},
		{target: "/a/%2e./b", wantDecoded: "/b", wantChanged: true},
		{target: "/a/%2e%2E/b", wantDecoded: "/b", wantChanged: true},
		{target: "/public/%2e%2e/export", wantDecoded: "/export", wantChanged: true},

		// Never above the root; trailing slash as RFC 3986 5.2.4 gives.
		{target: "/..", wantDecoded: "/", wantChanged: true},
		{target: "/../../a", wantDecoded: "/a", wantChanged: true},
		{target: "/a/..", wantDecoded: "/", wantChanged: true},
		{target: "/a/b/..", wantDecoded: "/a/", wantChanged: true},
		{target: "/a/b/.", wantDecoded: "/a/b/", wantChanged: true},
		{target: "/a/%2e", wantDecoded: "/a/", wantChanged: true},
		{target: "/a//", wantDecoded: "/a/", wantChanged: true},
		{target: "//", wantDecoded: "/", wantChanged: true},
		{target: "/./", wantDecoded: "/", wantChanged: true},
		// Slashes collapse before dots resolve, as nginx and path.Clean do.
		{target: "/a//../b", wantDecoded: "/b", wantChanged: true},

		// Escapes in kept segments are forwarded as sent.
		{target: "/a%20b/./c", wantDecoded: "/a b/c", wantEscaped: "/a%20b/c", wantChanged: true},
		{target: "/x/%2e%2e/%70in", wantDecoded: "/pin", wantEscaped: "/%70in", wantChanged: true},
		{target: "/" + strings.Repeat("s/", 40) + "../x", wantDecoded: "/" + strings.Repeat("s/", 39) + "x", wantChanged: true},

		// Refused.
		{target: "/a/b%2Fc", wantErr: ErrPathEncodedSlash},
		{target: "/a/b%2fc/..", wantErr: ErrPathEncodedSlash},
		{target: "/a%5Cb", wantErr: ErrPathBackslash},
		{target: "/a\\b", wantErr: ErrPathBackslash},
		{target: "/a%00b", wantErr: ErrPathNUL},
		{target: "/a/..;/b", wantErr: ErrPathDotParameter},
		{target: "/a/.;x/b", wantErr: ErrPathDotParameter},
		{target: "/a/..%3b/b", wantErr: ErrPathDotParameter},
		{target: "/a/%2e%2e;/b", wantErr: ErrPathDotParameter},
		{target: "*", wantErr: ErrPathNotAbsolute},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			decoded, escaped := requestPath(t, tt.target)
			gotD, gotE, changed, err := CanonicalPath(decoded, escaped)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("CanonicalPath(%q, %q) error = %v, want %v", decoded, escaped, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("CanonicalPath(%q, %q): %v", decoded, escaped, err)
			}
			wantE := tt.wantEscaped
			if wantE == "" {
				wantE = tt.wantDecoded
			}
			if gotD != tt.wantDecoded || gotE != wantE || changed != tt.wantChanged {
				t.Errorf("CanonicalPath(%q, %q) = %q, %q, %v; want %q, %q, %v",
					decoded, escaped, gotD, gotE, changed, tt.wantDecoded, wantE, tt.wantChanged)
			}
		})
	}
}

func TestCanonicalPathInputs(t *testing.T) {
	// Inputs not made by net/url: the two spellings must agree.
	tests := []struct {
		decoded, escaped string
		wantErr          error
	}{
		{"", "", nil},
		{"/a", "/b", ErrPathEscape},
		{"/ab", "/a", ErrPathEscape},
		{"/a", "/ab", ErrPathEscape},
		{"/a", "/a%", ErrPathEscape},
		{"/a", "/a%4", ErrPathEscape},
		{"/a", "/%zz", ErrPathEscape},
		{"/a/b", "/a%2Fb", ErrPathEncodedSlash},
		{"/a/b", "/a/b/", ErrPathEscape},
		{"/a/b/", "/a/b", ErrPathEscape},
		{"a", "a", ErrPathNotAbsolute},
		{"/a", "", ErrPathNotAbsolute},
		{"", "/a", ErrPathNotAbsolute},
		{"/a\x00", "/a\x00", ErrPathNUL},
	}
	for _, tt := range tests {
		d, e, _, err := CanonicalPath(tt.decoded, tt.escaped)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("CanonicalPath(%q, %q) error = %v, want %v", tt.decoded, tt.escaped, err, tt.wantErr)
		}
		if err == nil && (d != "/" || e != "/") {
			t.Errorf("CanonicalPath(%q, %q) = %q, %q; want /, /", tt.decoded, tt.escaped, d, e)
		}
	}
}

func TestCanonicalPathNoAllocs(t *testing.T) {
	for _, target := range []string{"/", "/api/v0/pin/add", "/a/b/", "/files/a%20b/c%2Bd", "/" + strings.Repeat("seg/", 50)} {
		decoded, escaped := requestPath(t, target)
		allocs := testing.AllocsPerRun(100, func() {
			if _, _, changed, err := CanonicalPath(decoded, escaped); changed || err != nil {
				t.Fatalf("CanonicalPath(%q): changed=%v err=%v", target, changed, err)
			}
		})
		if allocs != 0 {
			t.Errorf("CanonicalPath(%q) allocates %v times, want 0", target, allocs)
		}
	}
}

func BenchmarkCanonicalPath(b *testing.B) {
	for _, bc := range []struct{ name, target string }{
		{"canonical", "/api/v0/pin/add"},
		{"canonical-escaped", "/files/a%20b/c%2Bd"},
		{"dot-segments", "/x/../api/v0/./pin//add"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			decoded, escaped := requestPath(b, bc.target)
			b.ReportAllocs()
			for b.Loop() {
				_, _, _, _ = CanonicalPath(decoded, escaped)
			}
		})
	}
}

// ruleMatch is a route rule match as keygate's rules do it: case-insensitive,
// with or without one trailing slash, and a prefix ("/x/*") at a segment
// boundary.
func ruleMatch(rule, p string, prefix bool) bool {
	p = strings.ToLower(p)
	rule = strings.ToLower(rule)
	if p != "/" {
		p = strings.TrimSuffix(p, "/")
	}
	if p == rule {
		return true
	}
	return prefix && strings.HasPrefix(p, rule+"/")
}

var fuzzRules = []string{"/api/v0/pin", "/export", "/public", "/a", "/a/b", "/"}

// FuzzCanonicalPath checks the properties of a canonical path on request
// targets parsed as net/http parses them.
func FuzzCanonicalPath(f *testing.F) {
	for _, s := range []string{"/", "/api/v0/pin/add", "//api/v0/pin/add", "/x/../api/v0/pin/add",
		"/public/%2e%2e/export", "/a/.%2e/b/", "/a//../b", "/a%2Fb", "/a/..;/b", "/a%00", "/a%5c", "/%41%20/./"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		u, err := url.ParseRequestURI(target)
		if err != nil || u.Opaque != "" {
			return
		}
		decoded, escaped := u.Path, u.EscapedPath()
		d, e, changed, err := CanonicalPath(decoded, escaped)
		if err != nil {
			checkRefusal(t, decoded, escaped, err)
			return
		}
		if !strings.HasPrefix(d, "/") || !strings.HasPrefix(e, "/") {
			t.Fatalf("CanonicalPath(%q, %q) = %q, %q: not absolute", decoded, escaped, d, e)
		}
		if un, err := url.PathUnescape(e); err != nil || un != d {
			t.Fatalf("CanonicalPath(%q, %q) = %q, %q: the escaped form decodes to %q (%v)", decoded, escaped, d, e, un, err)
		}
		if d2, e2, ch2, err2 := CanonicalPath(d, e); d2 != d || e2 != e || ch2 || err2 != nil {
			t.Fatalf("not idempotent: %q, %q -> %q, %q, %v, %v", d, e, d2, e2, ch2, err2)
		}
		if changed != (d != decoded || e != escaped) && decoded != "" {
			t.Fatalf("changed = %v for %q -> %q", changed, decoded, d)
		}
		segs := strings.Split(d[1:], "/")
		for i, s := range segs {
			if s == "." || s == ".." || (s == "" && i != len(segs)-1) {
				t.Fatalf("CanonicalPath(%q) = %q: segment %d is %q", decoded, d, i, s)
			}
		}
		if strings.HasSuffix(decoded, "/") && !strings.HasSuffix(d, "/") {
			t.Fatalf("CanonicalPath(%q) = %q lost the trailing slash", decoded, d)
		}
		// What the upstream makes of it, and of the original, with
		// path.Clean-like normalisation (nginx merge_slashes, Spring,
		// Express): the same path, up to a trailing slash.
		trimmed := d
		if d != "/" {
			trimmed = strings.TrimSuffix(d, "/")
		}
		if c := path.Clean(decoded); decoded != "" && c != trimmed {
			t.Fatalf("CanonicalPath(%q) = %q, but path.Clean gives %q", decoded, d, c)
		}
		if c := path.Clean(d); c != trimmed {
			t.Fatalf("upstream normalises %q to %q", d, c)
		}
		for _, rule := range fuzzRules {
			for _, prefix := range []bool{false, true} {
				m := ruleMatch(rule, d, prefix)
				if decoded != "" && m != ruleMatch(rule, path.Clean(decoded), prefix) {
					t.Fatalf("rule %q (prefix %v) matches %q: %v, but not the same on path.Clean(%q)", rule, prefix, d, m, decoded)
				}
			}
		}
	})
}

// checkRefusal asserts that a refusal has its cause in the input.
func checkRefusal(t *testing.T, decoded, escaped string, err error) {
	t.Helper()
	hasDotParam := false
	for _, s := range strings.Split(decoded, "/") {
		if strings.HasPrefix(s, ".;") || strings.HasPrefix(s, "..;") {
			hasDotParam = true
		}
	}
	lowerEsc := strings.ToLower(escaped)
	causes := map[error]bool{
		ErrPathNotAbsolute:  !strings.HasPrefix(decoded, "/"),
		ErrPathNUL:          strings.Contains(decoded, "\x00"),
		ErrPathBackslash:    strings.Contains(decoded, "\\"),
		ErrPathEncodedSlash: strings.Contains(lowerEsc, "%2f"),
		ErrPathDotParameter: hasDotParam,
	}
	if !causes[err] {
		t.Fatalf("CanonicalPath(%q, %q) refused with %v, which the input does not show", decoded, escaped, err)
	}
}

// FuzzCanonicalPathPair feeds arbitrary, possibly inconsistent, pairs: no
// panic, and whatever is accepted is consistent and canonical.
func FuzzCanonicalPathPair(f *testing.F) {
	f.Add("/a/./b", "/a/%2e/b")
	f.Add("/a", "/b")
	f.Add("/a/b", "/a%2Fb")
	f.Add("/a b", "/a%20b")
	f.Add("", "")
	f.Fuzz(func(t *testing.T, decoded, escaped string) {
		d, e, _, err := CanonicalPath(decoded, escaped)
		if err != nil {
			return
		}
		if un, err := url.PathUnescape(e); err != nil || un != d {
			t.Fatalf("CanonicalPath(%q, %q) = %q, %q: inconsistent", decoded, escaped, d, e)
		}
		if d2, e2, ch, err := CanonicalPath(d, e); d2 != d || e2 != e || ch || err != nil {
			t.Fatalf("not idempotent: %q, %q -> %q, %q", d, e, d2, e2)
		}
	})
}
