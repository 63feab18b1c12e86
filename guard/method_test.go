package guard

import (
	"strings"
	"testing"
)

func TestValidMethod(t *testing.T) {
	for _, m := range []string{"GET", "PROPFIND", "M-SEARCH", "x!#$%&'*+-.^_`|~9", strings.Repeat("G", MaxMethod)} {
		if !ValidMethod(m) {
			t.Errorf("%q refused", m)
		}
	}
	for _, m := range []string{"", "GE T", "GET\r\n", "GÉT", "GET/", "(GET)", "\x00", strings.Repeat("G", MaxMethod+1)} {
		if ValidMethod(m) {
			t.Errorf("%q accepted", m)
		}
	}
}
