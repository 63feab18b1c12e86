package guard_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/keygate/keygate/guard"
)

func ExampleCanonicalPath() {
	for _, p := range [][2]string{
		{"/x/../api/v0/pin/add", "/x/../api/v0/pin/add"},
		{"/public/../export", "/public/%2e%2e/export"},
		{"/a b/./c/", "/a%20b/./c/"},
		{"/a/b/c", "/a/b%2Fc"},
	} {
		d, e, changed, err := guard.CanonicalPath(p[0], p[1])
		fmt.Printf("%q %q %v %v\n", d, e, changed, err)
	}
	// Output:
	// "/api/v0/pin/add" "/api/v0/pin/add" true <nil>
	// "/export" "/export" true <nil>
	// "/a b/c/" "/a%20b/c/" true <nil>
	// "" "" false guard: path contains an encoded slash (%2F)
}

func ExampleClientAddr() {
	trusted, _ := guard.ParseTrustedProxies("10.0.0.0/8")
	xff := []string{"6.6.6.6, 198.51.100.9, 10.0.0.3"}
	fmt.Println(guard.ClientAddr("10.0.0.2:4711", xff, trusted))
	fmt.Println(guard.ForwardedFor("10.0.0.2:4711", xff, trusted))
	fmt.Println(guard.ForwardedFor("203.0.113.5:4711", xff, trusted))
	// Output:
	// 198.51.100.9
	// 198.51.100.9, 10.0.0.3, 10.0.0.2
	// 203.0.113.5
}

func ExampleFailLimiter() {
	limit, _ := guard.ParseFailLimit("5/10s")
	l := guard.NewFailLimiter[netip.Addr, [32]byte](limit, 0, 0)
	client := guard.AddrKey(netip.MustParseAddr("198.51.100.9"))
	known := [32]byte{1} // the hash of a secret this client used before
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

	l.Prove(client, known)
	for range 5 {
		l.Fail(client, now)
	}
	ok, retry := l.Allow(client, now)
	fmt.Println(ok, retry, l.Proven(client, known), l.Proven(client, [32]byte{2}))
	// Output:
	// false 2s true false
}

func ExampleUnknownSecrets() {
	u := guard.NewUnknownSecrets(0)
	minted := [32]byte{7}
	gen := u.Generation() // before the store lookup
	// ... the store says there is no such key ...
	u.Add(gen, minted)
	fmt.Println(u.Has(minted))
	u.Reset() // a key was created or changed
	fmt.Println(u.Has(minted))
	// Output:
	// true
	// false
}
