package gate

import (
	"context"
	"sync"
	"time"
)

// lazyDeadline is a context with a deadline whose timer starts only when
// something waits for it (Done). A decision answered from the caches and
// the local lease, the common case, never waits, and context.WithTimeout's
// timer and registration with the request's context cost more than the
// rest of such a decision. Deadline, Err and Value behave as
// context.WithDeadline's; release ends the timer if one started.
type lazyDeadline struct {
	parent   context.Context
	deadline time.Time

	mu     sync.Mutex
	inner  context.Context // set by the first Done
	cancel context.CancelFunc
}

var _ context.Context = (*lazyDeadline)(nil)

// withLazyDeadline returns parent with a deadline at d and its release.
func withLazyDeadline(parent context.Context, d time.Time) *lazyDeadline {
	if pd, ok := parent.Deadline(); ok && pd.Before(d) {
		d = pd
	}
	return &lazyDeadline{parent: parent, deadline: d}
}

func (c *lazyDeadline) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *lazyDeadline) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inner == nil {
		c.inner, c.cancel = context.WithDeadline(c.parent, c.deadline)
	}
	return c.inner.Done()
}

func (c *lazyDeadline) Err() error {
	c.mu.Lock()
	inner := c.inner
	c.mu.Unlock()
	if inner != nil {
		return inner.Err()
	}
	if err := c.parent.Err(); err != nil {
		return err
	}
	if !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

func (c *lazyDeadline) Value(key any) any { return c.parent.Value(key) }

// release stops the timer, if one started.
func (c *lazyDeadline) release() {
	c.mu.Lock()
	cancel := c.cancel
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}
