package memstore_test

import (
	"testing"
	"time"

	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
	"github.com/keygate/keygate/keys/storetest"
)

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T, now func() time.Time) keys.Store { return memstore.New(memstore.WithClock(now)) })
}

// TestSlowWatcher checks that writers never wait for a watcher that does not
// keep up: they complete, and the slow watcher's Watch ends with an error so
// its caller knows it missed revocations.
func TestSlowWatcher(t *testing.T) {
	s := memstore.New()
	ctx := t.Context()
	o := keys.Org{ID: "org", Name: "org", PlanID: 1}
	if err := s.CreateOrg(ctx, o); err != nil {
		t.Fatalf("CreateOrg: %v", err)
	}
	release := make(chan struct{})
	done := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		var once bool
		done <- s.Watch(ctx, func(keys.Revocation) {
			if !once {
				once = true
				close(started)
			}
			<-release
		})
	}()

	// Wait until the watcher is registered and blocked in fn.
	deadline := time.After(5 * time.Second)
	for waiting := true; waiting; {
		if err := s.UpdateOrg(ctx, &o); err != nil {
			t.Fatalf("UpdateOrg: %v", err)
		}
		select {
		case <-started:
			waiting = false
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatal("watcher never received a revocation")
		}
	}

	writes := make(chan error, 1)
	go func() {
		for range 5000 {
			if err := s.UpdateOrg(ctx, &o); err != nil {
				writes <- err
				return
			}
		}
		writes <- nil
	}()
	select {
	case err := <-writes:
		if err != nil {
			t.Fatalf("UpdateOrg: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("writers blocked on a slow watcher")
	}
	close(release)
	select {
	case err := <-done:
		if err == nil || ctx.Err() != nil {
			t.Errorf("slow watcher's Watch returned %v, want an error about dropped revocations", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("slow watcher's Watch did not return")
	}
}

func TestChangeFeed(t *testing.T) {
	storetest.RunChangeFeed(t, func(t *testing.T, n int) keys.Store { return memstore.New(memstore.WithChangeLogLen(n)) })
}
