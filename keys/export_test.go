package keys

import "context"

// FlushFirstUses is what Run does at a FlushInterval that is not also a
// RefreshInterval: it writes first uses only.
func (t *Toucher) FlushFirstUses(ctx context.Context) error { return t.flush(ctx, false) }

// Tick is Run's n-th flush (from 1), for tests that drive the schedule with
// their own clock.
func (t *Toucher) Tick(ctx context.Context, n int) error { return t.tick(ctx, n) }

// Wake is what Run does when Touch wakes it (half of MaxPending uses wait):
// a full flush. It reports whether Touch did.
func (t *Toucher) Wake(ctx context.Context) (bool, error) {
	select {
	case <-t.wake:
		return true, t.Flush(ctx)
	default:
		return false, nil
	}
}
