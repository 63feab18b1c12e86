package guard

import (
	"errors"
	"strings"
)

// Errors from CanonicalPath. Each one is a refusal (400) whatever
// KEYGATE_PATH_NORMALIZE says: such a path has no canonical form that every
// upstream would read the same way, so keygate neither matches nor forwards it.
var (
	// ErrPathNotAbsolute: the path does not start with "/" (for example "*").
	ErrPathNotAbsolute = errors.New("guard: path does not start with /")
	// ErrPathNUL: a NUL byte, literal or %00, which C-based upstreams
	// truncate at.
	ErrPathNUL = errors.New("guard: path contains a NUL byte")
	// ErrPathBackslash: a backslash, literal or %5C, which Windows and some
	// frameworks read as a segment separator.
	ErrPathBackslash = errors.New("guard: path contains a backslash")
	// ErrPathEncodedSlash: %2F. Upstreams disagree on it (nginx decodes it
	// and then merges slashes, Apache answers 404, Tomcat 400, Go's ServeMux
	// keeps it inside the segment), so no rewrite is safe.
	ErrPathEncodedSlash = errors.New("guard: path contains an encoded slash (%2F)")
	// ErrPathDotParameter: a segment "." or ".." followed by a ";" path
	// parameter ("..;x"), which Tomcat and Spring resolve as a dot segment.
	ErrPathDotParameter = errors.New("guard: path has a dot segment with a ';' parameter")
	// ErrPathEscape: escaped is not a valid percent-encoding of decoded.
	ErrPathEscape = errors.New("guard: escaped path does not encode the decoded path")
)

// CanonicalPath returns the canonical form of a request path: the one path
// route rules are matched against and the upstream receives.
//
// decoded and escaped are the two spellings of the same path, as
// url.URL.Path and url.URL.EscapedPath() give them: rules match the decoded
// form, and the escaped form is what goes on the wire, so both are rewritten
// together (set them back as URL.Path and URL.RawPath). The walk is segment
// by segment on both at once, so a dot segment is recognised however it was
// encoded (".", "%2e", "%2E", ".%2e", "%2e%2e"). Canonical means:
//   - it starts with "/";
//   - no empty segments: "//" collapses to "/" (before dot segments are
//     resolved, as nginx's merge_slashes and path.Clean do);
//   - no "." or ".." segments, resolved as RFC 3986 section 5.2.4 does and
//     never above the root ("/../a" is "/a");
//   - a trailing slash is kept, and one is added where the last segment was
//     a dot segment ("/a/b/.." is "/a/"), as RFC 3986 gives.
//
// changed reports whether the result differs from the input, which
// KEYGATE_PATH_NORMALIZE=reject refuses. An input of two empty strings is
// "/" (changed). A path that is already canonical is returned as it is,
// without allocating. The errors (ErrPath*) are refusals.
//
// In a handler:
//
//	d, e, changed, err := guard.CanonicalPath(r.URL.Path, r.URL.EscapedPath())
//	if err != nil || changed && reject { /* 400 Non-canonical request path */ }
//	r.URL.Path, r.URL.RawPath = d, e
func CanonicalPath(decoded, escaped string) (canonDecoded, canonEscaped string, changed bool, err error) {
	if decoded == "" && escaped == "" {
		return "/", "/", true, nil
	}
	canonical, err := checkPath(decoded, escaped)
	if err != nil {
		return "", "", false, err
	}
	if canonical {
		return decoded, escaped, false, nil
	}
	d, e := rebuildPath(decoded, escaped)
	return d, e, true, nil
}

// checkPath walks escaped and decoded together, one segment at a time,
// checking that escaped decodes to decoded, refusing what cannot be made
// canonical, and reporting whether the path is canonical already. It does
// not allocate.
func checkPath(decoded, escaped string) (canonical bool, err error) {
	if escaped == "" || escaped[0] != '/' || decoded == "" || decoded[0] != '/' {
		return false, ErrPathNotAbsolute
	}
	if decoded == escaped && strings.IndexByte(escaped, '%') < 0 {
		return checkPlain(escaped)
	}
	canonical = true
	i, d := 1, 1 // cursors in escaped and decoded, past a '/'
	for {
		start := d
		for i < len(escaped) && escaped[i] != '/' {
			c := escaped[i]
			if c == '%' {
				if i+2 >= len(escaped) {
					return false, ErrPathEscape
				}
				hi, ok1 := unhex(escaped[i+1])
				lo, ok2 := unhex(escaped[i+2])
				if !ok1 || !ok2 {
					return false, ErrPathEscape
				}
				c = hi<<4 | lo
				if c == '/' {
					return false, ErrPathEncodedSlash
				}
				i += 3
			} else {
				i++
			}
			switch c {
			case 0:
				return false, ErrPathNUL
			case '\\':
				return false, ErrPathBackslash
			}
			if d >= len(decoded) || decoded[d] != c {
				return false, ErrPathEscape
			}
			d++
		}
		seg := decoded[start:d]
		last := i == len(escaped)
		switch {
		case seg == "":
			if !last {
				canonical = false
			}
		case seg == "." || seg == "..":
			canonical = false
		case strings.HasPrefix(seg, ".;") || strings.HasPrefix(seg, "..;"):
			return false, ErrPathDotParameter
		}
		if last {
			break
		}
		if d >= len(decoded) || decoded[d] != '/' {
			return false, ErrPathEscape
		}
		i++
		d++
	}
	if d != len(decoded) {
		return false, ErrPathEscape
	}
	return canonical, nil
}

// checkPlain is checkPath for a path without escapes (both spellings
// equal), the common case: one pass over the bytes.
func checkPlain(p string) (canonical bool, err error) {
	canonical = true
	start := 1 // of the current segment
	for i := 1; i <= len(p); i++ {
		if i < len(p) {
			switch p[i] {
			case 0:
				return false, ErrPathNUL
			case '\\':
				return false, ErrPathBackslash
			case '/':
			default:
				continue
			}
		}
		// p[start:i] is a segment; only an empty one or one starting
		// with a dot needs a closer look.
		if i == start {
			if i != len(p) {
				canonical = false
			}
		} else if p[start] == '.' {
			seg := p[start:i]
			switch {
			case seg == "." || seg == "..":
				canonical = false
			case strings.HasPrefix(seg, ".;") || strings.HasPrefix(seg, "..;"):
				return false, ErrPathDotParameter
			}
		}
		start = i + 1
	}
	return canonical, nil
}

// span is one kept segment: decoded[d0:d1] and escaped[e0:e1].
type span struct{ d0, d1, e0, e1 int }

// rebuildPath builds the canonical form of a path checkPath accepted. There
// is no %2F, so the segments of both spellings correspond one to one.
func rebuildPath(decoded, escaped string) (string, string) {
	var buf [16]span
	kept := buf[:0]
	i, d := 1, 1
	var seg string
	for {
		ei := nextSlash(escaped, i)
		di := nextSlash(decoded, d)
		seg = decoded[d:di]
		switch seg {
		case "", ".":
		case "..":
			if len(kept) > 0 {
				kept = kept[:len(kept)-1]
			}
		default:
			kept = append(kept, span{d, di, i, ei})
		}
		if ei == len(escaped) {
			break
		}
		i, d = ei+1, di+1
	}
	if len(kept) == 0 {
		return "/", "/"
	}
	trailing := seg == "" || seg == "." || seg == ".."
	outD := join(decoded, kept, trailing, false)
	if decoded == escaped {
		return outD, outD
	}
	return outD, join(escaped, kept, trailing, true)
}

func nextSlash(s string, from int) int {
	if j := strings.IndexByte(s[from:], '/'); j >= 0 {
		return from + j
	}
	return len(s)
}

// join writes "/" + the kept segments of s separated by "/", and a final
// "/" when trailing.
func join(s string, kept []span, trailing, escaped bool) string {
	n := len(kept)
	if trailing {
		n++
	}
	for _, k := range kept {
		if escaped {
			n += k.e1 - k.e0
		} else {
			n += k.d1 - k.d0
		}
	}
	var b strings.Builder
	b.Grow(n)
	for _, k := range kept {
		b.WriteByte('/')
		if escaped {
			b.WriteString(s[k.e0:k.e1])
		} else {
			b.WriteString(s[k.d0:k.d1])
		}
	}
	if trailing {
		b.WriteByte('/')
	}
	return b.String()
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
