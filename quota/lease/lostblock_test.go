package lease

import (
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
