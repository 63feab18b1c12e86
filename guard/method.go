package guard

import "strings"

// MaxMethod bounds a request method read from a description of the
// client's request (an authorization check): a method is a short token.
const MaxMethod = 32

// ValidMethod reports whether m is an RFC 9110 method token of at most
// MaxMethod bytes. Both authorization fronts check the method they are told
// with it, so a check refuses the same methods whichever front asks. It
// does not allocate.
func ValidMethod(m string) bool {
	if m == "" || len(m) > MaxMethod {
		return false
	}
	for i := 0; i < len(m); i++ {
		if !isTokenByte(m[i]) {
			return false
		}
	}
	return true
}

func isTokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
