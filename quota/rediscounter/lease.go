package rediscounter

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/quota"
)

// leaseScript settles a lease holder's debts and reserves blocks
// (lease.lua); usageScript reads usage with what lease holders still hold
// (usage.lua).
var (
	//go:embed lease.lua
	leaseSrc    string
	leaseScript = redis.NewScript(leaseSrc)
	//go:embed usage.lua
	usageSrc    string
	usageScript = redis.NewScript(usageSrc)
)

// Lease is one call of a lease holder for one organization and window
// (quota/lease): a settlement (per-key counts and unspent units), a
// reservation, or both, applied atomically by lease.lua.
type Lease struct {
	OrgID  string
	Period quota.Period
	// At is the call's instant: it picks the window and dates the claim.
	At time.Time
	// Holder names the sidecar process; Hold is how long its claim on the
	// units it holds stays live after this call.
	Holder string
	Hold   time.Duration
	// Seq numbers the settlement (Keys, Held, Fold and Return), from 1 up
	// per holder and window; 0 means none. A settlement is applied once:
	// resending it after a lost reply is safe.
	Seq uint64
	// Keys are booked into the keys' lease counts (the per-key hash) and
	// answered with the counts after; N 0 only reads a key's count.
	Keys []KeyCount
	// Held, when not nil, replaces the holder's held counts: the requests
	// of keys it admitted that no key's lease count shows yet, all of
	// them (at most MaxHeldBytes encoded). Storing them costs Redis one
	// field whatever the number of keys; usage readers add them to the
	// keys' usage. Fold instead empties them: Keys are then those counts,
	// booked into the keys' lease counts at once.
	Held []KeyCount
	Fold bool
	// HeldFirst says Held are the first since the holder's last fold (or
	// since it acknowledged an adoption): it is listed as a holder with
	// held counts, for the folds of others to adopt them if it dies.
	HeldFirst bool
	// Ack acknowledges that this holder's held counts were adopted
	// (LeaseReply.Adopted) and that Held and Keys no longer count them.
	Ack    bool
	Return int64
	// Need > 0 asks for a block of at least Need and at most Want units of
	// the organization's quota (OrgMax, -1 unlimited), at most 1/Share of
	// its free units (more than Need only when there are enough), or
	// Waiting, what requests waiting for the block need, if more.
	Need, Want, OrgMax, Share, Waiting int64
	// Avail is what the holder holds unspent when it sends the call (after
	// Return, before the grant): other holders refused meanwhile wait for
	// it rather than refuse. MarkFor is how long a refused reservation
	// asks every holder to give back what it holds (LeaseReply.MarkedUntil).
	Avail   int64
	MarkFor time.Duration
}

// KeyCount is a key's requests admitted from an organization's block.
type KeyCount struct {
	KeyID string
	N     int64
}

// LeaseReply is lease.lua's answer.
type LeaseReply struct {
	// Refused: fewer than Need units were free; nothing was reserved.
	Refused bool
	// Org is the org counter after the call, -1 when the call did not read
	// it (a settlement of key counts only).
	Org int64
	// Grant is the block reserved, already counted in Org.
	Grant int64
	// Dup says the settlement had been applied before.
	Dup bool
	// Adopted: the holder's held counts were folded by another holder,
	// which took it for dead; nothing was applied nor reserved. The holder
	// drops what its held counts held and sends its settlement again, with
	// Ack.
	Adopted bool
	// Keys are the keys' lease counts after the settlement, in order.
	Keys   []int64
	Window quota.Window
	// Others (Refused only) is what the other live holders may hold
	// unspent; MarkedUntil, when after the call's At, says a reservation
	// was refused lately and holders should give back what they hold.
	Others      int64
	MarkedUntil time.Time
}

// Lease runs one lease call. go-redis may retry it after a lost reply: the
// settlement is applied once (Seq), a reservation may be booked twice, which
// counts units as used and admits nothing more.
func (c *Counter) Lease(ctx context.Context, l Lease) (LeaseReply, error) {
	if err := quota.CheckOrgID(l.OrgID); err != nil {
		return LeaseReply{}, err
	}
	if l.Need < 0 || l.Want < l.Need || l.Return < 0 || l.Share < 1 || (l.Fold && l.Held != nil) {
		return LeaseReply{}, fmt.Errorf("lease of org %s: need %d, want %d, return %d, share %d, fold with held counts %t",
			l.OrgID, l.Need, l.Want, l.Return, l.Share, l.Fold && l.Held != nil)
	}
	if len(l.Keys) > MaxLeaseKeys {
		return LeaseReply{}, fmt.Errorf("lease of org %s: %d keys, at most %d in one call", l.OrgID, len(l.Keys), MaxLeaseKeys)
	}
	held := "-"
	switch {
	case l.Fold:
		held = ""
	case l.Held != nil:
		var err error
		if held, err = encodeHeld(l.Held); err != nil {
			return LeaseReply{}, fmt.Errorf("lease of org %s: %w", l.OrgID, err)
		}
	}
	w := l.Period.Window(l.At)
	var expireAt int64
	if at := w.ExpireAt(); !at.IsZero() {
		expireAt = at.Unix()
	}
	keys := []string{orgCounterKey(l.OrgID, w.ID), leaseHoldersKey(l.OrgID, w.ID), leaseKeysKey(l.OrgID, w.ID), leaseHeldKey(l.OrgID, w.ID)}
	args := make([]any, 0, 17+2*len(l.Keys))
	args = append(args, l.Holder, l.At.UnixMilli(), l.Hold.Milliseconds(), expireAt,
		strconv.FormatUint(l.Seq, 10), l.Return, l.Need, l.Want, limit(l.OrgMax), l.Share, max(l.Waiting, 0),
		max(l.Avail, 0), max(l.MarkFor.Milliseconds(), 1),
		held, flag(l.HeldFirst), flag(l.Ack), AdoptAfter.Milliseconds())
	for _, k := range l.Keys {
		if k.N < 0 {
			return LeaseReply{}, fmt.Errorf("lease of org %s: key %s: negative count %d", l.OrgID, k.KeyID, k.N)
		}
		args = append(args, leaseKeyField(k.KeyID, w.ID), k.N)
	}
	send := c.runLater // in the background: gathered with other calls
	if l.Waiting > 0 {
		send = c.run // requests wait for it
	}
	v, err := int64s(send(ctx, leaseScript, keys, args...))
	if err != nil {
		return LeaseReply{}, storeError("lease of org "+l.OrgID, err)
	}
	if len(v) == 4 && v[0] == -2 {
		return LeaseReply{Adopted: true, Org: -1, Window: w}, nil
	}
	n := len(l.Keys)
	if len(v) != 6+n {
		return LeaseReply{}, fmt.Errorf("lease of org %s: lease script: %d values for %d keys", l.OrgID, len(v), n)
	}
	rep := LeaseReply{Refused: v[0] == -1, Org: v[1], Grant: v[2], Dup: v[3] == 1, Keys: v[4 : 4+n], Window: w, Others: v[4+n]}
	if v[5+n] > 0 {
		rep.MarkedUntil = time.UnixMilli(v[5+n])
	}
	return rep, nil
}

// HolderUsage is LeaseUsage's answer.
type HolderUsage struct {
	// Usage.Key is the key's counter plus its lease count.
	quota.Usage
	// Pending is what the other holders' live claims hold: units booked
	// into the org counter and attributed to no key yet, spent or not.
	Pending int64
	// Mine is the reading holder's own claim, Seq its last settlement
	// applied.
	Mine int64
	Seq  uint64
}

// LeaseUsage reads the usage of an organization and, when keyID is not
// empty, of one key, with what lease holders hold (HolderUsage), as holder
// sees it ("" = no holder).
func (c *Counter) LeaseUsage(ctx context.Context, orgID, keyID string, period quota.Period, at time.Time, holder string) (HolderUsage, error) {
	if err := quota.CheckOrgID(orgID); err != nil {
		return HolderUsage{}, err
	}
	w := period.Window(at)
	readKey := "0"
	if keyID != "" {
		readKey = "1"
	}
	keys := []string{orgCounterKey(orgID, w.ID), keyCounterKey(orgID, keyID, w.ID), leaseHoldersKey(orgID, w.ID), leaseKeysKey(orgID, w.ID)}
	v, err := usageScript.Run(ctx, c.rdb, keys, holder, at.UnixMilli(), readKey, heldName(keyID)).Int64Slice()
	if err != nil {
		return HolderUsage{}, storeError("reading usage of org "+orgID, err)
	}
	if len(v) != 5 || v[4] < 0 {
		return HolderUsage{}, errors.New("reading usage of org " + orgID + ": usage script: unexpected reply")
	}
	return HolderUsage{Usage: quota.Usage{Org: v[0], Key: v[1], Window: w}, Pending: v[2], Mine: v[3], Seq: uint64(v[4])}, nil
}
