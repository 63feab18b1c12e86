package redisstore_test

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/redisstore"
	"github.com/keygate/keygate/keys/storetest"
)

// roundTrips counts what a client sends: single commands and pipelines.
type roundTrips struct {
	commands, pipelines atomic.Int64
}

func (h *roundTrips) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (h *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.commands.Add(1)
		return next(ctx, cmd)
	}
}

func (h *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.pipelines.Add(1)
		return next(ctx, cmds)
	}
}

// TestToucherOneRoundTrip: a Toucher flushing the uses of 600 keys of three
// organizations (more than one script's chunk for one of them) writes them
// all in a single pipeline.
func TestToucherOneRoundTrip(t *testing.T) {
	ctx := ctxFor(t, 30*time.Second)
	rdb := redistest.Client(t)
	s := redisstore.New(rdb)
	var refs []keys.KeyRef
	for i, n := range []int{400, 150, 50} {
		org := fmt.Sprintf("org%d", i)
		if err := s.CreateOrg(ctx, keys.Org{ID: org, Name: org, PlanID: 1}); err != nil {
			t.Fatal(err)
		}
		for j := range n {
			k, _ := storetest.NewKey(t, org, fmt.Sprintf("k%d", j), nil)
			if err := s.CreateKey(ctx, k, -1); err != nil {
				t.Fatal(err)
			}
			refs = append(refs, k.Ref())
		}
	}
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tc := keys.NewToucher(s, keys.ToucherOptions{Now: func() time.Time { return now }, MaxPending: len(refs)})
	for _, ref := range refs {
		tc.Touch(ref)
	}
	var rt roundTrips
	rdb.AddHook(&rt)
	if err := tc.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if p, c := rt.pipelines.Load(), rt.commands.Load(); p != 1 || c != 0 {
		t.Errorf("flush of %d keys took %d pipelines and %d single commands, want 1 pipeline", len(refs), p, c)
	}
	for _, org := range []string{"org0", "org1", "org2"} {
		ks, err := s.Keys(ctx, org)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range ks {
			if k.LastUsedAt == nil || !k.LastUsedAt.Equal(now) {
				t.Fatalf("key %s/%s last used %v after the flush, want %v", org, k.Name, k.LastUsedAt, now)
			}
		}
	}
}
