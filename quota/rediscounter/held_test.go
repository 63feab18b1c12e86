package rediscounter_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/quota/rediscounter"
)

// leaseCall is a call of holder h for org1 in the hour of at.
func leaseCall(h string, at time.Time, seq uint64) rediscounter.Lease {
	return rediscounter.Lease{OrgID: "org1", Period: quota.PeriodHour, At: at, Holder: h, Hold: 10 * time.Second, Seq: seq, Share: 1, OrgMax: -1}
}

// keyUsage reads a key's usage as a reader without a claim of its own.
func keyUsage(t *testing.T, c *rediscounter.Counter, key string, at time.Time) rediscounter.HolderUsage {
	t.Helper()
	u, err := c.LeaseUsage(t.Context(), "org1", key, quota.PeriodHour, at, "")
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestHeldLostReply drops the replies of a settlement that stores held
// counts and of one that folds them; go-redis sends each again, and each is
// applied once: the keys' usage and the per-key hash count every request
// once, and the claim is not taken down twice.
func TestHeldLostReply(t *testing.T) {
	srv := redistest.Start(t)
	direct := newClient(t, srv.Addr())
	p := redistest.NewReplyDropper(t, srv.Addr())
	c := rediscounter.New(newClient(t, p.Addr()))
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := c.Load(ctx); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	w := quota.PeriodHour.Window(now)
	l := leaseCall("a", now, 0)
	l.Need, l.Want = 10, 10
	if rep, err := c.Lease(ctx, l); err != nil || rep.Grant != 10 {
		t.Fatalf("reserving 10 = %+v, %v", rep, err)
	}
	reader := rediscounter.New(direct)

	held := leaseCall("a", now, 1)
	held.Held = []rediscounter.KeyCount{{KeyID: "k1", N: 3}, {KeyID: "k=2\n", N: 4}}
	p.Arm()
	rep, err := c.Lease(ctx, held)
	<-p.Dropped
	if err != nil || !rep.Dup {
		t.Fatalf("retried settlement = %+v, %v; want applied before (dup)", rep, err)
	}
	if u := keyUsage(t, reader, "k1", now); u.Key != 3 || u.Pending != 3 {
		t.Errorf("k1 after held counts: key %d, pending %d; want 3 and the 3 units not held for a key", u.Key, u.Pending)
	}
	if u := keyUsage(t, reader, "k=2\n", now); u.Key != 4 {
		t.Errorf("an escaped key after held counts: %d, want 4", u.Key)
	}
	if u := keyUsage(t, reader, "k", now); u.Key != 0 {
		t.Errorf("a key no one admitted reads %d", u.Key)
	}

	fold := leaseCall("a", now, 2)
	fold.Fold = true
	fold.Keys = []rediscounter.KeyCount{{KeyID: "k1", N: 3}, {KeyID: "k=2\n", N: 4}}
	p.Arm()
	rep, err = c.Lease(ctx, fold)
	<-p.Dropped
	if err != nil || !rep.Dup || len(rep.Keys) != 2 || rep.Keys[0] != 3 || rep.Keys[1] != 4 {
		t.Fatalf("retried fold = %+v, %v; want applied before, counts 3 and 4", rep, err)
	}
	for key, want := range map[string]int64{"k1": 3, "k=2\n": 4} {
		if u := keyUsage(t, reader, key, now); u.Key != want || u.Pending != 3 {
			t.Errorf("%q after the fold: key %d, pending %d; want %d, 3", key, u.Key, u.Pending, want)
		}
		got, err := direct.HGet(ctx, "kg:{org1}:q:keys:"+w.ID, key+":"+w.ID).Int64()
		if err != nil || got != want {
			t.Errorf("per-key hash %q = %d, %v; want %d", key, got, err, want)
		}
	}
	if v, err := direct.HGet(ctx, "kg:{org1}:q:lease:"+w.ID, "u:a").Int64(); err != nil || v != 3 {
		t.Errorf("claim after the fold = %d, %v; want the 3 units attributed to no key", v, err)
	}
	// An old settlement arriving late changes nothing.
	if rep, err := c.Lease(ctx, held); err != nil || !rep.Dup {
		t.Fatalf("late settlement = %+v, %v; want dup", rep, err)
	}
	if u := keyUsage(t, reader, "k1", now); u.Key != 3 {
		t.Errorf("k1 after a late settlement: %d, want 3", u.Key)
	}
}

// TestHeldBounds: a lease call refuses held counts past MaxHeldBytes, more
// keys than MaxLeaseKeys, counts below one, and held counts with a fold,
// before anything reaches Redis.
func TestHeldBounds(t *testing.T) {
	c := rediscounter.New(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1}))
	now := time.Now()
	big := make([]rediscounter.KeyCount, rediscounter.MaxHeldBytes/30)
	for i := range big {
		big[i] = rediscounter.KeyCount{KeyID: fmt.Sprintf("key-%08d", i), N: 1}
	}
	many := make([]rediscounter.KeyCount, rediscounter.MaxLeaseKeys+1)
	for i := range many {
		many[i] = rediscounter.KeyCount{KeyID: fmt.Sprint(i)}
	}
	for name, l := range map[string]func(*rediscounter.Lease){
		"too large":  func(l *rediscounter.Lease) { l.Held = big },
		"too many":   func(l *rediscounter.Lease) { l.Keys = many },
		"zero count": func(l *rediscounter.Lease) { l.Held = []rediscounter.KeyCount{{KeyID: "k"}} },
		"fold, held": func(l *rediscounter.Lease) { l.Fold, l.Held = true, []rediscounter.KeyCount{{KeyID: "k", N: 1}} },
	} {
		call := leaseCall("a", now, 1)
		l(&call)
		if _, err := c.Lease(t.Context(), call); err == nil || strings.Contains(err.Error(), "dial") {
			t.Errorf("%s: %v, want refused before any call", name, err)
		}
	}
}

// FuzzHeldCounts: whatever two key ids are, each reads back exactly its own
// held count through usage.lua (the parser of held counts), and a third
// one, a prefix of the first, reads none of them.
func FuzzHeldCounts(f *testing.F) {
	f.Add("k1", "k2", uint16(3))
	f.Add("a=1", "a", uint16(9))
	f.Add("x\ny=5", "x", uint16(1))
	f.Add("%3D", "=", uint16(2))
	f.Add("", "k", uint16(0))
	srv := redistest.Start(f)
	rdb := newClient(f, srv.Addr())
	c := rediscounter.New(rdb)
	f.Fuzz(func(t *testing.T, a, b string, n uint16) {
		if a == b || a == "" || b == "" || len(a) > 256 || len(b) > 256 {
			return
		}
		redistest.Flush(t, rdb)
		now := time.Now()
		l := leaseCall("h", now, 1)
		l.Held = []rediscounter.KeyCount{{KeyID: a, N: int64(n) + 1}, {KeyID: b, N: 5}}
		if _, err := c.Lease(t.Context(), l); err != nil {
			t.Fatal(err)
		}
		for key, want := range map[string]int64{a: int64(n) + 1, b: 5} {
			if u := keyUsage(t, c, key, now); u.Key != want {
				t.Errorf("key %q reads %d, want %d (held %q=%d, %q=5)", key, u.Key, want, a, int64(n)+1, b)
			}
		}
		if len(a) > 1 && a[:len(a)-1] != b {
			if u := keyUsage(t, c, a[:len(a)-1], now); u.Key != 0 {
				t.Errorf("prefix %q of %q reads %d", a[:len(a)-1], a, u.Key)
			}
		}
	})
}
