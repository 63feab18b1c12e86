package lease

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/quota/rediscounter"
)

// TestSteadyManyOrgs: steady traffic over many keys of many organizations,
// none with a max of its own, is admitted from org blocks: no charge goes
// per request (none creates a key's counter, as charges per request do),
// and Redis runs well under 0.1 commands per charge (renewals, carrying the
// keys' counts, about one per organization and 1.5 s), as a real
// redis-server counts them.
func TestSteadyManyOrgs(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	ctx := t.Context()
	c := New(rediscounter.New(rdb), "", Options{Timeout: 2 * time.Second})
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	const orgs, keys, rate = 20, 1000, 2000 // charges per second
	charge := func(i int) {
		k := i % keys
		ch := quota.Charge{OrgID: "org" + strconv.Itoa(k%orgs), KeyID: "k" + strconv.Itoa(k), Cost: 1,
			OrgMax: 1 << 40, KeyMax: -1, Period: quota.PeriodMonth, At: time.Now()}
		if _, err := c.Charge(ctx, ch); err != nil {
			t.Error(err)
		}
	}
	// paced charges n charges from 8 goroutines at rate, each due at its
	// instant (bounded: at most n charges).
	paced := func(from, n int) {
		var wg sync.WaitGroup
		t0 := time.Now()
		for g := range 8 {
			wg.Go(func() {
				for i := from + g; i < from+n; i += 8 {
					time.Sleep(time.Until(t0.Add(time.Duration(i-from) * time.Second / rate)))
					charge(i)
				}
			})
		}
		wg.Wait()
	}
	paced(0, 2*rate) // warm-up: every key seen, blocks sized to the traffic
	cmds0, _, err := redisCost(ctx, rdb)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3 * rate
	paced(2*rate, n)
	cmds, _, err := redisCost(ctx, rdb)
	if err != nil {
		t.Fatal(err)
	}
	perCharge := (cmds - cmds0) / n
	t.Logf("%d charges over %d organizations: %.3f Redis commands per charge", n, orgs, perCharge)
	if perCharge > 0.1 {
		t.Errorf("%.3f Redis commands per charge, want at most 0.1", perCharge)
	}
	// A charge per request creates its key's counter; leased ones never do.
	found, _, err := rdb.Scan(ctx, 0, "kg:{*}:q:key:*", 10000).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(found) > 0 {
		t.Errorf("%d key counters in Redis (e.g. %s): charges went per request", len(found), found[0])
	}
}

// TestBlockSizeAfterPause: after a pause long enough for the block to go
// back, the first block of the traffic that resumes is sized as before the
// pause, not by the traffic averaged over the pause (which would take a
// few small blocks, a call each, to grow back).
func TestBlockSizeAfterPause(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	ctx := t.Context()
	c := New(rediscounter.New(rdb), "", Options{Timeout: 2 * time.Second, Tick: 50 * time.Millisecond, IdleReturn: 100 * time.Millisecond})
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	ch := quota.Charge{OrgID: "org1", KeyID: "k1", Cost: 1, OrgMax: 1 << 40, KeyMax: -1, Period: quota.PeriodMonth}
	id := orgWindow{"org1", ch.Period.Window(time.Now()).ID}
	state := func() (avail, want int64) {
		c.mu.Lock()
		defer c.mu.Unlock()
		ol := c.orgs[id]
		return ol.avail, ol.want
	}
	// About 1,000 charges/s for a second: blocks of about 2 s of it.
	t0 := time.Now()
	for i := range 1000 {
		time.Sleep(time.Until(t0.Add(time.Duration(i) * time.Millisecond)))
		ch.At = time.Now()
		if _, err := c.Charge(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	_, before := state()
	if before < 500 {
		t.Fatalf("block size %d after a second at about 1,000 charges/s, want about 2,000", before)
	}
	// A pause: the block goes back (polling: the return has no signal).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if avail, _ := state(); avail == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("block not given back 10 s into the pause")
		}
	}
	time.Sleep(time.Second)
	ch.At = time.Now()
	if _, err := c.Charge(ctx, ch); err != nil {
		t.Fatal(err)
	}
	if avail, want := state(); want < before/2 || avail+1 < before/2 {
		t.Errorf("first block after the pause: %d held of %d wanted, want about %d as before the pause", avail, want, before)
	}
}

// TestWindowMemo: the window a charge is booked in is its own instant's,
// whatever the window of the charge before it (periods and instants back
// and forth across a window's end).
func TestWindowMemo(t *testing.T) {
	c := &Counter{}
	hour := time.Date(2026, 12, 2, 5, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		p  quota.Period
		at time.Time
	}{
		{quota.PeriodHour, hour},
		{quota.PeriodHour, hour.Add(time.Hour - time.Nanosecond)},
		{quota.PeriodHour, hour.Add(time.Hour)},
		{quota.PeriodHour, hour.Add(-time.Nanosecond)},
		{quota.PeriodMonth, hour},
		{quota.PeriodNone, hour},
		{quota.PeriodHour, hour.Add(30 * time.Minute)},
		{quota.PeriodDay, hour.Add(-5 * time.Hour)},
		{quota.PeriodDay, hour.Add(-5*time.Hour - time.Nanosecond)},
	} {
		if got, want := c.window(tc.p, tc.at), tc.p.Window(tc.at); got != want {
			t.Errorf("window(%s, %s) = %+v, want %+v", tc.p, tc.at, got, want)
		}
	}
	if testing.AllocsPerRun(100, func() { c.window(quota.PeriodDay, hour.Add(-4*time.Hour)) }) != 0 {
		t.Error("a charge in the window of the one before it allocates")
	}
}
