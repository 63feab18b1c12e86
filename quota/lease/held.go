package lease

import (
	"time"

	"github.com/keygate/keygate/quota/rediscounter"
)

// Per-key counts. A key's requests admitted from its organization's block
// go, with the next call for that organization, to this holder's held
// counts in Redis: one field per holder, organization and window holding
// the counts of every key admitted since the last fold, replaced whole by
// each settlement (rediscounter.Lease.Held). That costs Redis one field
// however many keys there are, so the cost grows with the settlements, not
// with the keys. Usage readers add every holder's held counts to a key's
// usage. Rarely, held counts are folded into the shared per-key hash and
// the field is emptied: after FoldEvery, when they would pass MaxHeld or
// maxHeldKeys, when the organization goes idle (with its block's return),
// when one of the keys is charged under a max of its own (so that the max
// sees its counts), and at Close. Both are numbered settlements, applied
// once.

// maxHeldKeys bounds the keys in a holder's held counts of one
// organization, and maxLearn the keys whose count one call reads: together
// at most rediscounter.MaxLeaseKeys.
const (
	maxHeldKeys = rediscounter.MaxLeaseKeys / 2
	maxLearn    = rediscounter.MaxLeaseKeys - maxHeldKeys
)

// unbooked is what t counts that the per-key hash does not show (as far as
// this holder knows).
func (t *tally) unbooked() int64 { return t.pending + t.held + t.flying }

// foldDue says ol's held counts are to be folded by its next settlement:
// they are older than FoldEvery, the organization is idle, a key of them
// got a max of its own, or the Counter closes. Called with mu held.
func (c *Counter) foldDue(ol *orgLease, now time.Time) bool {
	if ol.foldSoon && ol.hasPending() {
		return true
	}
	return len(ol.held) > 0 && (c.closed || ol.foldSoon ||
		now.Sub(ol.lastUse) >= c.opt.IdleReturn || now.Sub(ol.heldSince) >= c.opt.FoldEvery)
}

// settleKeys moves the pending counts of ol's dirty keys to its held counts
// and returns the settlement of them: the held counts to store, or the
// fold of all of them when due or full, and up to maxLearn keys whose count
// is to be read. A key that does not fit in the held counts keeps its
// pending count for the next settlement, and this one folds. Called with mu
// held.
func (c *Counter) settleKeys(ol *orgLease) *settlement {
	s := &settlement{first: !ol.heldListed}
	now := c.opt.Now()
	moved, full, left := false, false, false
	kept := ol.dirty[:0]
	for _, k := range ol.dirty {
		t := ol.keys[k]
		in := t.held > 0 // on ol.held already
		if t.pending > 0 && !in {
			if size := rediscounter.HeldEntrySize(k); len(ol.held) < maxHeldKeys && ol.heldSize+size <= c.opt.MaxHeld {
				if len(ol.held) == 0 {
					ol.heldSince = now
				}
				ol.held = append(ol.held, k)
				ol.heldSize += size
				in = true
			} else {
				full = true
			}
		}
		if t.pending > 0 && in {
			t.held += t.pending
			t.pending = 0
			moved = true
		}
		learn := !t.known && len(s.keys) < maxLearn
		if learn {
			s.keys = append(s.keys, rediscounter.KeyCount{KeyID: k})
		}
		if t.pending > 0 || (!t.known && !learn) {
			kept = append(kept, k) // stays listed
			left = left || t.pending > 0
			continue
		}
		t.listed = false
	}
	ol.dirty = kept
	if len(ol.held) == 0 && !left {
		ol.foldSoon = false // nothing for a max to see
	}
	if !left {
		ol.oldest = time.Time{}
	}
	if len(ol.held) > 0 && (full || c.foldDue(ol, now)) {
		learned := s.keys
		s.fold = true
		s.keys = make([]rediscounter.KeyCount, 0, len(ol.held)+len(learned))
		for _, k := range ol.held {
			t := ol.keys[k]
			s.keys = append(s.keys, rediscounter.KeyCount{KeyID: k, N: t.held})
			t.flying += t.held
			t.held = 0
		}
		for _, k := range learned {
			if ol.keys[k.KeyID].flying == 0 { // not read twice
				s.keys = append(s.keys, k)
			}
		}
		ol.held, ol.heldSize, ol.heldSince, ol.foldSoon = ol.held[:0], 0, time.Time{}, false
		return s
	}
	if moved {
		s.held = make([]rediscounter.KeyCount, 0, len(ol.held))
		for _, k := range ol.held {
			s.held = append(s.held, rediscounter.KeyCount{KeyID: k, N: ol.keys[k].held})
		}
	}
	return s
}

// settled records what an applied settlement s did to the holder's held
// counts (before its keys' counts are read). Called with mu held.
func (c *Counter) settled(ol *orgLease, s *settlement) {
	if s.ack {
		ol.ack = false
	}
	switch {
	case s.fold:
		ol.confirmed, ol.heldListed = nil, false
	case s.held != nil:
		ol.confirmed, ol.heldListed = s.held, true
	}
}

// adopted rebuilds ol's held counts after the settlement s was refused
// because another holder adopted them (it took this one for dead): those
// Redis held for this holder (confirmed) are in the per-key hash now, so
// they leave the held counts, their keys' counts are read again, and the
// next settlement acknowledges. s's units go back with the next one.
// Called with mu held.
func (c *Counter) adopted(ol *orgLease, s *settlement) {
	if s.fold { // undo the fold's move
		for _, k := range s.keys {
			if t := ol.keys[k.KeyID]; t != nil && k.N > 0 {
				t.flying -= k.N
				t.held += k.N
			}
		}
	}
	for _, k := range ol.confirmed {
		if t := ol.keys[k.KeyID]; t != nil {
			t.held -= k.N
			t.known = false
			if !t.listed {
				t.listed = true
				ol.dirty = append(ol.dirty, k.KeyID)
			}
		}
	}
	ol.toReturn += s.ret
	ol.held, ol.heldSize, ol.heldSince = ol.held[:0], 0, time.Time{}
	for k, t := range ol.keys {
		if t.held > 0 {
			if len(ol.held) == 0 {
				ol.heldSince = c.opt.Now()
			}
			ol.held = append(ol.held, k)
			ol.heldSize += rediscounter.HeldEntrySize(k)
		}
	}
	ol.confirmed, ol.heldListed, ol.ack = nil, false, true
}
