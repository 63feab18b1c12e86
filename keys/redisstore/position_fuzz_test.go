package redisstore

import "testing"

// FuzzParsePosition: a change-log position is text a follower hands back;
// any text parses or is refused (then the follow starts with a gap), never
// panics, and what parses prints back to itself.
func FuzzParsePosition(f *testing.F) {
	for _, s := range []string{"0-0:0", "1796164404032-0:3", "", ":", "-:", "1-2", "1-2:-1", "18446744073709551615-18446744073709551615:9223372036854775807",
		"18446744073709551616-0:0", "1-2:3:4", " 1-2:3", "1-2:03", "+1-2:3", "1--2:3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, ok := parsePosition(s)
		if !ok {
			return
		}
		q, ok := parsePosition(p.String())
		if !ok || q != p {
			t.Fatalf("%q parsed as %+v, whose text %q parses as %+v, %v", s, p, p.String(), q, ok)
		}
		if p.added < 0 {
			t.Fatalf("%q: negative count %d", s, p.added)
		}
	})
}
