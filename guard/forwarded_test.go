package guard

import (
	"net/netip"
	"strings"
	"testing"
)

func mustTrusted(t testing.TB, s string) TrustedProxies {
	t.Helper()
	tp, err := ParseTrustedProxies(s)
	if err != nil {
		t.Fatalf("ParseTrustedProxies(%q): %v", s, err)
	}
	return tp
}

func TestParseTrustedProxies(t *testing.T) {
	tests := []struct {
		in, want, wantErr string
	}{
		{in: "", want: ""},
		{in: "   ", want: ""},
		{in: "10.0.0.0/8, 192.168.1.1", want: "10.0.0.0/8, 192.168.1.1"},
		{in: "10.1.2.3/8", want: "10.0.0.0/8"},
		{in: "fd00::/8,2001:db8::1", want: "fd00::/8, 2001:db8::1"},
		{in: "::ffff:10.0.0.0/104", want: "10.0.0.0/8"},
		{in: "::ffff:10.0.0.1", want: "10.0.0.1"},
		{in: "0.0.0.0/0", want: "0.0.0.0/0"},
		{in: "10.0.0.0/8,", wantErr: `entry 2 "": empty entry`},
		{in: "10.0.0.0/33", wantErr: `entry 1 "10.0.0.0/33": not a CIDR prefix`},
		{in: "10.0.0.256", wantErr: "not an address or CIDR prefix"},
		{in: "example.com", wantErr: "not an address or CIDR prefix"},
		{in: "fe80::1%eth0", wantErr: "zones are not allowed"},
		{in: "::ffff:0:0/80", wantErr: "IPv4-mapped prefix shorter than /96"},
		{in: strings.Repeat("10.0.0.1,", MaxTrustedProxies) + "10.0.0.1", wantErr: "more than 256 entries"},
	}
	for _, tt := range tests {
		got, err := ParseTrustedProxies(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseTrustedProxies(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("ParseTrustedProxies(%q) = %q, %v; want %q", tt.in, got.String(), err, tt.want)
		}
	}
}

func TestTrustedProxiesContains(t *testing.T) {
	tp := mustTrusted(t, "10.0.0.0/8, 2001:db8::/32, 192.0.2.7")
	for addr, want := range map[string]bool{
		"10.1.2.3": true, "::ffff:10.1.2.3": true, "11.0.0.1": false,
		"2001:db8::5": true, "2001:db9::5": false, "192.0.2.7": true, "192.0.2.8": false,
		"fe80::1%eth0": false,
	} {
		if got := tp.Contains(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Contains(%s) = %v, want %v", addr, got, want)
		}
	}
	if (TrustedProxies{}).Contains(netip.MustParseAddr("10.0.0.1")) {
		t.Error("the zero TrustedProxies trusts someone")
	}
}

func FuzzParseTrustedProxies(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8, 192.168.1.1", "", "fd00::/8", "::ffff:1.2.3.4/120", "1.2.3.4/40", ",", "fe80::1%x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tp, err := ParseTrustedProxies(s)
		if err != nil {
			return
		}
		if tp.Len() > MaxTrustedProxies {
			t.Fatalf("%d entries", tp.Len())
		}
		again, err := ParseTrustedProxies(tp.String())
		if err != nil || again.String() != tp.String() {
			t.Fatalf("ParseTrustedProxies(%q) = %q, which reads back as %q, %v", s, tp.String(), again.String(), err)
		}
	})
}

func TestClientAddrAndForwardedFor(t *testing.T) {
	tp := mustTrusted(t, "10.0.0.0/8, 2001:db8::/32")
	tests := []struct {
		name     string
		peer     string
		xff      []string
		wantAddr string // "" = the zero Addr
		wantXFF  string
	}{
		{name: "untrusted peer, no header", peer: "203.0.113.5:4711", wantAddr: "203.0.113.5", wantXFF: "203.0.113.5"},
		{name: "untrusted peer's header is replaced", peer: "203.0.113.5:4711", xff: []string{"1.1.1.1"}, wantAddr: "203.0.113.5", wantXFF: "203.0.113.5"},
		{name: "trusted peer, one client", peer: "10.0.0.2:80", xff: []string{"198.51.100.9"}, wantAddr: "198.51.100.9", wantXFF: "198.51.100.9, 10.0.0.2"},
		{name: "spoofed leftmost dropped", peer: "10.0.0.2:80", xff: []string{"6.6.6.6, 198.51.100.9, 10.0.0.3"}, wantAddr: "198.51.100.9", wantXFF: "198.51.100.9, 10.0.0.3, 10.0.0.2"},
		{name: "several header lines", peer: "10.0.0.2:80", xff: []string{"6.6.6.6", "198.51.100.9", "10.0.0.3"}, wantAddr: "198.51.100.9", wantXFF: "198.51.100.9, 10.0.0.3, 10.0.0.2"},
		{name: "trusted peer, no header", peer: "10.0.0.2:80", wantAddr: "10.0.0.2", wantXFF: "10.0.0.2"},
		{name: "all trusted", peer: "10.0.0.2:80", xff: []string{"10.9.9.9, 10.0.0.3"}, wantAddr: "10.9.9.9", wantXFF: "10.9.9.9, 10.0.0.3, 10.0.0.2"},
		{name: "malformed stops the walk", peer: "10.0.0.2:80", xff: []string{"198.51.100.9, bogus, 10.0.0.3"}, wantAddr: "10.0.0.3", wantXFF: "10.0.0.3, 10.0.0.2"},
		{name: "malformed next to peer", peer: "10.0.0.2:80", xff: []string{"unknown"}, wantAddr: "10.0.0.2", wantXFF: "10.0.0.2"},
		{name: "zone refused", peer: "10.0.0.2:80", xff: []string{"fe80::1%eth0"}, wantAddr: "10.0.0.2", wantXFF: "10.0.0.2"},
		{name: "empty elements ignored", peer: "10.0.0.2:80", xff: []string{"198.51.100.9,, ,", ""}, wantAddr: "198.51.100.9", wantXFF: "198.51.100.9, 10.0.0.2"},
		{name: "entries with ports", peer: "10.0.0.2:80", xff: []string{"198.51.100.9:1234, [2001:db8::7]:80"}, wantAddr: "198.51.100.9", wantXFF: "198.51.100.9, 2001:db8::7, 10.0.0.2"},
		{name: "ipv6 peer and mapped entries", peer: "[2001:db8::1]:80", xff: []string{"::ffff:198.51.100.9"}, wantAddr: "198.51.100.9", wantXFF: "198.51.100.9, 2001:db8::1"},
		{name: "mapped trusted peer", peer: "[::ffff:10.0.0.2]:80", xff: []string{"198.51.100.9"}, wantAddr: "198.51.100.9", wantXFF: "198.51.100.9, 10.0.0.2"},
		{name: "unix socket peer", peer: "@", xff: []string{"198.51.100.9"}, wantAddr: "", wantXFF: ""},
		{name: "bare address peer", peer: "203.0.113.5", wantAddr: "203.0.113.5", wantXFF: "203.0.113.5"},
		{name: "too many entries", peer: "10.0.0.2:80",
			xff:      []string{"198.51.100.9, " + strings.Repeat("10.0.0.3, ", MaxForwardedEntries)},
			wantAddr: "10.0.0.3", wantXFF: strings.Repeat("10.0.0.3, ", MaxForwardedEntries) + "10.0.0.2"},
		{name: "too many bytes", peer: "10.0.0.2:80",
			xff:      []string{"198.51.100.9, " + strings.Repeat(" ", MaxForwardedBytes) + "10.0.0.3"},
			wantAddr: "10.0.0.2", wantXFF: "10.0.0.2"},
		{name: "long comma-free value", peer: "10.0.0.2:80",
			xff:      []string{strings.Repeat("9", 1<<20)},
			wantAddr: "10.0.0.2", wantXFF: "10.0.0.2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ClientAddr(tt.peer, tt.xff, tp)
			want := netip.Addr{}
			if tt.wantAddr != "" {
				want = netip.MustParseAddr(tt.wantAddr)
			}
			if got != want {
				t.Errorf("ClientAddr = %v, want %v", got, want)
			}
			if ff := ForwardedFor(tt.peer, tt.xff, tp); ff != tt.wantXFF {
				t.Errorf("ForwardedFor = %q, want %q", ff, tt.wantXFF)
			}
		})
	}
}

func TestClientAddrNoAllocs(t *testing.T) {
	tp := mustTrusted(t, "10.0.0.0/8")
	xff := []string{"6.6.6.6, 198.51.100.9", "10.0.0.3"}
	if n := testing.AllocsPerRun(100, func() { ClientAddr("10.0.0.2:80", xff, tp) }); n != 0 {
		t.Errorf("ClientAddr allocates %v times", n)
	}
}

// FuzzForwarded: no panic; the client is the peer or an entry; and an
// upstream that trusts keygate and walks the X-Forwarded-For keygate sends
// finds the same client keygate found.
func FuzzForwarded(f *testing.F) {
	f.Add("10.0.0.2:80", "6.6.6.6, 198.51.100.9", "10.0.0.3", "10.0.0.0/8")
	f.Add("203.0.113.5:1", "1.1.1.1", "", "10.0.0.0/8")
	f.Add("[2001:db8::1]:80", "::ffff:1.2.3.4, bogus", "[2001:db8::9]:1", "2001:db8::/32")
	f.Add("10.0.0.2:80", ",,", " 10.0.0.1 ", "0.0.0.0/0")
	f.Fuzz(func(t *testing.T, peer, h1, h2, trusted string) {
		tp, err := ParseTrustedProxies(trusted)
		if err != nil {
			return
		}
		xff := []string{h1, h2}
		client := ClientAddr(peer, xff, tp)
		ff := ForwardedFor(peer, xff, tp)
		if !client.IsValid() {
			if ff != "" {
				t.Fatalf("no client address but X-Forwarded-For %q", ff)
			}
			return
		}
		if client.Is4In6() || client.Zone() != "" {
			t.Fatalf("client %v not normalised", client)
		}
		if strings.Count(ff, ",") >= MaxForwardedEntries-1 {
			return // the upstream's walk would hit its own bound
		}
		keygate := netip.MustParseAddr("127.0.0.1")
		if tp.Contains(keygate) {
			keygate = netip.MustParseAddr("::1") // any trusted address will do
		}
		up := TrustedProxies{prefixes: append(append([]netip.Prefix(nil), tp.prefixes...), netip.PrefixFrom(keygate, keygate.BitLen()))}
		if again := ClientAddr(netip.AddrPortFrom(keygate, 1).String(), []string{ff}, up); again != client {
			t.Fatalf("keygate found %v and sent %q, from which an upstream finds %v", client, ff, again)
		}
	})
}

func BenchmarkClientAddr(b *testing.B) {
	tp := mustTrusted(b, "10.0.0.0/8, 172.16.0.0/12")
	xff := []string{"6.6.6.6, 198.51.100.9, 10.0.0.3"}
	b.ReportAllocs()
	for b.Loop() {
		ClientAddr("10.0.0.2:80", xff, tp)
	}
}
