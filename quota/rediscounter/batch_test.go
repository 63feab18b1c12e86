package rediscounter

import (
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/quota"
)

// readsProcessed is INFO stats total_reads_processed: the read events
// Redis served, one or more per pipeline.
func readsProcessed(t *testing.T, c *Counter) int64 {
	t.Helper()
	info, err := c.rdb.Info(t.Context(), "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "total_reads_processed:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no total_reads_processed in INFO stats")
	return 0
}

// TestBackgroundCallsGather: meter bookings of many organizations started
// together reach Redis in a few pipelines, not one round trip each, and
// each gets its own reply.
func TestBackgroundCallsGather(t *testing.T) {
	rdb := newTestClient(t, redistest.Start(t).Addr())
	c := New(rdb)
	ctx := t.Context()
	now := time.Now()
	egress := quota.Meter{Name: "egress", Period: quota.PeriodHour}
	if _, err := c.Add(ctx, "org0", now, []quota.MeterDelta{{Meter: egress, Delta: 1}}); err != nil {
		t.Fatal(err) // loads the script, opens a connection
	}
	// The fewest reads of three rounds, as the machine may be busy.
	const orgs = 100
	fewest := int64(orgs)
	for round := range 3 {
		r0 := readsProcessed(t, c)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range orgs {
			wg.Go(func() {
				<-start
				got, err := c.Add(ctx, "org"+strconv.Itoa(i), now, []quota.MeterDelta{{Meter: egress, Delta: 1}})
				want := int64(round + 1)
				if i == 0 {
					want++
				}
				if err != nil || len(got) != 1 || got[0] != want {
					t.Errorf("org%d: Add = %v, %v; want [%d]", i, got, err, want)
				}
			})
		}
		close(start)
		wg.Wait()
		// Besides the INFO call itself (one read).
		fewest = min(fewest, readsProcessed(t, c)-r0-1)
	}
	t.Logf("%d Adds started together: %d reads of Redis at best", orgs, fewest)
	if fewest > 3 {
		t.Errorf("%d Adds started together took %d reads of Redis, want at most 3", orgs, fewest)
	}
}
