package rediscounter

import (
	"reflect"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/quota"
)

// TestRenewalCommands: a renewal of a block (no units given back) reads the
// org counter from its INCRBY, not with a GET; a reservation refused at a
// counter of zero leaves no counter behind; one cut near the end books
// exactly its grant.
func TestRenewalCommands(t *testing.T) {
	rdb := newTestClient(t, redistest.Start(t).Addr())
	c := New(rdb)
	ctx := t.Context()
	now := time.Now()
	w := quota.PeriodHour.Window(now)
	org := orgCounterKey("org1", w.ID)
	lease := func(l Lease) (LeaseReply, map[string]string) {
		t.Helper()
		if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		l.OrgID, l.Period, l.At, l.Holder, l.Hold, l.Share, l.MarkFor = "org1", quota.PeriodHour, now, "h1", 10*time.Second, 16, time.Second
		rep, err := c.Lease(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		calls := commandCalls(t, ctx, rdb)
		delete(calls, "cmdstat_hello")
		return rep, calls
	}
	counter := func() int64 {
		t.Helper()
		n, err := rdb.Get(ctx, org).Int64()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	// Refused at zero: nothing is left in the org counter's place.
	rep, _ := lease(Lease{Need: 1, Want: 8, OrgMax: 0})
	if !rep.Refused || rep.Org != 0 {
		t.Fatalf("reservation at max 0 = %+v, want refused at 0", rep)
	}
	if n, err := rdb.Exists(ctx, org).Result(); err != nil || n != 0 {
		t.Errorf("refused reservation left the org counter (%d, %v)", n, err)
	}

	// The first block creates the counter with its expiry.
	rep, _ = lease(Lease{Need: 1, Want: 100, OrgMax: 1000})
	if rep.Refused || rep.Grant != 62 || rep.Org != 62 || counter() != 62 { // 1000/16
		t.Fatalf("first block = %+v (counter %d), want 62 granted", rep, counter())
	}
	exp, err := rdb.ExpireTime(ctx, org).Result()
	if err != nil || int64(exp/time.Second) != w.ExpireAt().Unix() {
		t.Errorf("EXPIRETIME of the org counter = %s, %v; want %d", exp, err, w.ExpireAt().Unix())
	}

	// A renewal far from the end: one INCRBY, no GET.
	rep, calls := lease(Lease{Need: 1, Want: 50, OrgMax: 1000, Avail: 10})
	if rep.Grant != 50 || rep.Org != 112 || counter() != 112 {
		t.Fatalf("renewal = %+v (counter %d), want 50 granted at 112", rep, counter())
	}
	if want := map[string]string{"cmdstat_hmget": "calls=1", "cmdstat_incrby": "calls=1", "cmdstat_hset": "calls=1"}; !reflect.DeepEqual(calls, want) {
		t.Errorf("renewal ran %v, want %v", calls, want)
	}

	// Near the end the grant is cut, and only the grant is booked.
	rep, _ = lease(Lease{Need: 1, Want: 900, OrgMax: 1000})
	if rep.Refused || rep.Grant != 55 || counter() != 167 { // (1000-112)/16
		t.Fatalf("cut renewal = %+v (counter %d), want 55 granted at 167", rep, counter())
	}
	// Refused: the counter is as it was.
	rep, _ = lease(Lease{Need: 900, Want: 900, OrgMax: 1000})
	if !rep.Refused || rep.Org != 167 || counter() != 167 {
		t.Fatalf("refused renewal = %+v (counter %d), want refused at 167", rep, counter())
	}
	// Giving back and renewing at once still reads the counter first.
	rep, _ = lease(Lease{Seq: 1, Return: 67, Need: 1, Want: 10, OrgMax: 1000})
	if rep.Grant != 10 || counter() != 110 {
		t.Fatalf("return and renewal = %+v (counter %d), want 10 granted at 110", rep, counter())
	}
}
