package rediscounter

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// A lease holder's held counts (lease.lua's c:<holder>) are one string per
// holder, organization and window: "<total>\n" then "<key>=<n>\n" per key,
// so that a holder books the counts of every key it admitted with one
// field, and usage.lua finds a key's count with one plain search for
// "\n<key>=". Key names are escaped (heldName) so that no key id can end
// or forge an entry.

// AdoptAfter is how long after a holder's claim ended another holder's
// fold adopts its held counts (folds them into the per-key hash for it):
// much longer than any live holder goes without a call while it has held
// counts (it folds them when its organization goes idle).
const AdoptAfter = 2 * time.Minute

// flag is a script's boolean argument.
func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// MaxHeldBytes bounds a holder's held counts, encoded.
const MaxHeldBytes = 1 << 20

// MaxLeaseKeys bounds the keys one lease call books or reads: the script
// passes them to a single Redis command, and Lua unpacks at most 8,000
// values.
const MaxLeaseKeys = 2000

// heldEscaper makes a key id safe inside held counts: '=' and '\n' end
// parts of an entry, '%' escapes.
var heldEscaper = strings.NewReplacer("%", "%25", "=", "%3D", "\n", "%0A")

// heldName is a key's name in held counts.
func heldName(key string) string {
	if !strings.ContainsAny(key, "%=\n") {
		return key
	}
	return heldEscaper.Replace(key)
}

// HeldEntrySize is at least what one key's entry adds to held counts
// encoded, whatever its count: for holders to bound their held counts
// before they encode them.
func HeldEntrySize(key string) int { return len(heldName(key)) + 21 }

// encodeHeld encodes held counts; counts must be positive and the
// encoding at most MaxHeldBytes.
func encodeHeld(counts []KeyCount) (string, error) {
	var total int64
	size := 21
	for _, k := range counts {
		if k.N <= 0 {
			return "", fmt.Errorf("held count of key %s: %d, want > 0", k.KeyID, k.N)
		}
		total += k.N
		size += HeldEntrySize(k.KeyID)
	}
	if size > MaxHeldBytes {
		return "", fmt.Errorf("held counts of %d keys: more than %d bytes", len(counts), MaxHeldBytes)
	}
	b := make([]byte, 0, size)
	b = strconv.AppendInt(b, total, 10)
	b = append(b, '\n')
	for _, k := range counts {
		b = append(b, heldName(k.KeyID)...)
		b = append(b, '=')
		b = strconv.AppendInt(b, k.N, 10)
		b = append(b, '\n')
	}
	return string(b), nil
}
