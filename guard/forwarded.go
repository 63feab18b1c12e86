package guard

import (
	"fmt"
	"net/netip"
	"strings"
)

// TrustedProxies is KEYGATE_TRUSTED_PROXIES: the addresses whose
// X-Forwarded-For keygate believes. The zero value trusts nobody.
type TrustedProxies struct {
	prefixes []netip.Prefix
}

// MaxTrustedProxies bounds the entries of KEYGATE_TRUSTED_PROXIES (each
// check is a linear scan).
const MaxTrustedProxies = 256

// Bounds on the X-Forwarded-For that ClientAddr and ForwardedFor consider,
// counted from the right (the end keygate's own proxies wrote). Entries
// beyond them are ignored as if malformed.
const (
	MaxForwardedEntries = 64
	MaxForwardedBytes   = 4096
)

// ParseTrustedProxies reads a comma-separated list of CIDR prefixes and bare
// addresses, IPv4 or IPv6 ("10.0.0.0/8, 192.168.1.1, fd00::/8"). Spaces
// around entries are ignored; an empty string is the empty list. A prefix
// with host bits set is taken as its network ("10.1.2.3/8" is 10.0.0.0/8);
// IPv4-mapped IPv6 entries are read as IPv4. Zones, empty entries and more
// than MaxTrustedProxies entries are errors.
func ParseTrustedProxies(s string) (TrustedProxies, error) {
	if strings.TrimSpace(s) == "" {
		return TrustedProxies{}, nil
	}
	var t TrustedProxies
	for i, item := range strings.Split(s, ",") {
		if i == MaxTrustedProxies {
			return TrustedProxies{}, fmt.Errorf("trusted proxies: more than %d entries", MaxTrustedProxies)
		}
		p, err := parseTrusted(strings.TrimSpace(item))
		if err != nil {
			return TrustedProxies{}, fmt.Errorf("trusted proxies: entry %d %q: %w", i+1, strings.TrimSpace(item), err)
		}
		t.prefixes = append(t.prefixes, p)
	}
	return t, nil
}

func parseTrusted(item string) (netip.Prefix, error) {
	if item == "" {
		return netip.Prefix{}, fmt.Errorf("empty entry")
	}
	if strings.Contains(item, "%") {
		return netip.Prefix{}, fmt.Errorf("zones are not allowed")
	}
	if strings.Contains(item, "/") {
		p, err := netip.ParsePrefix(item)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("not a CIDR prefix: %w", err)
		}
		if a := p.Addr(); a.Is4In6() {
			if p.Bits() < 96 {
				return netip.Prefix{}, fmt.Errorf("IPv4-mapped prefix shorter than /96")
			}
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(item)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("not an address or CIDR prefix: %w", err)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Contains reports whether a is a trusted proxy (IPv4-mapped addresses
// match IPv4 entries; zones are ignored).
func (t TrustedProxies) Contains(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	for _, p := range t.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Len returns the number of entries.
func (t TrustedProxies) Len() int { return len(t.prefixes) }

// String returns the list in canonical form, as ParseTrustedProxies reads it.
func (t TrustedProxies) String() string {
	parts := make([]string, len(t.prefixes))
	for i, p := range t.prefixes {
		if p.IsSingleIP() {
			parts[i] = p.Addr().String()
		} else {
			parts[i] = p.String()
		}
	}
	return strings.Join(parts, ", ")
}

// ClientAddr returns the address a request is attributed to: the peer
// (r.RemoteAddr, "ip:port") unless the peer is a trusted proxy; then the
// X-Forwarded-For values (every header line, in order) are walked from the
// right, over trusted hops, to the first untrusted address, the last hop
// before keygate's trusted proxies. The walk stops at a malformed entry, at
// the bounds MaxForwardedEntries/MaxForwardedBytes, or at the left end, and
// then returns the last address it read (a trusted one): clients behind a
// broken chain share that proxy's address, which a client cannot choose.
// Addresses are unmapped and without zone. A peer that is not an IP address
// (a Unix socket) gives the zero Addr. It does not allocate.
func ClientAddr(peer string, xff []string, trusted TrustedProxies) netip.Addr {
	p := parsePeer(peer)
	if !p.IsValid() {
		return p
	}
	return walkForwarded(p, xff, trusted, nil)
}

// ForwardedFor returns the X-Forwarded-For keygate sends upstream. From a
// peer that is not a trusted proxy it is the peer's address alone: what the
// client sent is replaced, so an upstream reading the leftmost entry cannot
// be lied to. From a trusted proxy it is the part of the chain ClientAddr
// walked, from the client address to the last hop, then the peer: entries
// left of the client (which the client wrote) are dropped, and the entries
// kept are in canonical form. An empty result (a peer that is not an IP
// address) means: send no X-Forwarded-For.
func ForwardedFor(peer string, xff []string, trusted TrustedProxies) string {
	p := parsePeer(peer)
	if !p.IsValid() {
		return ""
	}
	if !trusted.Contains(p) {
		return p.String()
	}
	var buf [8]netip.Addr
	hops := buf[:0]
	walkForwarded(p, xff, trusted, &hops)
	var b strings.Builder
	for i := len(hops) - 1; i >= 0; i-- {
		b.WriteString(hops[i].String())
		b.WriteString(", ")
	}
	b.WriteString(p.String())
	return b.String()
}

// walkForwarded is the walk of ClientAddr from a valid peer; when hops is
// not nil it collects the entries read, right to left.
func walkForwarded(peer netip.Addr, xff []string, trusted TrustedProxies, hops *[]netip.Addr) netip.Addr {
	if !trusted.Contains(peer) {
		return peer
	}
	client := peer
	entries, size := 0, 0
	for v := len(xff) - 1; v >= 0; v-- {
		s := xff[v]
		end := len(s)
		for {
			// Look back no further than the byte budget left.
			lo := max(0, end-(MaxForwardedBytes-size))
			start := strings.LastIndexByte(s[lo:end], ',') + 1 + lo
			if start == lo && lo > 0 {
				return client // this entry runs past the budget
			}
			size += end - start + 1
			item := trimOWS(s[start:end])
			if item != "" { // empty list elements are ignored (RFC 9110 5.6.1)
				entries++
				if entries > MaxForwardedEntries {
					return client
				}
				a, ok := parseForwardedAddr(item)
				if !ok {
					return client
				}
				client = a
				if hops != nil {
					*hops = append(*hops, a)
				}
				if !trusted.Contains(a) {
					return a
				}
			}
			if start == 0 {
				break
			}
			end = start - 1
		}
	}
	return client
}

// trimOWS drops the optional whitespace (spaces, tabs) around a list
// element.
func trimOWS(s string) string {
	for s != "" && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for s != "" && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// parsePeer reads r.RemoteAddr ("ip:port", or a bare address).
func parsePeer(peer string) netip.Addr {
	if ap, err := netip.ParseAddrPort(peer); err == nil {
		return ap.Addr().Unmap().WithZone("")
	}
	if a, err := netip.ParseAddr(peer); err == nil {
		return a.Unmap().WithZone("")
	}
	return netip.Addr{}
}

// parseForwardedAddr reads one X-Forwarded-For entry: an address, or
// "ip:port" / "[ipv6]:port" as some proxies write. Zones are refused (no
// proxy has a reason to send one, and each would be interned).
func parseForwardedAddr(item string) (netip.Addr, bool) {
	if strings.IndexByte(item, '%') >= 0 {
		return netip.Addr{}, false
	}
	if a, err := netip.ParseAddr(item); err == nil {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(item); err == nil {
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}
