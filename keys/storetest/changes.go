package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/keygate/keygate/keys"
)

// RunChangeFeed runs the conformance suite of keys.ChangeFeed. newStore must
// return an empty store that implements it and keeps at most logLen changes
// in its log (the stores' change-log length option).
func RunChangeFeed(t *testing.T, newStore func(t *testing.T, logLen int) keys.Store) {
	t.Run("FollowAndResume", func(t *testing.T) { testFollowAndResume(t, newStore(t, 1000)) })
	t.Run("Trimmed", func(t *testing.T) { testFollowTrimmed(t, newStore(t, 3)) })
	t.Run("UnknownPosition", func(t *testing.T) { testFollowUnknown(t, newStore(t, 1000)) })
	t.Run("Confirms", func(t *testing.T) { testFollowConfirms(t, newStore(t, 1000)) })
}

// follow is a running FollowChanges whose batches arrive on ch.
type follow struct {
	ch     chan keys.ChangeBatch
	cancel context.CancelFunc
	done   chan error
}

func startFollow(t *testing.T, s keys.Store, from string) *follow {
	t.Helper()
	feed, ok := s.(keys.ChangeFeed)
	if !ok {
		t.Fatalf("%T does not implement keys.ChangeFeed", s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &follow{ch: make(chan keys.ChangeBatch, 256), cancel: cancel, done: make(chan error, 1)}
	go func() {
		f.done <- feed.FollowChanges(ctx, from, func(b keys.ChangeBatch) {
			select {
			case f.ch <- b:
			case <-ctx.Done():
			}
		})
	}()
	t.Cleanup(func() { f.stop(t) })
	return f
}

// stop ends the follow and waits for FollowChanges to return.
func (f *follow) stop(t *testing.T) {
	t.Helper()
	f.cancel()
	select {
	case <-f.done:
		f.done <- context.Canceled // for a second stop
	case <-time.After(waitTimeout):
		t.Fatalf("FollowChanges did not return within %s of its context's end", waitTimeout)
	}
}

// next returns the next batch.
func (f *follow) next(t *testing.T) keys.ChangeBatch {
	t.Helper()
	select {
	case b := <-f.ch:
		return b
	case err := <-f.done:
		t.Fatalf("FollowChanges returned early: %v", err)
	case <-time.After(waitTimeout):
		t.Fatalf("no batch within %s", waitTimeout)
	}
	return keys.ChangeBatch{}
}

// collect reads batches until it holds want revocations and the last batch
// is current; it returns them and the last position.
func (f *follow) collect(t *testing.T, want int) ([]keys.Revocation, string, bool) {
	t.Helper()
	var got []keys.Revocation
	gap := false
	deadline := time.Now().Add(waitTimeout)
	for {
		b := f.next(t)
		gap = gap || b.Gap
		got = append(got, b.Revocations...)
		if len(got) >= want && b.Current {
			return got, b.Pos, gap
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d revocations within %s, want %d: %+v", len(got), waitTimeout, want, got)
		}
	}
}

func wantRevocations(t *testing.T, what string, got []keys.Revocation, want ...keys.Revocation) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d revocations %+v, want %d %+v", what, len(got), got, len(want), want)
	}
	for i := range want {
		g := got[i]
		if g.OrgID != want[i].OrgID || g.KeyUID != want[i].KeyUID || g.PlanID != want[i].PlanID || g.PublishedAt.IsZero() {
			t.Errorf("%s: revocation %d is %+v, want %+v with a publication time", what, i, g, want[i])
		}
	}
}

func testFollowAndResume(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	if err := s.CreatePlan(ctx, keys.Plan{ID: 7, Name: "p", Period: "month"}); err != nil {
		t.Fatalf("CreatePlan: %v", err)
	}
	mustCreateOrg(t, s, newOrg("org"))
	k1, _ := NewKey(t, "org", "k1", nil)
	k2, _ := NewKey(t, "org", "k2", nil)
	mustCreateKey(t, s, k1, -1)
	mustCreateKey(t, s, k2, -1)

	f := startFollow(t, s, "")
	first := f.next(t)
	if !first.Gap || !first.Current || first.Pos == "" || len(first.Revocations) != 0 {
		t.Fatalf("first batch from an empty position: %+v, want an empty current gap with a position", first)
	}

	if _, err := s.DeleteKey(ctx, "org", "k1"); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	got, pos, gap := f.collect(t, 1)
	if gap {
		t.Errorf("gap while following")
	}
	wantRevocations(t, "DeleteKey", got, keys.Revocation{OrgID: "org", KeyUID: k1.UID})
	f.stop(t)

	// Changes made while nobody follows arrive, in order, on resuming.
	if _, err := setMax(ctx, s, "org", "k2", ptr(5), -1); err != nil {
		t.Fatalf("UpdateKey: %v", err)
	}
	o, err := s.Org(ctx, "org")
	if err != nil {
		t.Fatalf("Org: %v", err)
	}
	if err := s.UpdateOrg(ctx, &o); err != nil {
		t.Fatalf("UpdateOrg: %v", err)
	}
	if _, err := s.UpdatePlan(ctx, 7, keys.PlanPatch{}); err != nil {
		t.Fatalf("UpdatePlan: %v", err)
	}
	if _, _, err := s.RotateKey(ctx, "org", "k2", keys.Rotation{Hash: keys.HashSecret("new"), Now: t0}); err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	f = startFollow(t, s, pos)
	got, _, gap = f.collect(t, 4)
	if gap {
		t.Errorf("resuming from the last position seen: gap, want none")
	}
	wantRevocations(t, "resumed", got,
		keys.Revocation{OrgID: "org", KeyUID: k2.UID},
		keys.Revocation{OrgID: "org"},
		keys.Revocation{PlanID: 7},
		keys.Revocation{OrgID: "org", KeyUID: k2.UID})
}

func testFollowTrimmed(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	mustCreateOrg(t, s, newOrg("org"))
	f := startFollow(t, s, "")
	pos := f.next(t).Pos
	f.stop(t)
	// More changes than the log keeps: the position is trimmed away.
	for range 10 {
		o, err := s.Org(ctx, "org")
		if err != nil {
			t.Fatalf("Org: %v", err)
		}
		if err := s.UpdateOrg(ctx, &o); err != nil {
			t.Fatalf("UpdateOrg: %v", err)
		}
	}
	f = startFollow(t, s, pos)
	b := f.next(t)
	if !b.Gap || b.Pos == "" {
		t.Fatalf("resuming from a trimmed position: %+v, want a gap", b)
	}
	// After the gap the follow goes on from the log's end.
	if _, err := s.DeleteKey(ctx, "org", "none"); err == nil {
		t.Fatalf("DeleteKey of a missing key succeeded")
	}
	o, _ := s.Org(ctx, "org")
	if err := s.UpdateOrg(ctx, &o); err != nil {
		t.Fatalf("UpdateOrg: %v", err)
	}
	got, _, _ := f.collect(t, 1)
	wantRevocations(t, "after the gap", got[len(got)-1:], keys.Revocation{OrgID: "org"})
}

func testFollowUnknown(t *testing.T, s keys.Store) {
	mustCreateOrg(t, s, newOrg("org"))
	for _, from := range []string{"garbage", "99999999999999-0", "18446744073709551615", "-1"} {
		f := startFollow(t, s, from)
		if b := f.next(t); !b.Gap || !b.Current {
			t.Errorf("follow from %q: %+v, want a current gap", from, b)
		}
		f.stop(t)
	}
}

// testFollowConfirms checks that a follow with nothing to read still
// confirms, about once a second.
func testFollowConfirms(t *testing.T, s keys.Store) {
	f := startFollow(t, s, "")
	pos := f.next(t).Pos
	for range 2 {
		b := f.next(t)
		if !b.Current || b.Gap || len(b.Revocations) != 0 || b.Pos != pos || b.Age < 0 || b.Age > 3*time.Second {
			t.Errorf("idle batch %+v, want an empty current one at %s", b, pos)
		}
	}
}
