package rediscounter_test

import (
	"context"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/quota/rediscounter"
)

// TestLostReply drops the reply of a charge that Redis ran. go-redis retries
// the command (MaxRetries); with a Token the retry returns the first reply
// and the request counts once. Without one it would count twice, which the
// second case shows so the first case is known to exercise a retry.
func TestLostReply(t *testing.T) {
	for _, tc := range []struct {
		name  string
		token string
		want  int64
	}{
		{"token counts once", "req-1", 1},
		{"no token counts twice", "", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t)
			direct := newClient(t, srv.Addr())
			p := redistest.NewReplyDropper(t, srv.Addr())
			c := rediscounter.New(newClient(t, p.Addr()))
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			if err := c.Load(ctx); err != nil { // so the first call is EVALSHA, not NOSCRIPT
				t.Fatal(err)
			}

			p.Arm()
			ch := charge(time.Now())
			ch.Token = tc.token
			res, err := c.Charge(ctx, ch)
			select {
			case <-p.Dropped:
			default:
				t.Fatal("the proxy dropped no reply")
			}
			if err != nil {
				t.Fatalf("retried charge: %v", err)
			}
			if res.OrgUsed != tc.want || res.KeyUsed != tc.want {
				t.Errorf("retried charge returned used %d/%d, want %d", res.OrgUsed, res.KeyUsed, tc.want)
			}
			w := ch.Period.Window(ch.At)
			vals, err := direct.MGet(ctx, "kg:{org1}:q:org:"+w.ID, "kg:{org1}:q:key:k1:"+w.ID).Result()
			if err != nil {
				t.Fatal(err)
			}
			want := []any{"1", "1"}
			if tc.want == 2 {
				want = []any{"2", "2"}
			}
			if len(vals) != 2 || vals[0] != want[0] || vals[1] != want[1] {
				t.Errorf("counters in Redis = %v, want %v", vals, want)
			}
		})
	}
}

// TestLostRateLeaseReply drops the reply of a rate-lease call that gave
// back a block and reserved a new one. go-redis retries it: the give-back
// is not applied again (the TAT is no longer the old block's end), the
// retry reserves a block after the lost one, and the lost block stays
// counted as used.
func TestLostRateLeaseReply(t *testing.T) {
	srv := redistest.Start(t)
	direct := newClient(t, srv.Addr())
	p := redistest.NewReplyDropper(t, srv.Addr())
	c := rediscounter.New(newClient(t, p.Addr()))
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := c.Load(ctx); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2100, time.March, 3, 12, 0, 0, 0, time.UTC)
	t0, s := at.UnixMicro(), int64(time.Second/time.Microsecond)
	lim := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 10, Per: 10 * time.Second} // 1s a slot
	lease := func(want, end, from int64) rediscounter.RateGrant {
		t.Helper()
		rep, err := c.RateLease(ctx, rediscounter.RateLease{OrgID: "org1", At: at, Holder: "a", Cost: 1, Share: 1,
			Limits: []rediscounter.RateAsk{{Limit: lim, Want: want, End: end, From: from}}})
		if err != nil {
			t.Fatal(err)
		}
		return rep.Limits[0]
	}
	if g := lease(4, 0, 0); g.Start != t0 || g.Grant != 4 {
		t.Fatalf("first block %+v, want 4 from %d", g, t0)
	}
	p.Arm()
	g := lease(2, t0+4*s, t0+s) // spent one: [t0+1s, t0+4s) goes back
	select {
	case <-p.Dropped:
	default:
		t.Fatal("the proxy dropped no reply")
	}
	// The first run gave back and reserved [t0+1s, t0+3s); its reply was
	// lost. The retry found the TAT at t0+3s: nothing to give back, a block
	// after the lost one.
	if g.Start != t0+3*s || g.Grant != 2 || g.TAT != t0+5*s {
		t.Errorf("retried call %+v, want 2 slots from %d", g, t0+3*s)
	}
	if v, err := direct.Get(ctx, "kg:{org1}:rl:org:"+lim.Name).Int64(); err != nil || v != t0+5*s {
		t.Errorf("TAT in Redis %d, %v; want %d (the lost block counted as used)", v, err, t0+5*s)
	}
}
