package lease

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/quota"
)

// TestLostBlockShowsAsUsed: a block whose reservation reply was lost counts
// as used, and the usage read through the sidecar that lost it says so:
// it does not leave the block out as units it could still spend (the org
// would read as below its max while every sidecar refuses).
func TestLostBlockShowsAsUsed(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	d := redistest.NewReplyDropper(t, srv.Addr())
	client := redis.NewClient(&redis.Options{Addr: d.Addr(), MaxRetries: -1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = client.Close() })
	c := newLease(t, client, Options{Timeout: time.Second})
	now := time.Now()
	// Another org first, so that the scripts are loaded: the dropped reply
	// is then the reservation's, not a NOSCRIPT.
	if _, err := c.Charge(t.Context(), orgCharge("org0", "k0", 100, now)); err != nil {
		t.Fatal(err)
	}
	d.Arm()
	if _, err := c.Charge(t.Context(), orgCharge("org1", "k1", 100, now)); !errors.Is(err, quota.ErrUnavailable) {
		t.Fatalf("charge whose reservation reply was lost: %v, want ErrUnavailable", err)
	}
	select {
	case <-d.Dropped:
	case <-time.After(5 * time.Second):
		t.Fatal("no reply dropped")
	}
	counted, err := rdb.Get(t.Context(), "kg:{org1}:q:org:"+quota.PeriodHour.Window(now).ID).Int64()
	if err != nil || counted == 0 {
		t.Fatalf("org counter %d, %v: the lost reservation was not booked", counted, err)
	}
	u, err := c.Usage(t.Context(), "org1", "", quota.PeriodHour, now)
	if err != nil {
		t.Fatal(err)
	}
	if u.Org != counted {
		t.Errorf("usage read by the sidecar that lost the block: %d, want the %d Redis counts (the lost block is used)", u.Org, counted)
	}
}

// renewalHeld charges org1 once through a lease whose calls pass a reply
// dropper, then starts a charge of 10, more than the block has left, whose
// renewal's reply the dropper holds back until Release. The charge's error
// arrives on the channel returned.
func renewalHeld(t *testing.T) (*Counter, *redistest.ReplyDropper, time.Time, <-chan error) {
	t.Helper()
	srv := redistest.Start(t)
	d := redistest.NewReplyDropper(t, srv.Addr())
	client := redis.NewClient(&redis.Options{Addr: d.Addr(), MaxRetries: -1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = client.Close() })
	// No background work: the only calls are the charges' and the reads'.
	c := newLease(t, client, Options{Tick: time.Hour, IdleReturn: time.Hour})
	now := time.Now()
	if _, err := c.Charge(t.Context(), orgCharge("org1", "k1", 1000, now)); err != nil {
		t.Fatal(err)
	}
	if u, err := c.Usage(t.Context(), "org1", "", quota.PeriodHour, now); err != nil || u.Org != 1 {
		t.Fatalf("usage after one charge: %d, %v; want 1", u.Org, err)
	}
	d.Hold()
	big := orgCharge("org1", "k1", 1000, now)
	big.Cost = 10
	charged := make(chan error, 1)
	go func() {
		_, err := c.Charge(t.Context(), big)
		charged <- err
	}()
	select {
	case <-d.Held:
	case <-time.After(5 * time.Second):
		t.Fatal("the renewal's reply was not held")
	}
	return c, d, now, charged
}

// TestUsageWaitsForGrantInFlight: a reservation Redis applied whose reply
// has not reached the sidecar yet is not read as used: the usage read
// through that sidecar waits for the reply (CI read an org at 23 when 15
// had been admitted: a block of 8 in flight).
func TestUsageWaitsForGrantInFlight(t *testing.T) {
	c, d, now, charged := renewalHeld(t)
	type read struct {
		u   quota.Usage
		err error
	}
	reads := make(chan read, 1)
	go func() {
		u, err := c.Usage(t.Context(), "org1", "", quota.PeriodHour, now)
		reads <- read{u, err}
	}()
	// A read that does not wait answers while the reply is held (300 ms
	// tells it apart from one that waits, which answers after the release;
	// it bounds no outcome): either must be exact for its moment.
	var r read
	early := false
	select {
	case r = <-reads:
		early = true
	case <-time.After(300 * time.Millisecond):
	}
	d.Release()
	if err := <-charged; err != nil {
		t.Fatalf("charge of 10: %v", err)
	}
	if !early {
		r = <-reads
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	// The read began with 1 admitted, and the charge of 10 may have been
	// admitted before it ended: 1 or 11, never the 9 that 1 plus the block
	// in flight makes.
	if r.u.Org != 1 && (early || r.u.Org != 11) {
		t.Errorf("usage read while a grant was in flight (answered before its reply: %v): %d, want 1 or, after the reply, 11", early, r.u.Org)
	}
	if u, err := c.Usage(t.Context(), "org1", "", quota.PeriodHour, now); err != nil || u.Org != 11 {
		t.Errorf("usage after both charges: %d, %v; want 11", u.Org, err)
	}
}

// TestUsageUnavailableWhileCallHangs: a usage read that waits for a call in
// progress that does not answer ends with its own deadline as unavailable
// (the account routes answer 503), not as an internal error.
func TestUsageUnavailableWhileCallHangs(t *testing.T) {
	c, d, now, charged := renewalHeld(t)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, err := c.Usage(ctx, "org1", "", quota.PeriodHour, now); !errors.Is(err, quota.ErrUnavailable) {
		t.Errorf("usage read while a call does not answer: %v, want ErrUnavailable", err)
	}
	d.Release()
	if err := <-charged; err != nil {
		t.Errorf("charge of 10 after the reply: %v", err)
	}
}
