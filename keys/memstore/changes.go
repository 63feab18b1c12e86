package memstore

import (
	"context"
	"strconv"
	"time"

	"github.com/keygate/keygate/keys"
)

var _ keys.ChangeFeed = (*Store)(nil)

// DefaultChangeLogLen is how many changes the log keeps by default.
const DefaultChangeLogLen = 10000

// followBatch bounds the changes one batch carries; confirmEvery is how often
// a follow that sees no change confirms its follower's cache.
const (
	followBatch  = 512
	confirmEvery = time.Second
)

// WithChangeLogLen sets how many changes the change log keeps (default
// DefaultChangeLogLen); a follower further behind is told of a gap.
func WithChangeLogLen(n int) Option {
	return func(s *Store) {
		if n > 0 {
			s.changes.max = n
		}
	}
}

// changeLog is the in-process change log: the last max revocations, the
// first of them numbered first. Guarded by the store's mu.
type changeLog struct {
	max   int
	first uint64
	log   []keys.Revocation
	// grew is closed and replaced by every append.
	grew chan struct{}
}

func newChangeLog() changeLog {
	return changeLog{max: DefaultChangeLogLen, first: 1, grew: make(chan struct{})}
}

// last is the number of the latest change (first-1 when none is held).
func (c *changeLog) last() uint64 { return c.first + uint64(len(c.log)) - 1 }

// append logs r. Called with mu held.
func (c *changeLog) append(r keys.Revocation) {
	c.log = append(c.log, r)
	if over := len(c.log) - c.max; over > 0 {
		c.log = c.log[over:]
		c.first += uint64(over)
	}
	close(c.grew)
	c.grew = make(chan struct{})
}

// FollowChanges follows the in-process change log (see keys.ChangeFeed).
// Positions are change numbers in decimal; one the log does not hold (or not
// a number) starts with a gap at the log's end.
func (s *Store) FollowChanges(ctx context.Context, from string, fn func(keys.ChangeBatch)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.RLock()
	c := &s.changes
	pos, err := strconv.ParseUint(from, 10, 64)
	gap := err != nil || pos+1 < c.first || pos > c.last()
	if gap {
		pos = c.last()
	}
	s.mu.RUnlock()
	timer := time.NewTimer(confirmEvery)
	defer timer.Stop()
	for {
		s.mu.RLock()
		if pos+1 < c.first { // trimmed while the follower was busy
			pos, gap = c.last(), true
		}
		n := min(int(c.last()-pos), followBatch)
		start := int(pos + 1 - c.first)
		batch := keys.ChangeBatch{Revocations: append([]keys.Revocation(nil), c.log[start:start+n]...), Gap: gap}
		pos += uint64(n)
		batch.Pos = strconv.FormatUint(pos, 10)
		batch.Current = pos == c.last()
		grew := c.grew
		s.mu.RUnlock()
		gap = false
		fn(batch)
		if !batch.Current {
			continue
		}
		timer.Reset(confirmEvery)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-grew:
		case <-timer.C:
		}
	}
}
