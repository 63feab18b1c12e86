package meter

import (
	"strconv"
	"strings"
	"testing"
)

// FuzzParseItem feeds arbitrary X-Keygate-Usage items to the parser: an
// accepted item names a valid meter other than requests, its delta is the
// number after "=" (it round-trips through strconv), and the canonical
// spelling of what was accepted parses to the same item.
func FuzzParseItem(f *testing.F) {
	f.Add("pinned_bytes=+123")
	f.Add("requests=1")
	f.Fuzz(func(t *testing.T, item string) {
		name, d, ok := ParseItem(item)
		if !ok {
			if name != "" || d != 0 {
				t.Fatalf("refused %q but returned %q, %d", item, name, d)
			}
			return
		}
		if !ValidName(name) || name == Requests {
			t.Fatalf("accepted %q with meter name %q", item, name)
		}
		_, num, _ := strings.Cut(item, "=")
		if got, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64); err != nil || got != d {
			t.Fatalf("accepted %q with delta %d; strconv reads %d, %v", item, d, got, err)
		}
		canon := name + "=" + strconv.FormatInt(d, 10)
		if n2, d2, ok2 := ParseItem(canon); !ok2 || n2 != name || d2 != d {
			t.Fatalf("%q → %q %d, but its canonical form %q → %q %d %v", item, name, d, canon, n2, d2, ok2)
		}
	})
}
