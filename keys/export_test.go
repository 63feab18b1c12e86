package keys

import "context"

// FlushFirstUses is what Run does at a FlushInterval that is not also a
// RefreshInterval: it writes first uses only.
func (t *Toucher) FlushFirstUses(ctx context.Context) error { return t.flush(ctx, false) }
